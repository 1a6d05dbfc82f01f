"""The plan derived from a dataset's fingerprint: how a model sees its data, in training and inference.

``perspective-unet prepare`` records a :class:`Fingerprint` (every case's spacing, shape and intensity statistics)
as ``fingerprint.json`` and derives a :class:`Plan`, written as ``plan.json`` beside the prepared data. Training reads
the plan, stores it in every checkpoint, and prediction applies it to new scans. Two protocols share one pipeline:

- ``paper``: every slice is zoomed to ``patch_size`` whatever its pixel spacing, as the papers of this line of work do
  (use it to compare with published tables);
- ``spacing``: every slice is resampled to the plan's in-plane ``spacing`` (the dataset's median, as nnU-Net does),
  training takes random ``patch_size`` patches (a share of them centered on foreground) and inference slides a window
  of that size over the resampled slice, so an organ has the same size in pixels whatever scanner made the image.

The plan is plain JSON, editable by hand; :func:`read_plan` validates it and names the file and field at fault.
The fingerprint's types live in :mod:`perspective_unet.fingerprint`; the plan of a dataset folder (its ``plan.json``, a
default for folders without one, a run's overrides) is read by its layout,
:meth:`perspective_unet.data.layouts.base.DatasetLayout.plan`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perspective_unet.config import dataclass_from_dict
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import CaseFingerprint, ChannelFingerprint, Fingerprint
from perspective_unet.intensity import IntensitySpec
from perspective_unet.outputs import read_json

__all__ = [
    "PATCH_DIVISOR",
    "PLAN_FILE",
    "PROTOCOLS",
    "Plan",
    "check_patch_multiple",
    "check_patch_size",
    "derive_plan",
    "largest_slice_at",
    "read_plan",
]

PROTOCOLS = ("paper", "spacing")
PLAN_FILE = "plan.json"
PATCH_DIVISOR = 16
# The paper's batch, 12 slices of 224 x 224, is the default budget of pixels per optimizer step.
BATCH_PIXELS = 12 * 224 * 224
# Largest patch a plan proposes by itself (the papers' 512 x 512 slices); --max-patch-pixels changes it.
MAX_PATCH_PIXELS = 512 * 512
# nnU-Net's cap: one batch should not cover more than this share of all training pixels (small datasets).
MAX_BATCH_SHARE = 0.05
FOREGROUND_FRACTION = 1.0 / 3.0


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


@dataclass(frozen=True)
class Plan:
    """How a model sees its data; stored as ``plan.json`` and inside every checkpoint.

    Attributes:
        protocol: ``paper`` (each slice zoomed to ``patch_size``) or ``spacing`` (slices resampled to ``spacing``,
            random patches in training, a sliding window in inference).
        patch_size: (height, width) of the network input: the size every slice is zoomed to (``paper``) or the
            training patch and inference window (``spacing``); derived plans take multiples of 16 and the network
            needs multiples of its size divisor (16 for the registered variants).
        spacing: (row, column) in-plane pixel size in mm the slices are resampled to (``spacing`` protocol only).
        intensity: Intensity normalization (input channel 0's when the data have several); its stored range
            (``kind``, ``window``, ``percentiles``) is fixed when the data are prepared, its ``scaling`` may be edited.
        batch_size: Patches (or slices) per optimizer step.
        context_slices: Slices taken above and below each slice as extra input channels (2.5D input; the network
            reads ``2 * context_slices + 1`` planes per input channel; volume edges are padded by repeating the end
            slice).
        foreground_fraction: Share of training patches centered on a foreground pixel (``spacing`` protocol).
        overlap: Overlap of neighboring sliding windows in inference, as a share of the window (``spacing``).
        other_channels: The intensity normalization of input channels 1, 2, ... of data with several channels
            (nnU-Net's ``channel_names``), each as ``intensity``; empty for one channel.
    """

    protocol: str
    patch_size: tuple[int, int]
    intensity: IntensitySpec
    spacing: tuple[float, float] | None = None
    batch_size: int = 12
    context_slices: int = 0
    foreground_fraction: float = FOREGROUND_FRACTION
    overlap: float = 0.5
    other_channels: tuple[IntensitySpec, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.intensity, Mapping):
            object.__setattr__(self, "intensity", IntensitySpec.from_dict(self.intensity))
        if isinstance(self.other_channels, (str, Mapping)) or not isinstance(self.other_channels, Sequence):
            raise ValueError(f"other_channels must be a list of intensity specifications, got {self.other_channels!r}.")
        others = tuple(s if isinstance(s, IntensitySpec) else IntensitySpec.from_dict(s) for s in self.other_channels)
        object.__setattr__(self, "other_channels", others)
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        self.validate()

    @property
    def num_channels(self) -> int:
        """Input channels of the data (modalities), before the context slices."""
        return 1 + len(self.other_channels)

    @property
    def intensities(self) -> tuple[IntensitySpec, ...]:
        """The intensity normalization of every input channel, channel 0's first."""
        return (self.intensity, *self.other_channels)

    @property
    def in_channels(self) -> int:
        """Input channels of the network: each data channel's slice and its context slices (channel-major: channel
        0's ``2 * context_slices + 1`` planes from below to above, then channel 1's, ...)."""
        return self.num_channels * (2 * self.context_slices + 1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}.")
        if len(self.patch_size) != 2:
            raise ValueError(f"patch_size needs (height, width), got {list(self.patch_size)}.")
        for side in self.patch_size:
            # Multiples of the network's size divisor (16 for five stages) are checked against the model in training.
            if isinstance(side, bool) or not isinstance(side, int) or side < 1:
                raise ValueError(f"patch_size sides must be positive integers, got {list(self.patch_size)}.")
        if self.protocol == "spacing":
            if self.spacing is None or len(self.spacing) != 2:
                raise ValueError("the spacing protocol needs spacing: [row, column] in mm.")
            if not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(f"spacing must be finite and positive, got {list(self.spacing)}.")
        _positive_int("batch_size", self.batch_size)
        if isinstance(self.context_slices, bool) or not isinstance(self.context_slices, int) or self.context_slices < 0:
            raise ValueError(f"context_slices must be an integer >= 0, got {self.context_slices!r}.")
        if not (isinstance(self.foreground_fraction, (int, float)) and 0.0 <= self.foreground_fraction <= 1.0):
            raise ValueError(f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction!r}.")
        if not (isinstance(self.overlap, (int, float)) and 0.0 <= self.overlap < 1.0):
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap!r}.")

    def replace(self, **changes: Any) -> Plan:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and checkpoint-safe dict (``other_channels`` only when the data have several channels)."""
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "patch_size": list(self.patch_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "intensity": self.intensity.to_dict(),
            "batch_size": self.batch_size,
            "context_slices": self.context_slices,
            "foreground_fraction": self.foreground_fraction,
            "overlap": self.overlap,
        }
        if self.other_channels:
            out["other_channels"] = [spec.to_dict() for spec in self.other_channels]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Build from ``to_dict`` output; unknown or missing keys raise ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}.")
        missing = [name for name in ("protocol", "patch_size", "intensity") if name not in data]
        if missing:
            raise ValueError(f"the plan lacks {missing}.")
        if not isinstance(data["patch_size"], (list, tuple)):
            raise ValueError(f"patch_size needs [height, width], got {data['patch_size']!r}.")
        return dataclass_from_dict(cls, data, "plan keys")


def _round_up(value: float, multiple: int = PATCH_DIVISOR) -> int:
    return max(multiple, int(math.ceil(value / multiple - 1e-9)) * multiple)


def _shape_at(case: CaseFingerprint, spacing: tuple[float, float]) -> tuple[float, float]:
    if case.spacing is None:
        return (float(case.shape[1]), float(case.shape[2]))
    return (case.shape[1] * case.spacing[1] / spacing[0], case.shape[2] * case.spacing[2] / spacing[1])


def check_patch_multiple(patch: Sequence[int]) -> None:
    """Raise ``ValueError`` unless both sides of ``patch`` are multiples of :data:`PATCH_DIVISOR`, as a plan's are (the
    registered networks halve their input four times)."""
    if any(int(side) % PATCH_DIVISOR or int(side) < PATCH_DIVISOR for side in patch):
        near = "x".join(str(_round_up(int(side))) for side in patch)
        raise ValueError(
            f"patch size {'x'.join(str(int(side)) for side in patch)}: both sides must be multiples of "
            f"{PATCH_DIVISOR} (the network halves its input four times), e.g. {near}."
        )


def largest_slice_at(fingerprint: Fingerprint, spacing: tuple[float, float] | None) -> tuple[float, float]:
    """The largest (height, width) of the training slices once resampled to ``spacing`` (native pixels if None)."""
    shapes = [_shape_at(c, spacing) if spacing else (c.shape[1], c.shape[2]) for c in fingerprint.training_cases]
    return (max(s[0] for s in shapes), max(s[1] for s in shapes))


def check_patch_size(fingerprint: Fingerprint, spacing: tuple[float, float] | None, patch: Sequence[int]) -> None:
    """Raise ``ValueError`` when ``patch`` is larger than every training slice at ``spacing`` (native pixels if None),
    the slices' largest sides rounded up to multiples of 16 (a patch a little larger than a slice is padded)."""
    extent = largest_slice_at(fingerprint, spacing)
    limit = (_round_up(extent[0]), _round_up(extent[1]))
    if patch[0] > limit[0] or patch[1] > limit[1]:
        where = f"{spacing[0]:.3g} x {spacing[1]:.3g} mm" if spacing else "their own pixel size"
        raise ValueError(
            f"patch size {patch[0]}x{patch[1]} is larger than every training slice at {where} (largest "
            f"{extent[0]:.0f}x{extent[1]:.0f} pixels); choose at most {limit[0]}x{limit[1]}."
        )


