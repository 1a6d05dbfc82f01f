"""Checks on input volumes; each failure raises ``InputError`` naming the file and what to do."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError

__all__ = [
    "MIN_SLICE_SIDE",
    "check_channel_grid",
    "check_ct_window",
    "check_finite",
    "check_label_values",
    "check_percentiles",
    "check_same_geometry",
    "check_slice_size",
    "require_files",
]

# Slices thinner than this cannot be resampled, cropped into patches or batch-normalized in training.
MIN_SLICE_SIDE = 2


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


def check_channel_grid(
    first_meta: dict[str, Any], meta: dict[str, Any], first_path: str | Path, path: str | Path
) -> None:
    """Raise if two channel files of one case differ in shape, voxel spacing or position (one voxel grid each).

    Args:
        first_meta: The meta of the case's first channel file (``read_image``).
        meta: The meta of another of its channel files.
        first_path: The first channel file, named in the message.
        path: The other channel file, named in the message.
    """
    shape, first_shape = tuple(meta["shape"]), tuple(first_meta["shape"])
    if shape != first_shape:
        differ = f"shape ({shape} vs {first_shape})"
    elif len(shape) == 3 and not np.allclose(meta["spacing"], first_meta["spacing"], rtol=1e-3, atol=1e-4):
        spacings = [tuple(round(float(s), 4) for s in m["spacing"]) for m in (meta, first_meta)]
        differ = f"voxel spacing ({spacings[0]} vs {spacings[1]} mm)"
    elif len(shape) == 3 and not np.allclose(
        meta["affine"], first_meta["affine"], rtol=0.0, atol=max(1e-3, 0.01 * float(min(first_meta["spacing"])))
    ):
        differ = "position or orientation (affine)"
    else:
        return
    raise InputError(
        f"{path} and {first_path} are channels of one case but differ in {differ}; the channels of a case must "
        "share one voxel grid (resample them onto one grid)."
    )


def require_files(files: list[Path], folder: Path, what: str) -> list[Path]:
    """Raise if ``files`` is empty, naming the folder and what was looked for."""
    if not files:
        raise InputError(f"{folder} holds no {what}; check the path and the folder layout (see docs/data.md).")
    return files


def check_slice_size(shape: Sequence[int], path: str | Path) -> None:
    """Raise if the slices of an image are smaller than 2 x 2 pixels.

    Args:
        shape: A canonical ``(Z, H, W)`` volume's shape or a picture's ``(H, W)``; the last two sides are checked.
        path: The image file, named in the message.
    """
    height, width = (int(s) for s in tuple(shape)[-2:])
    if min(height, width) < MIN_SLICE_SIDE:
        raise InputError(
            f"{path}: its slices are {height} x {width} pixels (image shape {tuple(int(s) for s in shape)}); "
            f"slices must be at least {MIN_SLICE_SIDE} x {MIN_SLICE_SIDE} pixels. Remove this case or give the "
            "whole image."
        )


def check_percentiles(percentiles: Sequence[float], option: str) -> tuple[float, float]:
    """Return ``(low, high)`` if ``0 <= low < high <= 100``; else raise naming ``option``.

    Args:
        percentiles: The pair given by the user.
        option: The command-line option or argument that gave it, such as ``"--percentiles"``.
    """
    low, high = _finite_pair(percentiles, option)
    if not 0.0 <= low < high <= 100.0:
        raise InputError(
            f"{option} {low:g} {high:g}: the percentiles must satisfy 0 <= LOW < HIGH <= 100 "
            "(such as 0.5 99.5); give the lower one first."
        )
    return low, high


def check_ct_window(window: Sequence[float], option: str) -> tuple[float, float]:
    """Return ``(low, high)`` if both are finite and ``low < high``; else raise naming ``option``.

    Args:
        window: The HU window given by the user.
        option: The command-line option or argument that gave it, such as ``"--ct-window"``.
    """
    low, high = _finite_pair(window, option)
    if not low < high:
        raise InputError(
            f"{option} {low:g} {high:g}: a CT window needs LOW < HIGH in HU (such as -125 275); give the lower "
            "bound first."
        )
    return low, high


def _finite_pair(values: Sequence[float], option: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{option} must be two numbers LOW HIGH, got {values!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"{option} {low:g} {high:g}: both values must be finite numbers.")
    return low, high
