"""Inferers: the plan's protocol as an object, built from a plan and settings, called with a model and a volume.

As MONAI's inferers, an :class:`Inferer` holds how to predict and is called with what to predict:
``inferer_for(plan, settings)(model, volume, spacing=...)``. There is one per protocol of the plan, chosen once:

- :class:`PaperInferer` (``protocol: paper``): each slice zoomed to the plan's patch size with a cubic spline, the
  labels zoomed back (:func:`~perspective_unet.engine.inference.predict_volume`);
- :class:`SpacingInferer` (``protocol: spacing``): each slice resampled to the plan's pixel spacing and covered by a
  Gaussian-weighted sliding window (:func:`~perspective_unet.engine.sliding_window.predict_at_spacing`).

Both take canonical volumes of stored values in [0, 1] (stage 1 of the plan's intensity applied, as prepared data
hold them): (Z, H, W), or (Z, C, H, W) for a plan of several input channels; they apply stage 2 (each channel its
own) and stack the 2.5D context slices (channel-major, as training does).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from perspective_unet.channels import apply_stored_channels, channel_floors
from perspective_unet.data.resample import resampled_shape
from perspective_unet.engine.inference import model_device, predict_volume
from perspective_unet.engine.inference_settings import InferenceSettings
from perspective_unet.engine.runtime import require_memory
from perspective_unet.engine.sliding_window import predict_at_spacing, stack_context
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats
from perspective_unet.plan import Plan

__all__ = ["INFERERS", "Inferer", "PaperInferer", "SpacingInferer", "inferer_for"]

Prediction = np.ndarray | tuple[np.ndarray, np.ndarray]


class Inferer(ABC):
    """How a plan segments a volume: built once from the plan and the settings, then called for each volume.

    Args:
        plan: The model's plan (the settings' ``patch_size`` and ``overlap`` replace its own where set).
        settings: Batch size, test-time mirroring, resampler, autocast.
        plan_source: The file the plan was read from, named when a size it sets cannot be met.

    Attributes:
        plan: The plan as used, with the settings' overrides.
        settings: The settings.
        plan_source: The plan's file, or None.
    """

    def __init__(
        self,
        plan: Plan,
        settings: InferenceSettings | None = None,
        *,
        plan_source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = settings or InferenceSettings()
        self.plan = self.settings.plan_for(plan)
        self.plan_source = plan_source

    def __call__(
        self,
        model: torch.nn.Module,
        volume: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        stats: ImageStats | Sequence[ImageStats] | None = None,
        return_probabilities: bool = False,
    ) -> Prediction:
        """Segment a canonical volume of stored values in [0, 1].

        Args:
            model: Segmentation model in eval mode, on the device to run on, with ``plan.in_channels`` inputs.
            volume: (Z, H, W) stored values; (Z, C, H, W) for a plan of C input channels.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
            stats: The whole image's statistics for ``zscore_per_image``, one per input channel (default: computed
                from ``volume``).
            return_probabilities: Also return (classes, Z, H, W) float16 probabilities on the volume's grid.

        Returns:
            uint8 labels (Z, H, W), and the probabilities when asked.

        Raises:
            InputError: The volume has another number of channels than the plan, fewer slices than the model reads
                at once, the spacing protocol lacks the volume's spacing, or the volume resampled to the plan's
                spacing cannot fit in memory.
        """
        volume = np.asarray(volume, dtype=np.float32)
        plan = self.plan
        channels = plan.num_channels
        if volume.ndim != (3 if channels == 1 else 4):
            form = "(Z, H, W)" if channels == 1 else f"(Z, {channels}, H, W)"
            raise ValueError(f"expected a {form} volume, got shape {volume.shape}.")
        if channels > 1 and volume.shape[1] != channels:
            raise InputError(
                f"the model reads {channels} input channels but the image has {volume.shape[1]}; give every channel."
            )
        if plan.context_slices and volume.shape[0] < 2 * plan.context_slices + 1:
            planes = 2 * plan.context_slices + 1
            raise InputError(
                f"the model reads {planes} neighboring slices at once ({plan.context_slices} context slices on each "
                f"side) but the image has {volume.shape[0]}; give a volume with at least {planes} slices."
            )
        if isinstance(stats, ImageStats):
            stats = (stats,)
        return self.infer(model, volume, spacing, stats, return_probabilities)

    def channel_stats(self, volume: np.ndarray, stats: Sequence[ImageStats] | None) -> Sequence[ImageStats] | None:
        """Each input channel's whole-image statistics for ``zscore_per_image`` (None when no channel needs them)."""
        if stats is not None or not any(spec.per_image for spec in self.plan.intensities):
            return stats
        if volume.ndim == 3:
            return (ImageStats.of(volume),)
        return tuple(ImageStats.of(volume[:, c]) for c in range(volume.shape[1]))

    def network_input(self, volume: np.ndarray, stats: Sequence[ImageStats] | None) -> torch.Tensor:
        """Stage 2 of each channel's intensity and the context slices: (Z, H, W) or (Z, C, H, W) stored values ->
        (Z, in_channels, H, W), channel-major."""
        specs, stats = self.plan.intensities, self.channel_stats(volume, stats)
        if volume.ndim == 3:
            scaled = specs[0].apply_stored(volume, stats[0] if stats else None)
        else:
            # The channel axis first: apply_stored_channels scales groups along the first axis.
            scaled = apply_stored_channels(specs, volume.swapaxes(0, 1), stats).swapaxes(0, 1)
        return stack_context(torch.from_numpy(np.ascontiguousarray(scaled)), self.plan.context_slices)

    def floors(self, stats: Sequence[ImageStats] | None) -> float | tuple[float, ...]:
        """The padding value of the network input: one for one channel, one per input plane for several."""
        floors = channel_floors(self.plan.intensities, stats, 2 * self.plan.context_slices + 1)
        return floors[0] if self.plan.num_channels == 1 else floors

    @abstractmethod
    def infer(
        self,
        model: torch.nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        """The protocol itself, on a checked float32 (Z, H, W) (or (Z, C, H, W)) volume."""


class PaperInferer(Inferer):
    """The paper protocol: every slice zoomed to the plan's patch size, labels zoomed back."""

    def infer(
        self,
        model: torch.nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        plan = self.plan
        if plan.intensity.scaling == "symmetric" and plan.context_slices == 0 and plan.num_channels == 1:
            # The paper's own path, unchanged: zoom in [0, 1], then (x - 0.5) / 0.5 inside predict_volume.
            return predict_volume(
                model, volume, plan.patch_size, self.settings, return_probabilities=return_probabilities
            )
        return predict_volume(
            model,
            self.network_input(volume, stats),
            plan.patch_size,
            self.settings,
            normalize=False,
            return_probabilities=return_probabilities,
        )


class SpacingInferer(Inferer):
    """The spacing protocol: slices at the plan's pixel spacing, a Gaussian-weighted sliding window."""

    def infer(
        self,
        model: torch.nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        if spacing is None:
            raise InputError(
                "the model works at a fixed pixel spacing (spacing protocol) but the image's spacing is "
                "unknown; give an image whose header records its voxel size."
            )
        self.check_resampled_size(model, volume.shape, spacing)
        stats = self.channel_stats(volume, stats)
        return predict_at_spacing(
            model,
            self.network_input(volume, stats),
            spacing,
            self.plan,
            self.settings,
            pad_value=self.floors(stats),
            return_probabilities=return_probabilities,
        )

    def check_resampled_size(self, model: torch.nn.Module, shape: Sequence[int], spacing: Sequence[float]) -> None:
        """Raise ``InputError`` before allocating when a batch of slices of a (Z, H, W) ``shape`` at ``spacing``
        cannot be held in memory once resampled to the plan's spacing (with its class probabilities).

        The size comes from two files (the image's header and the plan), so a hostile or damaged one of either would
        otherwise allocate hundreds of gigabytes; the message names both numbers and the plan's file.
        """
        plan = self.plan
        height, width = int(shape[-2]), int(shape[-1])
        size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
        slices = max(1, min(self.settings.batch_size, int(shape[0])))
        classes = int(getattr(getattr(model, "config", None), "num_classes", 2))
        # Per pixel: the network input, MONAI's sliding-window sums and their weights, the probabilities (float32).
        need = slices * size[0] * size[1] * 4 * (plan.in_channels + 2 * classes + 1)
        source = f" in {self.plan_source}" if self.plan_source is not None else ""
        require_memory(
            need,
            model_device(model),
            what=f"resampling {slices} slice(s) of {height} x {width} pixels at {spacing[0]:.3g} x {spacing[1]:.3g} "
            f"mm to the plan's spacing of {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm{source} ({size[0]} x "  # type: ignore[index]
            f"{size[1]} pixels each)",
            fix="the plan's spacing or the image's header is wrong: check both (a smaller --batch-size lowers the "
            "need)",
        )


INFERERS: dict[str, type[Inferer]] = {"paper": PaperInferer, "spacing": SpacingInferer}


def inferer_for(
    plan: Plan, settings: InferenceSettings | None = None, *, plan_source: str | os.PathLike[str] | None = None
) -> Inferer:
    """The inferer of the plan's protocol (``plan_source``: the plan's file, named in errors).

    Example:
        >>> from perspective_unet.intensity import IntensitySpec
        >>> type(inferer_for(Plan("paper", (32, 32), IntensitySpec("unit")))).__name__
        'PaperInferer'
    """
    return INFERERS[plan.protocol](plan, settings, plan_source=plan_source)
