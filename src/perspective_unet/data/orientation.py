"""Canonical slice order: bringing a volume to ``(Z, H, W)`` by flips and axis permutations only, and back.

``to_canonical`` reorients a volume read by ``read_image`` to a target orientation code, and ``from_canonical`` undoes
exactly that. The default code ``"SPL"`` means: Z runs from inferior to superior, rows from anterior to posterior,
columns from the patient's right to left, so ``plt.imshow(volume[z])`` shows the usual radiological axial view. The
code ``"stored"`` keeps the file's slice axis (its third index) as Z and only moves it to the front: for oblique
acquisitions such as cardiac short-axis MRI, where the nearest anatomical axes are not the acquisition's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nibabel import orientations

__all__ = [
    "CANONICAL_ORIENTATION",
    "STORED_ORIENTATION",
    "canonical_spacing",
    "from_canonical",
    "to_canonical",
    "uncrop_canonical",
]

CANONICAL_ORIENTATION = "SPL"
STORED_ORIENTATION = "stored"


def _orientation_of(meta: dict[str, Any], orientation: str | None) -> str:
    if orientation is not None:
        return orientation
    recorded = meta.get("orientation")
    return str(recorded) if recorded else CANONICAL_ORIENTATION


def _target_ornt(orientation: str) -> np.ndarray | None:
    if orientation == STORED_ORIENTATION:
        return None
    codes = tuple(orientation.upper())
    if len(codes) != 3 or not set(codes) <= set("LRAPSI"):
        raise ValueError(f"orientation must be 'stored' or three axis codes such as 'SPL', got {orientation!r}.")
    target = orientations.axcodes2ornt(codes)
    if len(set(target[:, 0])) != 3:
        raise ValueError(f"orientation {orientation!r} names one anatomical axis twice.")
    return target


def _canonical_transform(meta: dict[str, Any], orientation: str) -> np.ndarray:
    """nibabel orientation transform from the stored array axes to the canonical (Z, H, W) axes."""
    target = _target_ornt(orientation)
    if target is None:
        # Stored order (i, j, k) -> (k, i, j): new axis of each stored axis, no flips.
        return np.array([[1, 1], [2, 1], [0, 1]], dtype=float)
    source = orientations.io_orientation(np.asarray(meta["affine"], dtype=np.float64))
    return orientations.ornt_transform(source, target)


def to_canonical(volume: np.ndarray, meta: dict[str, Any], orientation: str | None = None) -> np.ndarray:
    """Reorient a volume read by ``read_image`` to the canonical ``(Z, H, W)`` order.

    Args:
        volume: Array in the stored order of the file ``meta`` describes (or any array of that shape, such as a
            label map). A 2D picture ``(H, W)`` becomes ``(1, H, W)``.
        meta: The meta ``read_image`` returned.
        orientation: Three axis codes of the canonical (Z, H, W) axes, such as ``"SPL"``, or ``"stored"``; None
            takes ``meta["orientation"]`` if present (prepared volumes record it), else ``"SPL"``.

    Returns:
        A view or copy with axes permuted and flipped only; voxel values are untouched.
    """
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume[None]
    if volume.ndim != 3:
        raise ValueError(f"to_canonical expects a 2D or 3D array, got shape {volume.shape}.")
    transform = _canonical_transform(meta, _orientation_of(meta, orientation))
    return np.ascontiguousarray(orientations.apply_orientation(volume, transform))


def from_canonical(volume: np.ndarray, meta: dict[str, Any], orientation: str | None = None) -> np.ndarray:
    """Undo ``to_canonical``: bring a ``(Z, H, W)`` array back to the stored order of the file ``meta`` describes.

    Args:
        volume: A canonical array, typically a predicted label map of the canonical shape.
        meta: The meta of the original image (from ``read_image`` or a prepared volume's attributes).
        orientation: The orientation that ``to_canonical`` was called with (None: as in ``to_canonical``).
    """
    volume = np.asarray(volume)
    shape = tuple(meta.get("shape", meta.get("original_shape", ())))
    if len(shape) == 2:
        if volume.ndim != 3 or volume.shape[0] != 1:
            raise ValueError(f"A 2D image's canonical array has shape (1, H, W), got {volume.shape}.")
        return volume[0]
    inverse = orientations.ornt_transform(*_inverse_pair(meta, _orientation_of(meta, orientation)))
    out = np.ascontiguousarray(orientations.apply_orientation(volume, inverse))
    if shape and out.shape != shape:
        raise ValueError(f"Canonical array of shape {volume.shape} does not map back to the original {shape}.")
    return out


def _inverse_pair(meta: dict[str, Any], orientation: str) -> tuple[np.ndarray, np.ndarray]:
    target = _target_ornt(orientation)
    if target is None:
        # Canonical (k, i, j) back to (i, j, k): expressed as orientations of the canonical and stored axes.
        return np.array([[2, 1], [0, 1], [1, 1]], dtype=float), np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    source = orientations.io_orientation(np.asarray(meta["affine"], dtype=np.float64))
    return target, source


def canonical_spacing(meta: dict[str, Any], orientation: str | None = None) -> tuple[float, float, float]:
    """Voxel size in mm along the canonical (Z, H, W) axes; (1, 1, 1) for a 2D picture."""
    spacing = tuple(meta.get("spacing", ()))
    if len(spacing) != 3:
        return (1.0, 1.0, 1.0)
    transform = _canonical_transform(meta, _orientation_of(meta, orientation))
    out = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(transform):
        out[int(target_axis)] = float(spacing[source_axis])
    return out[0], out[1], out[2]


def uncrop_canonical(volume: np.ndarray, meta: dict[str, Any], fill: int | float = 0) -> np.ndarray:
    """Put a block of slices cut from a canonical volume (``meta["crop_z"]``) back into the full canonical shape.

    Volumes without ``crop_z`` are returned unchanged; the slices outside the block are set to ``fill``.
    """
    if "crop_z" not in meta:
        return np.asarray(volume)
    start, stop = (int(v) for v in np.ravel(meta["crop_z"]))
    full_shape = tuple(int(v) for v in np.ravel(meta["canonical_shape"]))
    if volume.shape[0] != stop - start or tuple(volume.shape[1:]) != full_shape[1:]:
        raise ValueError(f"Block of shape {volume.shape} does not fit crop_z {start}..{stop} of {full_shape}.")
    full = np.full(full_shape, fill, dtype=np.asarray(volume).dtype)
    full[start:stop] = volume
    return full
