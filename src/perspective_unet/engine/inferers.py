"""Inferers: the plan's protocol as an object, built from a plan and settings, called with a model and a volume.

As MONAI's inferers, an :class:`Inferer` holds how to predict and is called with what to predict:
``inferer_for(plan, settings)(model, volume, spacing=...)``. There is one per protocol of the plan, chosen once:

- :class:`PaperInferer` (``protocol: paper``): each slice zoomed to the plan's patch size with a cubic spline, the
  labels zoomed back (:func:`~perspective_unet.engine.inference.predict_volume`);
- :class:`SpacingInferer` (``protocol: spacing``): each slice resampled to the plan's pixel spacing and covered by a
  Gaussian-weighted sliding window (:func:`~perspective_unet.engine.sliding_window.predict_at_spacing`).

Both take canonical volumes of stored values in [0, 1] (stage 1 of the plan's intensity applied, as prepared data
hold them): (Z, H, W), or (Z, C, H, W) for a plan of several input channels; they apply stage 2 (each channel its
own) and stack the 2.5D context slices (channel-major, as training does), as
:class:`~perspective_unet.runtime.inferers.BaseInferer` (shared with the light ONNX runtime's NumPy inferers) does it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from perspective_unet.engine.inference import model_device, predict_volume
from perspective_unet.engine.runtime import available_memory
from perspective_unet.engine.sliding_window import predict_at_spacing
from perspective_unet.intensity import ImageStats
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.inferers import BaseInferer

__all__ = ["INFERERS", "Inferer", "PaperInferer", "SpacingInferer", "inferer_for"]

Prediction = np.ndarray | tuple[np.ndarray, np.ndarray]


class Inferer(BaseInferer):
    """A PyTorch inferer: ``model`` is a segmentation model in eval mode, on the device to run on (see
    :meth:`BaseInferer.__call__`)."""

    def available_memory(self, model: torch.nn.Module) -> tuple[int | None, str]:
        """Free memory of the model's device (a CUDA device's own, the host's for the CPU) and its name."""
        device = model_device(model)
        return available_memory(device), str(device)

    def network_input(self, volume: np.ndarray, stats: Sequence[ImageStats] | None) -> torch.Tensor:
        """Stage 2 of each channel's intensity and the context slices: (Z, H, W) or (Z, C, H, W) stored values ->
        (Z, in_channels, H, W)."""
        return torch.from_numpy(self.network_array(volume, stats))


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
        if self.zooms_in_unit_range():
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
        if spacing is not None:
            self.check_resampled_size(model, volume.shape, spacing)
        array, pad_value = self.spacing_inputs(volume, spacing, stats)
        return predict_at_spacing(
            model,
            torch.from_numpy(array),
            spacing,  # type: ignore[arg-type]
            self.plan,
            self.settings,
            pad_value=pad_value,
            return_probabilities=return_probabilities,
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
