"""Errors that reach the user with one clear message."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, mismatched shapes, labels beyond the class count, NaN voxels.

    The message names the offending file or argument and says what to do. The command line prints it on one
    line and exits with status 2.
    """
