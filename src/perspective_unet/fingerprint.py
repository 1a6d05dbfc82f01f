"""A dataset's fingerprint: every case's spacing, shape and intensity statistics, recorded by ``prepare``.

``perspective-unet prepare`` collects it with :class:`FingerprintBuilder` while it writes the prepared data and stores
it as ``fingerprint.json`` beside them; :func:`~perspective_unet.plan.derive_plan` derives a plan from it. Here are
the typed, validated forms of that file, its reader, and the builder (NumPy only).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, foreground_mask, subsample
from perspective_unet.outputs import read_json

__all__ = [
    "FINGERPRINT_FILE",
    "CaseFingerprint",
    "ChannelFingerprint",
    "Fingerprint",
    "FingerprintBuilder",
    "IntensityStats",
    "intensity_stats",
    "read_fingerprint",
]

FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class IntensityStats:
    """Summary of a set of intensities.

    Attributes:
        count: Number of values summarized.
        mean: Mean.
        std: Standard deviation.
        low: 0.5th percentile.
        high: 99.5th percentile.
    """

    count: int
    mean: float
    std: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityStats:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class CaseFingerprint:
    """One case of a prepared dataset.

    Attributes:
        case: Case name.
        split: ``train``, ``val`` or ``test``.
        shape: Canonical (Z, H, W) shape.
        spacing: Voxel size (z, y, x) in mm, or None when the files carry none (2D pictures count 1 per pixel).
        stored: Statistics of the whole stored image in [0, 1] units (``zscore_per_image`` uses its mean and std);
            input channel 0's when there are several.
        foreground_raw: Statistics of the labeled (foreground) voxels in raw units (HU for CT), when known.
        other_stored: ``stored`` of input channels 1, 2, ...; empty for one channel.
    """

    case: str
    split: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    stored: IntensityStats
    foreground_raw: IntensityStats | None = None
    other_stored: tuple[IntensityStats, ...] = ()

    @property
    def stored_channels(self) -> tuple[IntensityStats, ...]:
        """``stored`` of every input channel, channel 0's first."""
        return (self.stored, *self.other_stored)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "case": self.case,
            "split": self.split,
            "shape": list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "stored": self.stored.to_dict(),
            "foreground_raw": None if self.foreground_raw is None else self.foreground_raw.to_dict(),
        }
        if self.other_stored:
            out["other_stored"] = [stats.to_dict() for stats in self.other_stored]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseFingerprint:
        spacing = data.get("spacing")
        raw = data.get("foreground_raw")
        return cls(
            case=str(data["case"]),
            split=str(data["split"]),
            shape=tuple(int(s) for s in data["shape"]),  # type: ignore[arg-type]
            spacing=None if spacing is None else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            stored=IntensityStats.from_dict(data["stored"]),
            foreground_raw=None if raw is None else IntensityStats.from_dict(raw),
            other_stored=tuple(IntensityStats.from_dict(stats) for stats in data.get("other_stored") or ()),
        )


@dataclass(frozen=True)
class ChannelFingerprint:
    """What a plan needs of one input channel: its stored range and its training foreground's intensities.

    Attributes:
        intensity: The channel's stored range (stage 1 of :class:`~perspective_unet.intensity.IntensitySpec`).
        foreground_stored: Training foreground in stored units (the ``zscore`` mean and std come from it).
        foreground_raw: Training foreground in raw units (HU for CT), when the converter knew them.
    """

    intensity: IntensitySpec
    foreground_stored: IntensityStats | None
    foreground_raw: IntensityStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "intensity": self.intensity.to_dict(),
            "foreground_stored": None if self.foreground_stored is None else self.foreground_stored.to_dict(),
            "foreground_raw": None if self.foreground_raw is None else self.foreground_raw.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelFingerprint:
        stored, raw = data.get("foreground_stored"), data.get("foreground_raw")
        return cls(
            intensity=IntensitySpec.from_dict(data["intensity"]),
            foreground_stored=None if stored is None else IntensityStats.from_dict(stored),
            foreground_raw=None if raw is None else IntensityStats.from_dict(raw),
        )


