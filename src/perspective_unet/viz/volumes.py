"""Volumes for figures: read an image or label file in the canonical (Z, H, W) order, and choose the slices to show.

Prepared ``*.npy.h5`` volumes are read with the data layer's :func:`perspective_unet.data.layouts.files.load_h5`, the
one reader of that format; NIfTI, DICOM and pictures with :func:`perspective_unet.data.io.read_image`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.layouts.files import load_h5
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, normalize_intensity, percentile_minmax

__all__ = ["choose_slices", "is_prepared", "read_canonical", "read_figure_image"]


def is_prepared(path: Path) -> bool:
    """Whether a path names a prepared ``*.npy.h5`` volume (already canonical, intensities in [0, 1])."""
    return path.name.lower().endswith(".h5")


def read_canonical(
    path: str | os.PathLike[str], *, as_label: bool = False, orientation: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A volume in canonical (Z, H, W) order for a figure.

    Args:
        path: A prepared volume (``*.npy.h5`` with datasets ``image`` and ``label``, already canonical), a NIfTI or
            other image file, a DICOM series folder, or a PNG/JPG picture (one slice).
        as_label: Read class ids (the h5 ``label`` dataset; integers otherwise).
        orientation: Canonical orientation code for image files (default ``"SPL"``).

    Returns:
        The raw canonical array (intensities are not normalized) and the image's meta (``format`` is ``"h5"`` for
        prepared volumes).

    Raises:
        InputError: A missing or unreadable file, a prepared volume without a label, or no valid label map.

    Example:
        >>> volume, meta = read_canonical("prepared/test_vol_h5/case0001.npy.h5")  # doctest: +SKIP
    """
    path = Path(path)
    if is_prepared(path):
        _require_file(path)
        if as_label:
            _, label, attrs = load_h5(path, label_only=True)
            if label is None:
                raise InputError(f"{path} has no 'label' dataset; prepared volumes hold 'image' and 'label'.")
            volume = label
        else:
            volume, _, attrs = load_h5(path)
        meta = {"format": "h5", "path": str(path), **attrs}
    else:
        from perspective_unet.data.io import read_image
        from perspective_unet.data.orientation import CANONICAL_ORIENTATION, to_canonical

        array, meta = read_image(path, as_label=as_label)
        volume = to_canonical(array, meta, orientation or CANONICAL_ORIENTATION)
    return _checked(volume, path, as_label), meta


def _require_file(path: Path) -> None:
    # load_h5's message speaks of damaged files; a mistyped path deserves its own.
    if not path.is_file():
        raise InputError(f"{path} does not exist; check the path.")


def _checked(volume: np.ndarray, path: Path, as_label: bool) -> np.ndarray:
    """A (Z, H, W) volume (one slice gets a Z axis); labels as non-negative int64 class ids."""
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise InputError(f"{path} holds an array of shape {volume.shape}; expected a (Z, H, W) volume.")
    if as_label:
        if volume.dtype.kind == "f" and not np.isfinite(volume).all():
            raise InputError(f"{path} holds NaN or infinite labels; give a label map of class ids.")
        volume = np.rint(volume).astype(np.int64)
        if volume.size and volume.min() < 0:
            raise InputError(f"{path} holds negative labels; give a label map of class ids (0 = background).")
    return volume


def read_figure_image(
    path: Path,
    orientation: str,
    *,
    prepare: Callable[[np.ndarray, dict[str, Any]], np.ndarray] | None = None,
    intensity: IntensitySpec | None = None,
    with_label: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    """The canonical image of a figure, with the label a prepared volume holds and its in-plane pixel spacing.

    Args:
        path: A prepared ``*.npy.h5`` volume (read once, image and label together) or an image file.
        orientation: Canonical orientation code for image files.
        prepare: Turns the raw voxels and meta of ``read_image`` into the canonical stored volume as a model's
            training data were (a predictor's ``prepare``); None normalizes for display.
        intensity: Without ``prepare``: the stored range chosen by the user (a CT window, MR percentiles); None gives
            pictures their type's range and anything else a robust percentile range, a readable contrast.
        with_label: Return (and check) the prepared volume's label; figures without a label column skip it.

    Returns:
        The (Z, H, W) float32 image in [0, 1], the prepared volume's (Z, H, W) class ids (None for image files or
        without ``with_label``), and the (row, column) spacing in mm when known.
    """
    from perspective_unet.data.io import read_image
    from perspective_unet.data.orientation import canonical_spacing, to_canonical

    if is_prepared(path):
        _require_file(path)
        image, label, attrs = load_h5(path)  # image and label in one read
        spacing = attrs.get("spacing")
        in_plane = None if spacing is None else tuple(float(s) for s in np.ravel(spacing)[1:3])
        volume = _checked(image, path, as_label=False).astype(np.float32)
        label = _checked(label, path, as_label=True) if with_label and label is not None else None
        return volume, label, in_plane
    array, meta = read_image(path)
    in_plane = canonical_spacing(meta, orientation)[1:]
    if prepare is not None:
        return prepare(array, meta), None, in_plane
    if intensity is None and meta.get("format") == "picture":
        intensity = IntensitySpec("picture")
    unit = normalize_intensity(array, intensity, source=path) if intensity else percentile_minmax(array)
    return to_canonical(unit, meta, orientation), None, in_plane


def choose_slices(labels: np.ndarray | None, num_slices: int, depth: int | None = None) -> list[int]:
    """The slices to show: those with the most foreground, kept apart from each other, in increasing order.

    Slices are taken greedily by foreground voxel count, skipping any closer than span / (2 * num_slices) to one
    already chosen (span = the extent of the slices with foreground), so the rows do not show near-identical
    neighbors. Without labels, or with no foreground, the slices are spread evenly.

    Args:
        labels: (Z, H, W) class ids, or None.
        num_slices: How many slices (fewer when the volume has fewer).
        depth: Number of slices when ``labels`` is None.

    Example:
        >>> labels = np.zeros((20, 4, 4), dtype=np.uint8); labels[5:8, :2] = 1; labels[6, :3] = 1
        >>> choose_slices(labels, 2), choose_slices(None, 3, depth=9)
        ([5, 6], [1, 4, 7])
    """
    if num_slices < 1:
        raise ValueError(f"num_slices must be positive, got {num_slices}.")
    depth = int(labels.shape[0]) if labels is not None else int(depth or 0)
    if depth == 0:
        raise ValueError("choose_slices needs labels or a positive depth.")
    count = min(num_slices, depth)
    spread = sorted({int((i + 0.5) * depth / count) for i in range(count)})
    if labels is None:
        return spread
    foreground = (np.asarray(labels) > 0).reshape(depth, -1).sum(axis=1)
    if not foreground.any():
        return spread
    present = np.flatnonzero(foreground)
    min_gap = max(1, (int(present[-1]) - int(present[0]) + 1) // (2 * count))
    order = [int(z) for z in np.argsort(-foreground, kind="stable")]
    chosen: list[int] = []
    for z in order:
        if foreground[z] == 0 or len(chosen) == count:
            break
        if all(abs(z - c) >= min_gap for c in chosen):
            chosen.append(z)
    for z in order:  # too few apart: fill with the next best slices
        if len(chosen) == count:
            break
        if z not in chosen:
            chosen.append(z)
    return sorted(chosen)
