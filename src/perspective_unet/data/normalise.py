"""Intensity normalisations that map a volume to [0, 1] float32, and their one-line descriptions for dataset.json."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "MR_PERCENTILES",
    "SYNAPSE_HU_WINDOW",
    "ct_intensity",
    "ct_window",
    "describe_ct_window",
    "describe_mr",
    "mr_intensity",
    "mr_normalise",
    "normalise_intensity",
    "percentile_window",
    "picture_intensity",
]

SYNAPSE_HU_WINDOW = (-125.0, 275.0)
MR_PERCENTILES = (0.5, 99.5)
# Enough voxels for stable 0.5/99.5 percentiles without holding every foreground voxel of a dataset in memory.
_SAMPLES_PER_VOLUME = 200_000


def ct_window(volume: np.ndarray, window: tuple[float, float] = SYNAPSE_HU_WINDOW) -> np.ndarray:
    """Clip Hounsfield units to ``window`` and scale linearly to [0, 1]: (clip(x, lo, hi) - lo) / (hi - lo)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"A CT window needs low < high, got {window}.")
    clipped = np.clip(np.asarray(volume, dtype=np.float64), low, high)
    return ((clipped - low) / (high - low)).astype(np.float32)


def describe_ct_window(window: tuple[float, float], how: str = "") -> str:
    """Text for dataset.json's ``normalisation`` field."""
    low, high = window
    origin = f" ({how})" if how else ""
    shift = f"x + {-low:g}" if low < 0 else f"x - {low:g}"
    return f"CT: HU clipped to [{low:g}, {high:g}]{origin}, then ({shift}) / {high - low:g} -> [0, 1]"


def mr_normalise(volume: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """Per-volume MR normalisation: clip to the volume's own percentiles, then min-max scale to [0, 1].

    The clip removes the few very bright voxels (flow artefacts, fat) that would otherwise squeeze the tissue
    contrast into a small part of [0, 1]. A constant volume maps to zeros.
    """
    volume = np.asarray(volume, dtype=np.float64)
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        return np.zeros(volume.shape, dtype=np.float32)
    return ((np.clip(volume, low, high) - low) / (high - low)).astype(np.float32)


def describe_mr(percentiles: tuple[float, float] = MR_PERCENTILES) -> str:
    """Text for dataset.json's ``normalisation`` field."""
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
        if values.size > _SAMPLES_PER_VOLUME:
            values = rng.choice(values, _SAMPLES_PER_VOLUME, replace=False)
        samples.append(np.asarray(values, dtype=np.float64))
    if not samples:
        raise ValueError("percentile_window needs at least one volume.")
    low, high = np.percentile(np.concatenate(samples), percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


# Machine-readable forms of the normalisations, stored as dataset.json's ``intensity`` so that prediction on a raw
# image can normalise it exactly as the training data was.


def ct_intensity(window: tuple[float, float]) -> dict[str, Any]:
    """``{"kind": "ct_window", "window": [low, high]}``."""
    return {"kind": "ct_window", "window": [float(window[0]), float(window[1])]}


def mr_intensity(percentiles: tuple[float, float] = MR_PERCENTILES) -> dict[str, Any]:
    """``{"kind": "percentile_minmax", "percentiles": [low, high]}``: per-volume clip and min-max."""
    return {"kind": "percentile_minmax", "percentiles": [float(percentiles[0]), float(percentiles[1])]}


def picture_intensity() -> dict[str, Any]:
    """``{"kind": "picture"}``: grey pictures scaled by their data type's range (see ``folder2d``)."""
    return {"kind": "picture"}


def normalise_intensity(volume: np.ndarray, intensity: dict[str, Any]) -> np.ndarray:
    """Apply a dataset's recorded ``intensity`` to raw voxels, giving float32 in [0, 1].

    Args:
        volume: Raw intensities (HU for CT, scanner units for MR, pixel values for pictures).
        intensity: dataset.json's ``intensity`` entry.
    """
    kind = intensity.get("kind")
    if kind == "ct_window":
        low, high = intensity["window"]
        return ct_window(volume, (float(low), float(high)))
    if kind == "percentile_minmax":
        low, high = intensity.get("percentiles", MR_PERCENTILES)
        return mr_normalise(volume, (float(low), float(high)))
    if kind == "picture":
        from perspective_unet.data.folder2d import picture_to_unit

        return picture_to_unit(np.asarray(volume), "the input picture")
    if kind == "unit":
        return np.clip(np.asarray(volume, dtype=np.float32), 0.0, 1.0)
    raise ValueError(f"Unknown intensity kind {kind!r}; expected ct_window, percentile_minmax, picture or unit.")
