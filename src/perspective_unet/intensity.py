"""How raw intensities become network input: one typed specification, applied the same way in training and inference.

Normalization runs in two stages:

1. **Stored range** (``kind``), fixed when a dataset is prepared: the prepared images hold its output, in [0, 1].

   - ``ct_window``: Hounsfield units clipped to ``window`` = (low, high) and scaled to [0, 1];
   - ``percentile_minmax``: per image, clipped to the image's own ``percentiles`` and min-max scaled to [0, 1];
   - ``picture``: gray pictures scaled by their data type's range (8-bit / 255, 16-bit / 65535, others min-max);
   - ``unit``: values already in [0, 1] (clipped).

2. **Network scaling** (``scaling``), part of the plan and editable:

   - ``symmetric``: (u - 0.5) / 0.5, the [-1, 1] input of the paper's protocol;
   - ``zscore``: (u - mean) / std with the dataset's foreground ``mean`` and ``std`` in stored units (for a CT window
     this is clip-then-z-score in Hounsfield units, nnU-Net's CT rule);
   - ``zscore_per_image``: (u - mean) / std with the mean and std of each whole image (nnU-Net's rule for MR).

The float value 0 of the stored range is the darkest a scan can be after stage 1 (air below a CT window, the clipped
floor of an MR image), so :meth:`IntensitySpec.floor` is the value used to pad outside an image.

Besides the specification, this module holds the rules around it: a CT window from the training foreground
(:func:`percentile_window`, nnU-Net's rule), the texts of dataset.json's ``normalization`` (``describe_*``; its
``intensity`` record is :meth:`IntensitySpec.stored_range`), the stored range a dataset's record stands for
(:func:`recorded_intensity`), the one chosen for a new image (:func:`resolve_intensity`: the user's ``--window`` or
``--mr-normalize`` first) and its application with the CT fallback for models that record none
(:func:`normalize_intensity`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from perspective_unet.config import dataclass_from_dict
from perspective_unet.errors import InputError

__all__ = [
    "KINDS",
    "MR_PERCENTILES",
    "SAMPLES_PER_CASE",
    "SCALINGS",
    "SYNAPSE_HU_WINDOW",
    "ImageStats",
    "IntensitySpec",
    "ct_window",
    "describe_ct_window",
    "describe_mr",
    "foreground_mask",
    "normalize_intensity",
    "percentile_minmax",
    "percentile_window",
    "picture_to_unit",
    "recorded_intensity",
    "resolve_intensity",
    "subsample",
]

logger = logging.getLogger(__name__)

KINDS = ("ct_window", "percentile_minmax", "picture", "unit")
SCALINGS = ("symmetric", "zscore", "zscore_per_image")
SYNAPSE_HU_WINDOW = (-125.0, 275.0)
MR_PERCENTILES = (0.5, 99.5)
# Enough voxels per case for stable 0.5 / 99.5 percentiles without holding a dataset's foreground in memory.
SAMPLES_PER_CASE = 200_000
_MIN_STD = 1e-6


def ct_window(volume: np.ndarray, window: tuple[float, float] = SYNAPSE_HU_WINDOW) -> np.ndarray:
    """Clip Hounsfield units to ``window`` and scale linearly to [0, 1]: (clip(x, lo, hi) - lo) / (hi - lo)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"A CT window needs low < high, got {window}.")
    clipped = np.clip(np.asarray(volume, dtype=np.float64), low, high)
    return ((clipped - low) / (high - low)).astype(np.float32)