@dataclass(frozen=True)
class Fingerprint:
    """What a plan is derived from: the cases and the intensities of the training foreground.

    Attributes:
        modality: ``CT``, ``MR``, ``2D`` or the dataset's channel name (names joined by ``+`` for several channels).
        intensity: The dataset's stored range (stage 1 of :class:`~perspective_unet.intensity.IntensitySpec`); input
            channel 0's when there are several.
        cases: Every case, all splits.
        foreground_stored: Training foreground in stored units (the ``zscore`` mean and std come from it); channel 0's.
        foreground_raw: Training foreground in raw units (HU for CT), when the converter knew them; channel 0's.
        other_channels: The same of input channels 1, 2, ...; empty for one channel.
    """

    modality: str
    intensity: IntensitySpec
    cases: tuple[CaseFingerprint, ...]
    foreground_stored: IntensityStats | None
    foreground_raw: IntensityStats | None = None
    other_channels: tuple[ChannelFingerprint, ...] = ()

    @property
    def training_cases(self) -> list[CaseFingerprint]:
        return [c for c in self.cases if c.split == "train"]

    @property
    def channels(self) -> tuple[ChannelFingerprint, ...]:
        """Every input channel's stored range and foreground, channel 0's first."""
        first = ChannelFingerprint(self.intensity, self.foreground_stored, self.foreground_raw)
        return (first, *self.other_channels)

    def case(self, name: str) -> CaseFingerprint | None:
        """The fingerprint of one case, or None."""
        return next((c for c in self.cases if c.case == name), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "modality": self.modality,
            "intensity": self.intensity.to_dict(),
            "foreground_stored": None if self.foreground_stored is None else self.foreground_stored.to_dict(),
            "foreground_raw": None if self.foreground_raw is None else self.foreground_raw.to_dict(),
        }
        if self.other_channels:
            out["other_channels"] = [channel.to_dict() for channel in self.other_channels]
        out["cases"] = [c.to_dict() for c in self.cases]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        stored, raw = data.get("foreground_stored"), data.get("foreground_raw")
        return cls(
            modality=str(data["modality"]),
            intensity=IntensitySpec.from_dict(data["intensity"]),
            cases=tuple(CaseFingerprint.from_dict(c) for c in data["cases"]),
            foreground_stored=None if stored is None else IntensityStats.from_dict(stored),
            foreground_raw=None if raw is None else IntensityStats.from_dict(raw),
            other_channels=tuple(ChannelFingerprint.from_dict(c) for c in data.get("other_channels") or ()),
        )