def derive_plan(
    fingerprint: Fingerprint,
    protocol: str,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    batch_size: int | None = None,
    context_slices: int = 0,
    max_patch_pixels: int = MAX_PATCH_PIXELS,
) -> Plan:
    """The plan for a fingerprint, nnU-Net's way; every argument given wins over the derived value.

    - ``spacing``: the median in-plane spacing of the training cases.
    - ``patch_size``: the median training slice shape at that spacing, rounded up to multiples of 16 and shrunk (the
      larger side first) until it holds at most ``max_patch_pixels`` pixels. The paper protocol takes 224 x 224.
    - ``batch_size``: the paper's 12 x 224 x 224 pixels per step divided by the patch's pixels, at least 2 and at most
      what keeps one batch under 5% of all training pixels (a small dataset should not be seen whole in one step).
      The paper protocol takes 12.
    - ``intensity``: the stored range of the fingerprint; ``symmetric`` scaling for the paper protocol, for the
      spacing protocol ``zscore`` with the training foreground's mean and std (CT) or ``zscore_per_image``. Each
      input channel of a fingerprint of several gets its own (``other_channels``), by its own stored range.

    Raises:
        ValueError: An unknown protocol, a spacing protocol without spacings, no training cases, or a patch size
            larger than every training slice.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    training = fingerprint.training_cases
    if not training:
        raise ValueError("the fingerprint has no training cases; nothing to plan from.")
    intensities = [_channel_intensity(channel, protocol) for channel in fingerprint.channels]
    if protocol == "paper":
        size = tuple(int(s) for s in patch_size) if patch_size is not None else (224, 224)
        return Plan(
            "paper",
            size,  # type: ignore[arg-type]
            intensities[0],
            batch_size=batch_size or 12,
            context_slices=context_slices,
            other_channels=tuple(intensities[1:]),
        )

    if spacing is None:
        if any(c.spacing is None for c in training):
            raise ValueError(
                "the spacing protocol needs every training case's voxel spacing; these files carry none "
                "(use protocol 'paper', or prepare the dataset from files with spacing)."
            )
        spacing = (
            statistics.median(c.spacing[1] for c in training),  # type: ignore[index]
            statistics.median(c.spacing[2] for c in training),
        )  # type: ignore[index]
    target = (float(spacing[0]), float(spacing[1]))
    if patch_size is None:
        shapes = [_shape_at(c, target) for c in training]
        size = [_round_up(statistics.median(s[0] for s in shapes)), _round_up(statistics.median(s[1] for s in shapes))]
        while size[0] * size[1] > max_patch_pixels and max(size) > PATCH_DIVISOR:
            larger = 0 if size[0] >= size[1] else 1
            size[larger] -= PATCH_DIVISOR
        patch = (size[0], size[1])
    else:
        patch = (int(patch_size[0]), int(patch_size[1]))
        check_patch_size(fingerprint, target, patch)
    if batch_size is None:
        total = sum(s[0] * s[1] * c.shape[0] for c, s in ((c, _shape_at(c, target)) for c in training))
        cap = max(2, round(MAX_BATCH_SHARE * total / (patch[0] * patch[1])))
        batch_size = max(2, min(BATCH_PIXELS // (patch[0] * patch[1]), cap))
    return Plan(
        "spacing",
        patch,
        intensities[0],
        spacing=target,
        batch_size=batch_size,
        context_slices=context_slices,
        other_channels=tuple(intensities[1:]),
    )


def _channel_intensity(channel: ChannelFingerprint, protocol: str) -> IntensitySpec:
    """One input channel's intensity: ``symmetric`` (paper), ``zscore`` with the training foreground's mean and std
    (a CT window), or ``zscore_per_image``."""
    base = channel.intensity
    if protocol == "paper":
        return base.replace(scaling="symmetric", mean=None, std=None)
    if base.kind == "ct_window" and channel.foreground_stored is not None:
        stats = channel.foreground_stored
        return base.replace(scaling="zscore", mean=stats.mean, std=max(stats.std, 1e-6))
    return base.replace(scaling="zscore_per_image", mean=None, std=None)


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate ``plan.json``: a valid :class:`Plan` whose patch sides are multiples of 16.

    Raises:
        InputError: The file is missing, not JSON, or describes an invalid plan (the message names the file and
            the field).
    """
    path = Path(path)
    data = read_json(path, "prepare the dataset again or write a plan with `perspective-unet plan`.")
    try:
        plan = Plan.from_dict(data)
        check_patch_multiple(plan.patch_size)
        return plan
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: {exc} Fix the file or rewrite it with `perspective-unet plan -d {path.parent} --reset`."
        ) from None
