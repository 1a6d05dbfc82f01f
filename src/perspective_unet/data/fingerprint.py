"""Collecting a dataset's fingerprint while it is prepared (see :mod:`perspective_unet.plan`)."""

from __future__ import annotations

import numpy as np

from perspective_unet.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from perspective_unet.intensity import IntensitySpec, subsample

__all__ = ["FingerprintBuilder", "intensity_stats"]


def intensity_stats(values: np.ndarray, rng: np.random.Generator | None = None) -> IntensityStats | None:
    """Count, mean, std and 0.5 / 99.5 percentiles of ``values`` (None when empty).

    Mean and standard deviation are exact; with ``rng`` the percentiles come from a subsample of at most
    ``intensity.SAMPLES_PER_CASE`` values.
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        return None
    sample = values if rng is None else subsample(values, rng)
    low, high = np.percentile(np.asarray(sample, dtype=np.float64), (0.5, 99.5))
    mean = float(values.mean(dtype=np.float64))
    std = float(np.sqrt(max(float(np.mean(np.square(values, dtype=np.float64))) - mean * mean, 0.0)))
    return IntensityStats(int(values.size), mean, std, float(low), float(high))


class FingerprintBuilder:
    """Accumulates per-case statistics; :meth:`build` gives the :class:`~perspective_unet.plan.Fingerprint`.

    Args:
        seed: Seed of the voxel subsampling of large cases.
    """

    def __init__(self, seed: int = 0) -> None:
        self.cases: dict[str, CaseFingerprint] = {}
        self._rng = np.random.default_rng(seed)
        self._stored_samples: list[np.ndarray] = []
        self._raw_samples: list[np.ndarray] = []

    def _sample(self, values: np.ndarray) -> np.ndarray:
        return subsample(np.asarray(values, dtype=np.float32), self._rng)

    def add(
        self,
        case: str,
        split: str,
        stored: np.ndarray,
        label: np.ndarray | None,
        spacing: tuple[float, float, float] | None,
        raw: np.ndarray | None = None,
    ) -> None:
        """Record one case (a (Z, H, W) volume, or the slices of a case so far; later calls for a case extend it).

        Args:
            case: Case name.
            split: ``train``, ``val`` or ``test``.
            stored: The stored image in [0, 1].
            label: Class ids, or None.
            spacing: (z, y, x) mm, or None when unknown.
            raw: The image before normalization (HU for CT), when known.
        """
        stored = np.asarray(stored)
        if stored.ndim == 2:
            stored = stored[None]
            label = None if label is None else np.asarray(label)[None]
            raw = None if raw is None else np.asarray(raw)[None]
        foreground = None if label is None else np.asarray(label) > 0
        if split == "train" and foreground is not None and foreground.any():
            self._stored_samples.append(self._sample(stored[foreground]))
            if raw is not None:
                self._raw_samples.append(self._sample(np.asarray(raw)[foreground]))
        previous = self.cases.get(case)
        shape = tuple(int(s) for s in stored.shape)
        stats = intensity_stats(stored, self._rng)
        raw_stats = None
        if raw is not None and foreground is not None and foreground.any():
            raw_stats = intensity_stats(np.asarray(raw)[foreground], self._rng)
        if previous is not None:
            # Slices of a case added one call at a time: grow the depth, keep the first statistics.
            shape = (previous.shape[0] + shape[0], *previous.shape[1:])
            stats, raw_stats = previous.stored, previous.foreground_raw or raw_stats
        spacing = None if spacing is None else tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self.cases[case] = CaseFingerprint(case, split, shape, spacing, stats, raw_stats)  # type: ignore[arg-type]

    def build(self, modality: str, intensity: IntensitySpec) -> Fingerprint:
        """The fingerprint of every case recorded, with the training foreground's statistics."""
        stored = intensity_stats(np.concatenate(self._stored_samples)) if self._stored_samples else None
        raw = intensity_stats(np.concatenate(self._raw_samples)) if self._raw_samples else None
        return Fingerprint(modality, intensity, tuple(self.cases.values()), stored, raw)
