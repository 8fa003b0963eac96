"""Helpers shared by tests and benchmarks (importable from both, unlike conftest.py)."""
