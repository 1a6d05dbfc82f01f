"""In-plane resampling between a slice's own pixel spacing and a plan's, shared by training and inference.

Images are resampled bilinearly with antialiasing when they shrink (a 0.8 mm slice brought to 3 mm is averaged, not
decimated, so it looks like a slice reconstructed at 3 mm); label maps by nearest neighbor; class probabilities
bilinearly. Sizes are ``round(side * spacing / target)``, at least 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resample_image", "resample_labels", "resampled_shape"]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int]:
    """(height, width) of a slice of ``shape`` with pixel ``spacing`` (row, column) mm once resampled to ``target``.

    Example:
        >>> resampled_shape((512, 512), (0.8, 0.8), (1.6, 1.6))
        (256, 256)
    """
    return tuple(max(1, int(round(int(s) * float(a) / float(b)))) for s, a, b in zip(shape, spacing, target))  # type: ignore[return-value]


def resample_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a batch of images (B, C, H, W) to ``size`` bilinearly, antialiased where it shrinks."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    shrinks = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


def resample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a batch of label maps (B, H, W) to ``size`` by nearest neighbor (``nearest-exact`` pixel centers)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].to(labels.dtype)
