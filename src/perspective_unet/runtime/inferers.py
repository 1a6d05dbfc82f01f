"""Inferers: the plan's protocol as an object, built from a plan and settings, called with a network and a volume.

:class:`BaseInferer` is what both paths share: the plan with the settings' overrides, the checks of a volume, stage 2
of the plan's intensity and the 2.5D context slices (:meth:`BaseInferer.network_array`), and the spacing protocol's
inputs. The PyTorch inferers (:mod:`perspective_unet.engine.inferers`) build on it with PyTorch's kernels; the ones
here run a network given as a NumPy function (an ONNX Runtime session), without PyTorch:

- :class:`NumpyPaperInferer` (``protocol: paper``): each slice zoomed to the plan's patch size with scipy's cubic
  spline (the same matrices as the PyTorch path), the labels brought back by corner-aligned nearest neighbors;
- :class:`NumpySpacingInferer` (``protocol: spacing``): each slice resampled to the plan's pixel spacing
  (:func:`~perspective_unet.data.resample.resample_array`), covered by a Gaussian-weighted sliding window
  (:func:`~perspective_unet.runtime.sliding_window.sliding_window`), the probabilities resampled back.

Each kernel is tested equal to its PyTorch counterpart to float32 rounding; on the same graph the label maps of both
paths agree but for pixels where two classes tie within that rounding (docs/performance.md gives the measured count).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from perspective_unet.channels import apply_stored_channels, channel_floors
from perspective_unet.data.resample import resample_array, resampled_shape
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.kernels import (
    corner_aligned_indices,
    mirrored_probabilities,
    spline_zoom_matrix,
    stack_context,
)
from perspective_unet.runtime.memory import host_available_memory, refuse_beyond
from perspective_unet.runtime.sliding_window import sliding_window

__all__ = [
    "NUMPY_INFERERS",
    "BaseInferer",
    "Network",
    "NumpyInferer",
    "NumpyPaperInferer",
    "NumpySpacingInferer",
    "numpy_inferer_for",
]

Prediction = np.ndarray | tuple[np.ndarray, np.ndarray]
Network = Callable[[np.ndarray], np.ndarray]
"""A network as the light runtime calls it: a float32 (B, C, H, W) batch -> (B, classes, H, W) logits."""


class BaseInferer(ABC):
    """How a plan segments a volume: built once from the plan and the settings, then called for each volume.

    Args:
        plan: The model's plan (the settings' ``patch_size`` and ``overlap`` replace its own where set).
        settings: Batch size, test-time mirroring and the other inference settings.
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
        model: Any,
        volume: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        stats: ImageStats | Sequence[ImageStats] | None = None,
        return_probabilities: bool = False,
    ) -> Prediction:
        """Segment a canonical volume of stored values in [0, 1].

        Args:
            model: The network: a PyTorch model in eval mode on its device (PyTorch inferers) or a :data:`Network`
                (NumPy inferers), with ``plan.in_channels`` inputs.
            volume: (Z, H, W) stored values; (Z, C, H, W) for a plan of C input channels.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
            stats: The whole image's statistics for ``zscore_per_image``, one per input channel (default: computed
                from ``volume``).
            return_probabilities: Also return (classes, Z, H, W) float16 probabilities on the volume's grid.

        Returns:
            uint8 labels (Z, H, W), and the probabilities when asked.

        Raises:
            InputError: The volume has another number of channels than the plan, fewer slices than the model reads
                at once, or the spacing protocol lacks the volume's spacing (or, with PyTorch, the volume resampled
                to the plan's spacing cannot fit in memory).
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

    def network_array(self, volume: np.ndarray, stats: Sequence[ImageStats] | None) -> np.ndarray:
        """Stage 2 of each channel's intensity and the context slices: (Z, H, W) or (Z, C, H, W) stored values ->
        (Z, in_channels, H, W), channel-major."""
        specs, stats = self.plan.intensities, self.channel_stats(volume, stats)
        if volume.ndim == 3:
            scaled = specs[0].apply_stored(volume, stats[0] if stats else None)
        else:
            # The channel axis first: apply_stored_channels scales groups along the first axis.
            scaled = apply_stored_channels(specs, volume.swapaxes(0, 1), stats).swapaxes(0, 1)
        return np.ascontiguousarray(stack_context(scaled, self.plan.context_slices), dtype=np.float32)

    def floors(self, stats: Sequence[ImageStats] | None) -> float | tuple[float, ...]:
        """The padding value of the network input: one for one channel, one per input plane for several."""
        floors = channel_floors(self.plan.intensities, stats, 2 * self.plan.context_slices + 1)
        return floors[0] if self.plan.num_channels == 1 else floors

    def spacing_inputs(
        self, volume: np.ndarray, spacing: Sequence[float] | None, stats: Sequence[ImageStats] | None
    ) -> tuple[np.ndarray, float | tuple[float, ...]]:
        """The spacing protocol's network input (Z, C, H, W) and padding value (the intensity floor, one per input
        plane for several channels).

        Raises:
            InputError: The volume's spacing is unknown.
        """
        if spacing is None:
            raise InputError(
                "the model works at a fixed pixel spacing (spacing protocol) but the image's spacing is "
                "unknown; give an image whose header records its voxel size."
            )
        stats = self.channel_stats(volume, stats)
        return self.network_array(volume, stats), self.floors(stats)

    def check_resampled_size(self, model: Any, shape: Sequence[int], spacing: Sequence[float]) -> None:
        """Raise ``InputError`` before allocating when a batch of slices of a (Z, H, W) ``shape`` at ``spacing``
        cannot be held in memory once resampled to the plan's spacing (with its class probabilities).

        The size comes from two files (the image's header and the plan), so a hostile or damaged one of either would
        otherwise allocate hundreds of gigabytes; the message names both numbers and the plan's file.
        """
        plan = self.plan
        height, width = int(shape[-2]), int(shape[-1])
        size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
        slices = max(1, min(self.settings.batch_size, int(shape[0])))
        classes = getattr(getattr(model, "config", None), "num_classes", None) or getattr(model, "num_classes", None)
        # Per pixel: the network input, the sliding window's sums and their weights, the probabilities (float32).
        need = slices * size[0] * size[1] * 4 * (plan.in_channels + 2 * int(classes or 2) + 1)
        source = f" in {self.plan_source}" if self.plan_source is not None else ""
        have, where = self.available_memory(model)
        refuse_beyond(
            need,
            have,
            where,
            what=f"resampling {slices} slice(s) of {height} x {width} pixels at {spacing[0]:.3g} x {spacing[1]:.3g} "
            f"mm to the plan's spacing of {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm{source} ({size[0]} x "  # type: ignore[index]
            f"{size[1]} pixels each)",
            fix="the plan's spacing or the image's header is wrong: check both (a smaller --batch-size lowers the "
            "need)",
        )

    def available_memory(self, model: Any) -> tuple[int | None, str]:
        """Bytes available where ``model`` runs (None: unknown) and that place's name: the host's memory here; the
        PyTorch inferers ask the model's device."""
        return host_available_memory(), "the host"

    def zooms_in_unit_range(self) -> bool:
        """Whether the paper protocol zooms the stored [0, 1] values and scales after (the paper's own order), rather
        than zooming the network input."""
        plan = self.plan
        return plan.intensity.scaling == "symmetric" and plan.context_slices == 0 and plan.num_channels == 1

    @abstractmethod
    def infer(
        self,
        model: Any,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        """The protocol itself, on a checked float32 (Z, H, W) (or (Z, C, H, W)) volume."""


class NumpyInferer(BaseInferer):
    """An inferer of the light runtime: ``model`` is a :data:`Network` (NumPy in, NumPy out)."""


class NumpyPaperInferer(NumpyInferer):
    """The paper protocol: every slice zoomed to the plan's patch size, labels zoomed back."""

    def infer(
        self,
        model: Network,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        scale_after = self.zooms_in_unit_range()
        array = volume[:, None] if scale_after else self.network_array(volume, stats)
        if not np.isfinite(array).all():
            raise ValueError("the volume contains NaN or infinite intensities; clean or mask them before predicting.")
        depth, _, height, width = array.shape
        target = self.plan.patch_size
        rows = spline_zoom_matrix(height, target[0]).astype(np.float32)
        columns = spline_zoom_matrix(width, target[1]).astype(np.float32)
        back_rows, back_columns = corner_aligned_indices(target[0], height), corner_aligned_indices(target[1], width)
        labels = np.empty((depth, height, width), dtype=np.uint8)
        probabilities = None
        batch_size = self.settings.batch_size
        for start in range(0, depth, batch_size):
            chunk = array[start : start + batch_size]
            x = chunk if (height, width) == tuple(target) else rows @ chunk @ columns.T
            if scale_after:
                x = (x - 0.5) / 0.5
            probs = mirrored_probabilities(model, np.ascontiguousarray(x, dtype=np.float32), self.settings.tta)
            labels[start : start + len(chunk)] = probs.argmax(axis=1)[:, back_rows][:, :, back_columns]
            if return_probabilities:
                if probabilities is None:
                    probabilities = np.empty((probs.shape[1], depth, height, width), dtype=np.float16)
                full = resample_array(probs, (height, width), align_corners=True)
                probabilities[:, start : start + len(chunk)] = full.transpose(1, 0, 2, 3)
        return (labels, probabilities) if return_probabilities else labels


class NumpySpacingInferer(NumpyInferer):
    """The spacing protocol: slices at the plan's pixel spacing, a Gaussian-weighted sliding window."""

    def infer(
        self,
        model: Network,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: Sequence[ImageStats] | None,
        return_probabilities: bool,
    ) -> Prediction:
        if spacing is not None:
            self.check_resampled_size(model, volume.shape, spacing)
        array, pad_value = self.spacing_inputs(volume, spacing, stats)
        plan, settings = self.plan, self.settings
        depth, _, height, width = array.shape
        size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
        labels = np.empty((depth, height, width), dtype=np.uint8)
        probabilities = None

        # One padding value: inputs of several channels, each with its own floor, are shifted so that every floor is
        # 0, padded with 0, and shifted back in each window (as the PyTorch path does around MONAI).
        shift = None if isinstance(pad_value, (int, float)) else np.asarray(pad_value, np.float32).reshape(1, -1, 1, 1)

        def probabilities_of(windows: np.ndarray) -> np.ndarray:
            return mirrored_probabilities(model, windows if shift is None else windows + shift, settings.tta)

        for start in range(0, depth, settings.batch_size):
            chunk = resample_array(array[start : start + settings.batch_size], size)
            probs = sliding_window(
                probabilities_of,
                chunk if shift is None else chunk - shift,
                plan.patch_size,
                overlap=plan.overlap,
                windows_per_pass=settings.batch_size,
                pad_value=0.0 if shift is not None else float(pad_value),  # type: ignore[arg-type]
            )
            back = resample_array(probs, (height, width))
            labels[start : start + len(chunk)] = back.argmax(axis=1)
            if return_probabilities:
                if probabilities is None:
                    probabilities = np.empty((back.shape[1], depth, height, width), dtype=np.float16)
                probabilities[:, start : start + len(chunk)] = back.transpose(1, 0, 2, 3)
        return (labels, probabilities) if return_probabilities else labels


NUMPY_INFERERS: dict[str, type[NumpyInferer]] = {"paper": NumpyPaperInferer, "spacing": NumpySpacingInferer}


def numpy_inferer_for(
    plan: Plan, settings: InferenceSettings | None = None, *, plan_source: str | os.PathLike[str] | None = None
) -> NumpyInferer:
    """The light runtime's inferer of the plan's protocol (``plan_source``: the plan's file, named in errors).

    Example:
        >>> from perspective_unet.intensity import IntensitySpec
        >>> inferer = numpy_inferer_for(Plan("paper", (32, 32), IntensitySpec("unit")))
        >>> logits = lambda x: np.concatenate([x[:, :1], 1 - x[:, :1]], axis=1)  # two classes from one channel
        >>> inferer(logits, np.random.rand(2, 40, 36).astype("float32")).shape
        (2, 40, 36)
    """
    return NUMPY_INFERERS[plan.protocol](plan, settings, plan_source=plan_source)
