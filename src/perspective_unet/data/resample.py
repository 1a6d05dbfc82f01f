"""In-plane resampling between a slice's own pixel spacing and a plan's, shared by training and inference.

Images are resampled bilinearly with antialiasing when they shrink (a 0.8 mm slice brought to 3 mm is averaged, not
decimated, so it looks like a slice reconstructed at 3 mm); label maps by nearest neighbor; class probabilities
bilinearly. Sizes are ``round(side * spacing / target)``, at least 1.

The PyTorch functions (:func:`resample_image`, :func:`resample_labels`) are the reference. The light ONNX runtime
resamples with NumPy: bilinear resampling (with or without antialiasing) is linear and separable, so it is
``R @ X @ C.T`` with the weight matrices of :func:`resize_matrix`, built with PyTorch's own rule
(``upsample_bilinear2d`` and its antialiased form); :func:`resample_array` equals :func:`resample_image` to float32
rounding (tested). PyTorch is imported by the functions that need it only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["resample_array", "resample_image", "resample_labels", "resampled_shape", "resize_matrix"]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int]:
    """(height, width) of a slice of ``shape`` with pixel ``spacing`` (row, column) mm once resampled to ``target``.

    Example:
        >>> resampled_shape((512, 512), (0.8, 0.8), (1.6, 1.6))
        (256, 256)
    """
    return tuple(max(1, int(round(int(s) * float(a) / float(b)))) for s, a, b in zip(shape, spacing, target))  # type: ignore[return-value]


def resample_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a batch of images (B, C, H, W) to ``size`` bilinearly, antialiased where it shrinks."""
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    shrinks = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


def resample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a batch of label maps (B, H, W) to ``size`` by nearest neighbor (``nearest-exact`` pixel centers)."""
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].to(labels.dtype)


@functools.lru_cache(maxsize=64)
def resize_matrix(source: int, target: int, *, antialias: bool = False, align_corners: bool = False) -> np.ndarray:
    """The (target, source) float64 weights of PyTorch's bilinear resizing of one axis (``v_new = M @ v``).

    Args:
        source: The axis' length before.
        target: Its length after.
        antialias: PyTorch's antialiased form (a triangle filter widened by the shrink factor; equal to the plain
            form where the axis grows).
        align_corners: Corner pixels' centers aligned (``align_corners=True``); not with ``antialias``.

    Example:
        >>> resize_matrix(2, 4).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got source={source}, target={target}.")
    matrix = np.zeros((target, source), dtype=np.float64)
    if antialias:
        scale = source / target
        support = scale if scale >= 1.0 else 1.0
        inverse = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(target):
            center = scale * (i + 0.5)
            # int() truncates toward zero, as the C++ cast in PyTorch's kernel does.
            low = max(int(center - support + 0.5), 0)
            high = min(int(center + support + 0.5), source)
            taps = np.arange(low, high)
            weights = np.clip(1.0 - np.abs((taps - center + 0.5) * inverse), 0.0, None)
            if weights.sum() > 0:
                matrix[i, low:high] = weights / weights.sum()
        return matrix
    if align_corners:
        positions = np.arange(target) * ((source - 1) / (target - 1) if target > 1 else 0.0)
    else:
        positions = np.maximum((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0)
    first = np.minimum(np.floor(positions).astype(np.int64), source - 1)
    second = np.minimum(first + 1, source - 1)
    fraction = positions - first
    rows = np.arange(target)
    np.add.at(matrix, (rows, first), 1.0 - fraction)
    np.add.at(matrix, (rows, second), fraction)
    return matrix


def resample_array(image: np.ndarray, size: Sequence[int], *, align_corners: bool = False) -> np.ndarray:
    """:func:`resample_image` with NumPy: (..., H, W) float32 resized to ``size`` bilinearly, antialiased where it
    shrinks (or with corners aligned, as the paper protocol's probabilities are brought back).

    Example:
        >>> resample_array(np.ones((1, 1, 6, 4), dtype=np.float32), (3, 5)).shape
        (1, 1, 3, 5)
    """
    height, width = image.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (height, width) == size:
        return image
    shrinks = not align_corners and (size[0] < height or size[1] < width)
    rows = resize_matrix(height, size[0], antialias=shrinks, align_corners=align_corners).astype(np.float32)
    columns = resize_matrix(width, size[1], antialias=shrinks, align_corners=align_corners).astype(np.float32)
    return rows @ image.astype(np.float32, copy=False) @ columns.T
