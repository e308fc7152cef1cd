"""Memory per rate-limit key: garrison's three algorithms against limits and pyrate-limiter.

Each library sees ``n`` distinct keys once (one admitted call each, the keys built beforehand
and not counted); tracemalloc measures what its state holds afterwards, divided by ``n``
(after its background threads finished their current pass). Two key counts show whether the
cost per key stays flat; two configurations (one window of 100/s, and the seed's three
windows 10/s, 100/m, 1000/h) show what extra windows cost. The peers: ``limits``'
``MemoryStorage`` (moving window and sliding window counter; its three-window row is skipped,
three separate limits under tracing take ~30 s) and ``pyrate-limiter``'s ``InMemoryBucket``
and ``StateBucket``, one bucket per key. The measuring code is shared with bench_rate.py.

The issue's target (issue 4): at most 150 bytes per key for ``gcra`` and ``sliding_window``
at 100k keys. Prints a table and writes benchmarks/results/memory.json; ``--quick`` measures
10k keys only (a smoke run, ~10 s).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

from bench_rate import memory_rows

FULL_KEY_COUNTS = (10_000, 100_000)
QUICK_KEY_COUNTS = (10_000,)
TARGET_BYTES = 150  # issue 4: gcra and sliding_window at 100k keys


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    started = time.perf_counter()
    counts = QUICK_KEY_COUNTS if quick else FULL_KEY_COUNTS
    keys = [f"client-{i}" for i in range(max(counts))]
    by_count = {str(n): memory_rows(keys[:n]) for n in counts}
    seconds = round(time.perf_counter() - started, 1)

    for n, configs in by_count.items():
        print(f"bytes per key after {n} distinct keys, one call each (tracemalloc)")
        labels = list(configs)
        print(f"{'':<34}{''.join(f'{label:>20}' for label in labels)}")
        for name in configs[labels[0]]:
            cells = [configs[label].get(name, {}).get("bytes_per_key", "-") for label in labels]
            print(f"{name:<34}{''.join(f'{cell!s:>20}' for cell in cells)}")
    print(f"target: <= {TARGET_BYTES} B/key for garrison gcra and sliding_window ({seconds} s)")
    out = Path(__file__).parent / "results" / "memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "limits": version("limits"),
                "pyrate-limiter": version("pyrate-limiter"),
                "quick": quick,
                "key_counts": list(counts),
                "target_bytes_per_key": TARGET_BYTES,
                "seconds": seconds,
                "bytes_per_key": by_count,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
