"""A dataset's fingerprint: every case's spacing, shape and intensity statistics, recorded by ``prepare``.

``perspective-unet prepare`` writes it as ``fingerprint.json`` beside the prepared data
(:class:`~perspective_unet.data.fingerprint.FingerprintBuilder` computes it); :func:`~perspective_unet.plan.derive_plan`
derives a plan from it. These are the typed, validated forms of that file, and the JSON helpers both files use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec
from perspective_unet.outputs import atomic_write

__all__ = [
    "FINGERPRINT_FILE",
    "CaseFingerprint",
    "Fingerprint",
    "IntensityStats",
    "read_fingerprint",
    "read_json",
    "write_json_atomic",
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
        stored: Statistics of the whole stored image in [0, 1] units (``zscore_per_image`` uses its mean and std).
        foreground_raw: Statistics of the labeled (foreground) voxels in raw units (HU for CT), when known.
    """

    case: str
    split: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    stored: IntensityStats
    foreground_raw: IntensityStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "split": self.split,
            "shape": list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "stored": self.stored.to_dict(),
            "foreground_raw": None if self.foreground_raw is None else self.foreground_raw.to_dict(),
        }

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
        )


@dataclass(frozen=True)
class Fingerprint:
    """What a plan is derived from: the cases and the intensities of the training foreground.

    Attributes:
        modality: ``CT``, ``MR``, ``2D`` or the dataset's channel name.
        intensity: The dataset's stored range (stage 1 of :class:`~perspective_unet.intensity.IntensitySpec`).
        cases: Every case, all splits.
        foreground_stored: Training foreground in stored units (the ``zscore`` mean and std come from it).
        foreground_raw: Training foreground in raw units (HU for CT), when the converter knew them.
    """

    modality: str
    intensity: IntensitySpec
    cases: tuple[CaseFingerprint, ...]
    foreground_stored: IntensityStats | None
    foreground_raw: IntensityStats | None = None

    @property
    def training_cases(self) -> list[CaseFingerprint]:
        return [c for c in self.cases if c.split == "train"]

    def case(self, name: str) -> CaseFingerprint | None:
        """The fingerprint of one case, or None."""
        return next((c for c in self.cases if c.case == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "intensity": self.intensity.to_dict(),
            "foreground_stored": None if self.foreground_stored is None else self.foreground_stored.to_dict(),
            "foreground_raw": None if self.foreground_raw is None else self.foreground_raw.to_dict(),
            "cases": [c.to_dict() for c in self.cases],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        stored, raw = data.get("foreground_stored"), data.get("foreground_raw")
        return cls(
            modality=str(data["modality"]),
            intensity=IntensitySpec.from_dict(data["intensity"]),
            cases=tuple(CaseFingerprint.from_dict(c) for c in data["cases"]),
            foreground_stored=None if stored is None else IntensityStats.from_dict(stored),
            foreground_raw=None if raw is None else IntensityStats.from_dict(raw),
        )


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON to a temporary file beside ``path`` and rename it, so a reader never sees half a file."""
    # Lists of numbers on one line: [224, 224] reads and edits better than one number per line.
    text = re.sub(
        r"\[\s+([^\[\]{}\"]*?)\s+\]",
        lambda m: "[" + ", ".join(map(str.strip, m.group(1).split(","))) + "]",
        json.dumps(data, indent=2),
    )
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{path} does not exist; {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc}); fix it or write it again with `perspective-unet plan`."
        ) from None


def read_fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Read ``fingerprint.json``; a damaged file raises ``InputError`` naming it."""
    path = Path(path)
    data = read_json(path, "prepare the dataset again to record its fingerprint.")
    try:
        return Fingerprint.from_dict(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path} is damaged ({type(exc).__name__}: {exc}); prepare the dataset again.") from None
