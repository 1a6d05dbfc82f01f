"""Checks on input volumes; each failure raises ``InputError`` naming the file and what to do."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError

__all__ = ["check_finite", "check_label_values", "check_same_geometry", "require_files"]


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """Raise if the image holds NaN or infinite voxels."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{path} holds {bad} NaN or infinite voxels; repair or exclude this image.")


def check_label_values(label: np.ndarray, allowed: Iterable[int], path: str | Path) -> None:
    """Raise if the label map holds a value outside ``allowed`` (or a non-integer value)."""
    if np.issubdtype(label.dtype, np.floating) and (
        not np.isfinite(label).all() or not np.array_equal(label, np.round(label))
    ):
        raise InputError(f"{path} holds non-integer label values; a label map must hold class ids.")
    present = {int(v) for v in np.unique(label)}
    extra = sorted(present - {int(a) for a in allowed})
    if extra:
        raise InputError(
            f"{path} holds label values {extra} beyond the declared classes {sorted(int(a) for a in allowed)}; "
            "fix the label map or declare those classes."
        )


def check_same_geometry(
    image_meta: dict[str, Any], label_meta: dict[str, Any], image_path: str | Path, label_path: str | Path
) -> None:
    """Raise if image and label differ in shape or, for volumes, in voxel-to-world geometry."""
    if tuple(image_meta["shape"]) != tuple(label_meta["shape"]):
        raise InputError(
            f"{label_path} has shape {tuple(label_meta['shape'])} but its image {image_path} has "
            f"{tuple(image_meta['shape'])}; image and label must share one voxel grid."
        )
    if len(image_meta["shape"]) == 3:
        image_affine = np.asarray(image_meta["affine"])
        label_affine = np.asarray(label_meta["affine"])
        voxel = float(min(image_meta["spacing"]))
        # A tolerance of a small fraction of a voxel absorbs float32 rounding in headers, not a real shift.
        if not np.allclose(image_affine, label_affine, rtol=0.0, atol=max(1e-3, 0.01 * voxel)):
            raise InputError(
                f"{label_path} and its image {image_path} have different geometry (affine "
                f"{np.round(label_affine, 3).tolist()} vs {np.round(image_affine, 3).tolist()}); "
                "resample the label onto the image grid."
            )


def require_files(files: list[Path], folder: Path, what: str) -> list[Path]:
    """Raise if ``files`` is empty, naming the folder and what was looked for."""
    if not files:
        raise InputError(f"{folder} holds no {what}; check the path and the folder layout (see docs/data.md).")
    return files
