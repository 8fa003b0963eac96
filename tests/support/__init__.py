"""Helpers shared by the tests and the benchmarks: images, databases, and more.

Import from here, not from ``tests.conftest``: pytest loads a ``conftest.py`` itself, and
importing it as a module as well (as ``bench/`` did) gives two copies of its fixtures.
"""