def read_fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Read ``fingerprint.json``; a damaged file raises ``InputError`` naming it."""
    path = Path(path)
    data = read_json(path, "prepare the dataset again to record its fingerprint.")
    try:
        return Fingerprint.from_dict(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path} is damaged ({type(exc).__name__}: {exc}); prepare the dataset again.") from None


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
    """Accumulates per-case statistics; :meth:`build` gives the :class:`Fingerprint`.

    Args:
        seed: Seed of the voxel subsampling of large cases.
        channels: Input channels of the stored images; with several, images carry a channel axis after the slice
            axis: (Z, C, H, W) volumes, (C, H, W) slices.
        ignore_label: The label value of voxels without annotation, which are never foreground.
    """

    def __init__(self, seed: int = 0, *, channels: int = 1, ignore_label: int | None = None) -> None:
        self.cases: dict[str, CaseFingerprint] = {}
        self.channels = int(channels)
        self.ignore_label = ignore_label
        self._rng = np.random.default_rng(seed)
        self._stored_samples: list[list[np.ndarray]] = [[] for _ in range(self.channels)]
        self._raw_samples: list[list[np.ndarray]] = [[] for _ in range(self.channels)]

    def _sample(self, values: np.ndarray) -> np.ndarray:
        return subsample(np.asarray(values, dtype=np.float32), self._rng)

    def _by_channel(self, image: np.ndarray, what: str) -> list[np.ndarray]:
        """The (Z, H, W) volume of every channel of a (Z, H, W) or (Z, C, H, W) image."""
        image = np.asarray(image)
        if self.channels == 1:
            return [image]
        if image.ndim != 4 or image.shape[1] != self.channels:
            raise ValueError(f"the {what} image must be (Z, {self.channels}, H, W), got shape {image.shape}.")
        return [image[:, c] for c in range(self.channels)]

    def add(
        self,
        case: str,
        split: str,
        stored: np.ndarray,
        label: np.ndarray | None,
        spacing: tuple[float, float, float] | None,
        raw: np.ndarray | None = None,
    ) -> None:
        """Record one case (a volume, or the slices of a case so far; later calls for a case extend it).

        Args:
            case: Case name.
            split: ``train``, ``val`` or ``test``.
            stored: The stored image in [0, 1]: (Z, H, W) or a (H, W) slice; (Z, C, H, W) or (C, H, W) for several
                channels.
            label: Class ids, or None.
            spacing: (z, y, x) mm, or None when unknown.
            raw: The image before normalization (HU for CT), when known; shaped as ``stored``.
        """
        stored = np.asarray(stored)
        if stored.ndim == (2 if self.channels == 1 else 3):
            stored = stored[None]
            label = None if label is None else np.asarray(label)[None]
            raw = None if raw is None else np.asarray(raw)[None]
        stored_channels = self._by_channel(stored, "stored")
        raw_channels = None if raw is None else self._by_channel(raw, "raw")
        foreground = None if label is None else foreground_mask(label, self.ignore_label)
        labeled = foreground is not None and bool(foreground.any())
        if split == "train" and labeled:
            for c, image in enumerate(stored_channels):
                self._stored_samples[c].append(self._sample(image[foreground]))
                if raw_channels is not None:
                    self._raw_samples[c].append(self._sample(raw_channels[c][foreground]))
        previous = self.cases.get(case)
        shape = tuple(int(s) for s in stored_channels[0].shape)
        stats = [intensity_stats(image, self._rng) for image in stored_channels]
        raw_stats = None
        if raw_channels is not None and labeled:
            raw_stats = intensity_stats(raw_channels[0][foreground], self._rng)
        if previous is not None:
            # Slices of a case added one call at a time: grow the depth, keep the first statistics.
            shape = (previous.shape[0] + shape[0], *previous.shape[1:])
            stats, raw_stats = list(previous.stored_channels), previous.foreground_raw or raw_stats
        spacing = None if spacing is None else tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self.cases[case] = CaseFingerprint(
            case,
            split,
            shape,
            spacing,
            stats[0],
            raw_stats,
            tuple(stats[1:]),  # type: ignore[arg-type]
        )

    def build(
        self, modality: str, intensity: IntensitySpec, other_intensities: tuple[IntensitySpec, ...] = ()
    ) -> Fingerprint:
        """The fingerprint of every case recorded, with the training foreground's statistics per channel.

        Args:
            modality: The dataset's modality.
            intensity: Channel 0's stored range.
            other_intensities: The stored range of channels 1, 2, ...
        """
        if len(other_intensities) != self.channels - 1:
            raise ValueError(f"{self.channels} channels need {self.channels - 1} other intensities.")
        channels = []
        for c, spec in enumerate((intensity, *other_intensities)):
            stored = intensity_stats(np.concatenate(self._stored_samples[c])) if self._stored_samples[c] else None
            raw = intensity_stats(np.concatenate(self._raw_samples[c])) if self._raw_samples[c] else None
            channels.append(ChannelFingerprint(spec, stored, raw))
        first = channels[0]
        return Fingerprint(
            modality,
            intensity,
            tuple(self.cases.values()),
            first.foreground_stored,
            first.foreground_raw,
            tuple(channels[1:]),
        )