def percentile_minmax(volume: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """Per-image normalization: clip to the image's own percentiles, then min-max scale to [0, 1].

    The clip removes the few very bright voxels (flow artifacts, fat) that would otherwise squeeze the tissue
    contrast into a small part of [0, 1]. A constant image maps to zeros.
    """
    volume = np.asarray(volume, dtype=np.float64)
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        return np.zeros(volume.shape, dtype=np.float32)
    return ((np.clip(volume, low, high) - low) / (high - low)).astype(np.float32)


def picture_to_unit(picture: np.ndarray, source: object = "the picture") -> np.ndarray:
    """Scale a gray picture to [0, 1] float32 by its data type's range (min-max for float or 32-bit pictures)."""
    picture = np.asarray(picture)
    if picture.dtype.kind == "f" and not np.isfinite(picture).all():
        raise InputError(f"{source} contains NaN or infinite values; clean or mask them first.")
    if picture.dtype == np.uint8:
        return (picture / 255.0).astype(np.float32)
    if picture.dtype == np.uint16:
        return (picture / 65535.0).astype(np.float32)
    values = picture.astype(np.float64)
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(picture.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


@dataclass(frozen=True)
class ImageStats:
    """Mean and standard deviation of one whole image in stored units, for ``zscore_per_image``."""

    mean: float
    std: float

    @classmethod
    def of(cls, image: np.ndarray) -> ImageStats:
        """The statistics of an image (any shape)."""
        values = np.asarray(image, dtype=np.float64)
        return cls(float(values.mean()) if values.size else 0.0, float(values.std()) if values.size else 1.0)


def _pair(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"intensity {name} must be a pair [low, high], got {value!r}.") from None
    return (low, high)


@dataclass(frozen=True)
class IntensitySpec:
    """The two-stage intensity normalization of a dataset and its plan (see the module docstring).

    Attributes:
        kind: Stage 1, how raw values become the stored [0, 1] range: ``ct_window``, ``percentile_minmax``,
            ``picture`` or ``unit``.
        window: (low, high) Hounsfield units of ``ct_window``.
        percentiles: (low, high) percentiles of ``percentile_minmax``.
        scaling: Stage 2, how stored values become network input: ``symmetric``, ``zscore`` or ``zscore_per_image``.
        mean: Foreground mean in stored units, for ``zscore``.
        std: Foreground standard deviation in stored units, for ``zscore``.

    Example:
        >>> spec = IntensitySpec("ct_window", window=(-100.0, 300.0), scaling="zscore", mean=0.5, std=0.25)
        >>> spec.apply_raw(np.array([-1000.0, 100.0, 500.0])).round(3).tolist()
        [-2.0, 0.0, 2.0]
        >>> IntensitySpec.from_dict({"kind": "ct_window", "window": [-125, 275]}).apply_raw(np.array([75.0])).tolist()
        [0.0]
    """

    kind: str
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None
    scaling: str = "symmetric"
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", _pair(self.window, "window"))
        object.__setattr__(self, "percentiles", _pair(self.percentiles, "percentiles"))
        if self.kind == "percentile_minmax" and self.percentiles is None:
            object.__setattr__(self, "percentiles", MR_PERCENTILES)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        if self.kind not in KINDS:
            raise ValueError(f"intensity kind must be one of {KINDS}, got {self.kind!r}.")
        if self.scaling not in SCALINGS:
            raise ValueError(f"intensity scaling must be one of {SCALINGS}, got {self.scaling!r}.")
        if self.kind == "ct_window":
            if self.window is None:
                raise ValueError("intensity kind 'ct_window' needs window: [low, high] in HU.")
            if not (np.isfinite(self.window).all() and self.window[1] > self.window[0]):
                raise ValueError(f"intensity window must be finite with low < high, got {list(self.window)}.")
        if self.kind == "percentile_minmax":
            low, high = self.percentiles  # type: ignore[misc]
            if not 0.0 <= low < high <= 100.0:
                raise ValueError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got [{low}, {high}].")
        if self.scaling == "zscore":
            if self.mean is None or self.std is None:
                raise ValueError("intensity scaling 'zscore' needs the foreground mean and std (in stored units).")
            if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
                raise ValueError(f"intensity mean must be finite and std positive, got {self.mean}, {self.std}.")

    @property
    def per_image(self) -> bool:
        """Whether stage 2 needs each image's own statistics."""
        return self.scaling == "zscore_per_image"

    def to_unit(self, volume: np.ndarray, source: object = "the image") -> np.ndarray:
        """Stage 1: raw values to the stored [0, 1] range, float32."""
        volume = np.asarray(volume)
        if volume.dtype.kind == "f" and not np.isfinite(volume).all():
            raise InputError(f"{source} contains NaN or infinite voxels; clean or mask them first.")
        if self.kind == "ct_window":
            return ct_window(volume, self.window)  # type: ignore[arg-type]
        if self.kind == "percentile_minmax":
            return percentile_minmax(volume, self.percentiles)  # type: ignore[arg-type]
        if self.kind == "picture":
            return picture_to_unit(volume, source)
        return np.clip(volume.astype(np.float32), 0.0, 1.0)

    def apply_stored(self, unit: np.ndarray, stats: ImageStats | None = None) -> np.ndarray:
        """Stage 2: stored [0, 1] values to network input, float32.

        Args:
            unit: Stored values (any shape).
            stats: The whole image's statistics for ``zscore_per_image``; computed from ``unit`` when None, which is
                right only when ``unit`` is the whole image.
        """
        unit = np.asarray(unit, dtype=np.float32)
        mean, std = self._moments(unit, stats)
        return ((unit - mean) / std).astype(np.float32)

    def apply_raw(self, volume: np.ndarray, source: object = "the image") -> np.ndarray:
        """Both stages on a whole raw image, as prediction does."""
        return self.apply_stored(self.to_unit(volume, source))

    def floor(self, stats: ImageStats | None = None) -> float:
        """Network-input value of the darkest stored value (0): what padding outside an image should hold."""
        mean, std = self._moments(np.zeros(1, dtype=np.float32), stats or ImageStats(0.0, 1.0))
        return float((0.0 - mean) / std)

    def _moments(self, unit: np.ndarray, stats: ImageStats | None) -> tuple[float, float]:
        if self.scaling == "symmetric":
            return 0.5, 0.5
        if self.scaling == "zscore":
            return float(self.mean), float(self.std)  # type: ignore[arg-type]
        stats = stats or ImageStats.of(unit)
        return stats.mean, max(stats.std, _MIN_STD)

    def with_stored_range(self, other: IntensitySpec) -> IntensitySpec:
        """This spec with ``other``'s stage 1 (a user's ``--window``), the z-score kept in Hounsfield units.

        A dataset-wide z-score is defined in the stored units of the old window; with another window the same mean and
        std in HU are expressed in the new window's units. Between kinds without a common unit the z-score becomes
        per image.
        """
        changes: dict[str, Any] = {"kind": other.kind, "window": other.window, "percentiles": other.percentiles}
        if self.scaling == "zscore":
            if self.kind == other.kind == "ct_window":
                (low, high), (new_low, new_high) = self.window, other.window  # type: ignore[misc]
                mean_hu, std_hu = low + self.mean * (high - low), self.std * (high - low)  # type: ignore[operator]
                changes.update(mean=(mean_hu - new_low) / (new_high - new_low), std=std_hu / (new_high - new_low))
            elif self.kind != other.kind:
                changes.update(scaling="zscore_per_image", mean=None, std=None)
        return dataclasses.replace(self, **changes)

    def replace(self, **changes: Any) -> IntensitySpec:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def stored_range(self) -> dict[str, Any]:
        """Stage 1 alone, as dataset.json's ``intensity`` entry holds it.

        Example:
            >>> IntensitySpec("percentile_minmax", scaling="zscore_per_image").stored_range()
            {'kind': 'percentile_minmax', 'percentiles': [0.5, 99.5]}
        """
        out: dict[str, Any] = {"kind": self.kind}
        if self.window is not None:
            out["window"] = list(self.window)
        if self.kind == "percentile_minmax":
            out["percentiles"] = list(self.percentiles)  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON- and checkpoint-safe dict; fields that do not apply are left out."""
        out = {**self.stored_range(), "scaling": self.scaling}
        if self.scaling == "zscore":
            out["mean"], out["std"] = self.mean, self.std
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensitySpec:
        """Build from ``to_dict`` output, or from a dataset.json ``intensity`` entry (stage 1 only: ``symmetric``).

        Raises:
            ValueError: Unknown keys or an inconsistent specification, named.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an intensity specification must be a mapping, got {data!r}.")
        if "kind" not in data:
            raise ValueError("an intensity specification needs 'kind'.")
        return dataclass_from_dict(cls, data, "intensity keys")

    def describe(self) -> str:
        """One line for people, e.g. for ``perspective-unet plan``."""
        stage1 = {
            "ct_window": lambda: f"HU clipped to [{self.window[0]:g}, {self.window[1]:g}] -> [0, 1]",  # type: ignore[index]
            "percentile_minmax": lambda: "per image, clipped to its {:g}th/{:g}th percentiles -> [0, 1]".format(
                *self.percentiles  # type: ignore[misc]
            ),
            "picture": lambda: "picture values / type range -> [0, 1]",
            "unit": lambda: "values already in [0, 1]",
        }[self.kind]()
        if self.scaling == "symmetric":
            stage2 = "(u - 0.5) / 0.5"
        elif self.scaling == "zscore":
            stage2 = f"(u - {self.mean:.4g}) / {self.std:.4g}"
            if self.kind == "ct_window":
                low, high = self.window  # type: ignore[misc]
                mean_hu, std_hu = low + self.mean * (high - low), self.std * (high - low)  # type: ignore[operator]
                stage2 += f" (foreground mean {mean_hu:.1f} HU, std {std_hu:.1f} HU)"
        else:
            stage2 = "z-score with each image's own mean and std"
        return f"{stage1}; then {stage2}"


# --------------------------------------------------------------------------------------------------------------------
# Choosing a stored range: from the training foreground, from a dataset's record, for a new image
# --------------------------------------------------------------------------------------------------------------------


def subsample(values: np.ndarray, rng: np.random.Generator, limit: int = SAMPLES_PER_CASE) -> np.ndarray:
    """At most ``limit`` of ``values`` (flattened), drawn without replacement."""
    values = np.ravel(values)
    return rng.choice(values, limit, replace=False) if values.size > limit else values


def foreground_mask(label: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """The labeled voxels of a label map: class ids above 0, voxels marked ``ignore_label`` (no annotation) left out.

    Example:
        >>> foreground_mask(np.array([0, 1, 2, 255]), ignore_label=255).tolist()
        [False, True, True, False]
    """
    label = np.asarray(label)
    foreground = label > 0
    return foreground if ignore_label is None else foreground & (label != ignore_label)


def percentile_window(
    volumes: Iterable[tuple[np.ndarray, np.ndarray | None]],
    percentiles: tuple[float, float] = MR_PERCENTILES,
    seed: int = 0,
    ignore_label: int | None = None,
) -> tuple[float, float]:
    """A CT window from the percentiles of the foreground intensities of training volumes (nnU-Net's rule).

    Args:
        volumes: Pairs (image, label); labeled voxels (:func:`foreground_mask`) are sampled. Volumes without
            foreground (or without a label) contribute all their voxels.
        percentiles: Lower and upper percentile.
        seed: Seed of the voxel subsampling.
        ignore_label: The label value of voxels without annotation, which are never foreground.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in volumes:
        foreground = None if label is None else foreground_mask(label, ignore_label)
        values = image[foreground] if foreground is not None and foreground.any() else np.ravel(image)
        samples.append(np.asarray(subsample(values, rng), dtype=np.float64))
    if not samples:
        raise ValueError("percentile_window needs at least one volume.")
    low, high = np.percentile(np.concatenate(samples), percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def describe_ct_window(window: tuple[float, float], how: str = "") -> str:
    """Text for dataset.json's ``normalization`` field (:func:`recorded_intensity` reads the window back)."""
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


_CT_TEXT = re.compile(r"HU clipped to \[\s*(-?[\d.]+(?:e[-+]?\d+)?)\s*,\s*(-?[\d.]+(?:e[-+]?\d+)?)\s*\]")


def recorded_intensity(
    intensity: Mapping[str, Any] | IntensitySpec | None, normalization: str | None = None, modality: str | None = None
) -> IntensitySpec | None:
    """The stored range a dataset's description records (``symmetric`` scaling), or None when it says nothing.

    Reads the machine-readable ``intensity`` record; for older descriptions the CT window written in the
    ``normalization`` text, per-image percentiles for MR, and the type range for 2D pictures.

    Raises:
        ValueError: The ``intensity`` record is not a valid stored range.

    Example:
        >>> recorded_intensity(None, modality="MR").kind
        'percentile_minmax'
        >>> recorded_intensity(None, "CT: HU clipped to [-160, 240] (given), then ...").window
        (-160.0, 240.0)
    """
    if isinstance(intensity, IntensitySpec):
        return intensity
    if intensity:
        return IntensitySpec.from_dict(intensity)
    text, kind = str(normalization or ""), str(modality or "").upper()
    match = _CT_TEXT.search(text)
    if match:
        return IntensitySpec("ct_window", window=(float(match.group(1)), float(match.group(2))))
    if kind.startswith("MR") or text.startswith("MR"):
        return IntensitySpec("percentile_minmax", percentiles=MR_PERCENTILES)
    if kind == "2D":
        return IntensitySpec("picture")
    return None


def resolve_intensity(
    recorded: IntensitySpec | None, *, window: Sequence[float] | None = None, mr_normalize: bool = False
) -> IntensitySpec | None:
    """The stored range for new images: the user's CT window or MR normalization, else the training data's record.

    Args:
        recorded: The training data's stored range (:func:`recorded_intensity`), or None when unknown.
        window: A CT window (low, high) in HU chosen by the user.
        mr_normalize: Per-volume MR percentile normalization chosen by the user.

    Returns:
        The stored range, or None when nothing is known (:func:`normalize_intensity` then applies the CT fallback).

    Raises:
        ValueError: Both choices are given, or the window is empty.

    Example:
        >>> resolve_intensity(None, window=(-160, 240)).window
        (-160.0, 240.0)
    """
    if window is not None and mr_normalize:
        raise ValueError("choose either a CT window (--window) or MR normalization (--mr-normalize), not both.")
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"a CT window needs LOW < HIGH, got {low:g} {high:g}.")
        return IntensitySpec("ct_window", window=(low, high))
    if mr_normalize:
        return IntensitySpec("percentile_minmax", percentiles=MR_PERCENTILES)
    return recorded


def normalize_intensity(
    volume: np.ndarray,
    spec: IntensitySpec | None,
    *,
    source: str | os.PathLike[str] | None = None,
    warn: bool = True,
) -> np.ndarray:
    """Stage 1 for a new image: raw values to the stored [0, 1] range the model was trained on, float32.

    Args:
        volume: Raw voxels (any shape).
        spec: The stored range, or None when unknown: data already in [0, 1] are used as they are, anything else is
            taken for CT and windowed to the Synapse window [-125, 275] HU with a warning.
        source: The file the voxels came from, named in errors and warnings.
        warn: Log the fallback's warning (a caller normalizing many files warns once).

    Raises:
        InputError: The volume holds NaN or infinite values.

    Example:
        >>> normalize_intensity(np.array([-1000, 75, 3000]), IntensitySpec("ct_window", window=(-125, 275)))
        array([0. , 0.5, 1. ], dtype=float32)
    """
    name = str(source) if source is not None else "the image"
    volume = np.asarray(volume)
    if spec is not None:
        return spec.to_unit(volume, name)
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise InputError(f"{name} contains NaN or infinite voxels; clean or mask them first.")
    if volume.size and volume.dtype.kind == "f" and volume.min() >= 0 and volume.max() <= 1:
        return volume.astype(np.float32)
    if warn:
        hint = "" if volume.size == 0 or volume.min() < 0 else f" (its minimum {volume.min():g} is unusual for HU)"
        logger.warning(
            "%s: the model does not record how its training intensities were normalized; assuming CT in HU with the "
            "Synapse window [%g, %g]%s. Pass --window LOW HIGH or --mr-normalize if that is wrong.",
            name,
            *SYNAPSE_HU_WINDOW,
            hint,
        )
    return ct_window(volume, SYNAPSE_HU_WINDOW)
