"""Helpers shared by several test packages (importable as ``_helpers`` from any test).

``tests/`` is on ``sys.path`` while the tests run (pytest puts the root conftest's directory
there), so ``from _helpers.chaos import Crasher`` works from every test directory.
"""
