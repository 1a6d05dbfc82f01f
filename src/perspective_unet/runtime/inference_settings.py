"""How to run inference: :class:`InferenceSettings`, one value passed whole from the command line to the inferers.

Prediction (with PyTorch or with the light ONNX runtime), evaluation, the figures and the demo take the same settings;
each level reads the fields it needs and hands the value on, so a new setting is one field here (and, for the command
line, one option). The module imports no PyTorch: the light runtime reads the same settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perspective_unet.plan import Plan
from perspective_unet.postprocessing import Postprocessing

if TYPE_CHECKING:  # the fields' types only: the light runtime takes these settings without PyTorch
    import torch

__all__ = ["RESAMPLERS", "InferenceSettings"]

RESAMPLERS = ("torch", "scipy")


def _pair(value: Any, name: str, kind: type) -> tuple | None:
    if value is None:
        return None
    try:
        pair = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}.") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}.")
    return pair


@dataclass(frozen=True)
class InferenceSettings:
    """How a model segments volumes, chosen by the user; the model's plan says everything else.

    Attributes:
        patch_size: The slice size (paper protocol) or sliding window (spacing protocol) instead of the plan's patch
            size; None keeps the plan's.
        overlap: The overlap of neighboring sliding windows (spacing protocol) instead of the plan's, in [0, 1).
        batch_size: Slices (paper protocol) or windows (spacing protocol) per forward pass.
        tta: Average the probabilities over mirrorings.
        device: Where the model runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (or a ``torch.device``).
        resampler: Paper protocol: ``torch`` (batched on the device) or ``scipy`` (TransUNet's slice loop); both give
            the same labels. The light runtime resamples with NumPy whatever this says.
        amp_dtype: Autocast type of the forward passes (e.g. ``torch.bfloat16``), or None for full precision
            (PyTorch only).
        precision: ``fp32``, ``bf16`` or ``auto`` (bfloat16 where the device computes it natively; see
            :mod:`~perspective_unet.models.ops.precision`); ``amp_dtype``, where set, takes its place (PyTorch only).
        save_probabilities: Also write class probabilities beside each label map (prediction of files).
        window: A CT window (low, high) in HU for new images instead of the model's recorded normalization.
        mr_normalize: Per-volume MR percentile normalization for new images instead of the model's.
        orientation: The canonical orientation code new images are cut in instead of the model's training data's.
        postprocessing: What to do to each label map after prediction (``find-best``'s ``postprocessing.json``), or
            None.
        allow_modality_mismatch: Segment new images that do not fit the model (a picture into a CT or MR model, a CT
            into an MR or picture model; see :func:`~perspective_unet.channels.input_mismatch`) instead of refusing
            them.
        postprocessing: What to do to each label map after prediction (``find-best``'s ``postprocessing.json``), or
            None.
        allow_modality_mismatch: Segment new images that do not fit the model (a picture into a CT or MR model, a CT
            into an MR or picture model; see :func:`~perspective_unet.intensity.input_mismatch`) instead of refusing
            them.

    Example:
        >>> settings = InferenceSettings(batch_size=4, tta=True)
        >>> settings.replace(batch_size=8).batch_size, settings.tta
        (8, True)
    """

    patch_size: tuple[int, int] | None = None
    overlap: float | None = None
    batch_size: int = 16
    tta: bool = False
    device: str | torch.device = "auto"
    resampler: str = "torch"
    amp_dtype: torch.dtype | None = None
    precision: str = "auto"
    save_probabilities: bool = False
    window: tuple[float, float] | None = None
    mr_normalize: bool = False
    orientation: str | None = None
    postprocessing: Postprocessing | None = None
    allow_modality_mismatch: bool = False
    postprocessing: Postprocessing | None = None
    allow_modality_mismatch: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patch_size", int))
        object.__setattr__(self, "window", _pair(self.window, "window", float))
        if self.patch_size is not None and min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}.")
        if self.overlap is not None and not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}.")
        if self.window is not None and self.mr_normalize:
            raise ValueError("choose either a CT window (--window) or MR normalization (--mr-normalize), not both.")
        if self.window is not None and not self.window[1] > self.window[0]:
            raise ValueError(f"a CT window needs LOW < HIGH, got {self.window[0]:g} {self.window[1]:g}.")

    @property
    def overrides_intensity(self) -> bool:
        """Whether the user chose the stored range of new images (``window`` or ``mr_normalize``)."""
        return self.window is not None or self.mr_normalize

    def plan_for(self, plan: Plan) -> Plan:
        """``plan`` with this patch size and overlap where they are set.

        Example:
            >>> from perspective_unet.intensity import IntensitySpec
            >>> plan = Plan("paper", (224, 224), IntensitySpec("unit"))
            >>> InferenceSettings(patch_size=(96, 128)).plan_for(plan).patch_size
            (96, 128)
        """
        changes: dict[str, Any] = {}
        if self.patch_size is not None:
            changes["patch_size"] = self.patch_size
        if self.overlap is not None:
            changes["overlap"] = float(self.overlap)
        return plan.replace(**changes) if changes else plan

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
