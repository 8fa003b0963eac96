"""Helpers shared by tests and benchmarks (importable from both, unlike conftest.py).

Import from here, not from ``tests.conftest``: pytest loads a ``conftest.py`` itself, and
importing it as a module as well (as ``bench/`` did) gives two copies of its fixtures.
"""
