"""Moved to :mod:`perspective_unet.bench`; this module only re-exports it until its last callers move."""

from __future__ import annotations

from perspective_unet.bench import *  # noqa: F403
