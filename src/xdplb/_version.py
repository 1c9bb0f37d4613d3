"""The version, in one importable place (pyproject.toml repeats it: a unit test checks)."""
__version__ = "0.1.0"
