"""Intensity normalizations that map a volume to [0, 1] float32 (the stored range of prepared data), the rule that
chooses a CT window from the training foreground, and one-line descriptions for dataset.json.

The normalizations themselves live in :mod:`perspective_unet.intensity`; the names here stay for compatibility.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from perspective_unet.fingerprint import subsample
from perspective_unet.intensity import MR_PERCENTILES, IntensitySpec, percentile_minmax

__all__ = [
    "ct_intensity",
    "describe_ct_window",
    "describe_mr",
    "mr_intensity",
    "mr_normalize",
    "normalize_intensity",
    "percentile_window",
    "picture_intensity",
]

mr_normalize = percentile_minmax


def describe_ct_window(window: tuple[float, float], how: str = "") -> str:
    """Text for dataset.json's ``normalization`` field."""
    low, high = window
    origin = f" ({how})" if how else ""
    shift = f"x + {-low:g}" if low < 0 else f"x - {low:g}"
    return f"CT: HU clipped to [{low:g}, {high:g}]{origin}, then ({shift}) / {high - low:g} -> [0, 1]"


def describe_mr(percentiles: tuple[float, float] = MR_PERCENTILES) -> str:
    """Text for dataset.json's ``normalization`` field."""
    return (
        f"MR: per volume, clipped to its own {percentiles[0]:g}th and {percentiles[1]:g}th intensity percentiles, "
        "then min-max scaled to [0, 1]"
    )


def percentile_window(
    volumes: Iterable[tuple[np.ndarray, np.ndarray | None]],
    percentiles: tuple[float, float] = MR_PERCENTILES,
    seed: int = 0,
) -> tuple[float, float]:
    """A CT window from the percentiles of the foreground intensities of training volumes (nnU-Net's rule).

    Args:
        volumes: Pairs (image, label); voxels with label > 0 are sampled. Volumes without foreground (or without a
            label) contribute all their voxels.
        percentiles: Lower and upper percentile.
        seed: Seed of the voxel subsampling.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in volumes:
        values = image[label > 0] if label is not None and (label > 0).any() else np.ravel(image)
        samples.append(np.asarray(subsample(values, rng), dtype=np.float64))
    if not samples:
        raise ValueError("percentile_window needs at least one volume.")
    low, high = np.percentile(np.concatenate(samples), percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


# Machine-readable forms of the normalizations, stored as dataset.json's ``intensity`` so that prediction on a raw
# image can normalize it exactly as the training data was.


def ct_intensity(window: tuple[float, float]) -> dict[str, Any]:
    """``{"kind": "ct_window", "window": [low, high]}``."""
    return {"kind": "ct_window", "window": [float(window[0]), float(window[1])]}


def mr_intensity(percentiles: tuple[float, float] = MR_PERCENTILES) -> dict[str, Any]:
    """``{"kind": "percentile_minmax", "percentiles": [low, high]}``: per-volume clip and min-max."""
    return {"kind": "percentile_minmax", "percentiles": [float(percentiles[0]), float(percentiles[1])]}


def picture_intensity() -> dict[str, Any]:
    """``{"kind": "picture"}``: gray pictures scaled by their data type's range (see ``folder2d``)."""
    return {"kind": "picture"}


def normalize_intensity(volume: np.ndarray, intensity: dict[str, Any]) -> np.ndarray:
    """Apply a dataset's recorded ``intensity`` (its stored range) to raw voxels, giving float32 in [0, 1].

    Args:
        volume: Raw intensities (HU for CT, scanner units for MR, pixel values for pictures).
        intensity: dataset.json's ``intensity`` entry (see :class:`~perspective_unet.intensity.IntensitySpec`).
    """
    return IntensitySpec.from_dict(intensity).to_unit(volume)
