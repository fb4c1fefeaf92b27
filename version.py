"""The pack's version, in one place below every other module (pyproject.toml carries the same number)."""

__version__ = "0.1.0"
