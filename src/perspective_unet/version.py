"""The package's version: one home, read by the package, the files it writes and the build (pyproject.toml)."""

__version__ = "0.1.0"
