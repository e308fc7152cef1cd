"""@protect keeps signatures for type checkers: mypy --strict checks protect_types.py.

``protect_types.py`` (not a ``test_`` module, so pytest never collects it) marks deliberate
misuses with ``# type: ignore[code]``; with ``--warn-unused-ignores`` mypy fails if any of them
stopped being an error, e.g. if the wrapper lost its ParamSpec.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPING_FILE = Path(__file__).with_name("protect_types.py")
REPO = Path(__file__).resolve().parents[2]


def test_mypy_accepts_protect_types_and_sees_every_deliberate_misuse(tmp_path):
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--warn-unused-ignores",
        "--follow-imports=silent",  # garrison's own errors are `make lint`'s business
        "--cache-dir",
        str(tmp_path / "mypy-cache"),
        str(TYPING_FILE),
    ]
    result = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_the_typing_file_is_not_collected_as_a_test(request):
    assert TYPING_FILE.is_file()
    assert not TYPING_FILE.name.startswith("test_")
    assert all(item.path != TYPING_FILE for item in request.session.items)
