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

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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

    Attributes:
        plan: The plan as used, with the settings' overrides.
        settings: The settings.
    """

    def __init__(self, plan: Plan, settings: InferenceSettings | None = None) -> None:
        self.settings = settings or InferenceSettings()
        self.plan = self.settings.plan_for(plan)

    def __call__(
        self,
        model: Any,
        volume: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        stats: ImageStats | None = None,
        return_probabilities: bool = False,
    ) -> Prediction:
        """Segment a canonical volume of stored values in [0, 1].

        Args:
            model: The network: a PyTorch model in eval mode on its device (PyTorch inferers) or a :data:`Network`
                (NumPy inferers), with ``plan.in_channels`` inputs.
            volume: (Z, H, W) stored values.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
            stats: The whole image's statistics for ``zscore_per_image`` (default: computed from ``volume``).
            return_probabilities: Also return (classes, Z, H, W) float16 probabilities on the volume's grid.

        Returns:
            uint8 labels (Z, H, W), and the probabilities when asked.

        Raises:
            InputError: The volume has fewer slices than the model reads at once, or the spacing protocol lacks the
                volume's spacing.
        """
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"expected a (Z, H, W) volume, got shape {volume.shape}.")
        plan = self.plan
        if plan.context_slices and volume.shape[0] < plan.in_channels:
            raise InputError(
                f"the model reads {plan.in_channels} neighboring slices at once ({plan.context_slices} "
                f"context slices on each side) but the image has {volume.shape[0]}; give a volume with at "
                f"least {plan.in_channels} slices."
            )
        return self.infer(model, volume, spacing, stats, return_probabilities)

    def network_array(self, volume: np.ndarray, stats: ImageStats | None) -> np.ndarray:
        """Stage 2 of the plan's intensity and the context slices: (Z, H, W) stored values -> (Z, C, H, W)."""
        intensity = self.plan.intensity
        stats = stats or (ImageStats.of(volume) if intensity.per_image else None)
        return stack_context(intensity.apply_stored(volume, stats), self.plan.context_slices)

    def spacing_inputs(
        self, volume: np.ndarray, spacing: Sequence[float] | None, stats: ImageStats | None
    ) -> tuple[np.ndarray, float]:
        """The spacing protocol's network input (Z, C, H, W) and padding value (the intensity floor).

        Raises:
            InputError: The volume's spacing is unknown.
        """
        if spacing is None:
            raise InputError(
                "the model works at a fixed pixel spacing (spacing protocol) but the image's spacing is "
                "unknown; give an image whose header records its voxel size."
            )
        stats = stats or (ImageStats.of(volume) if self.plan.intensity.per_image else None)
        return self.network_array(volume, stats), self.plan.intensity.floor(stats)

    def zooms_in_unit_range(self) -> bool:
        """Whether the paper protocol zooms the stored [0, 1] values and scales after (the paper's own order), rather
        than zooming the network input."""
        return self.plan.intensity.scaling == "symmetric" and self.plan.context_slices == 0

    @abstractmethod
    def infer(
        self,
        model: Any,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: ImageStats | None,
        return_probabilities: bool,
    ) -> Prediction:
        """The protocol itself, on a checked float32 (Z, H, W) volume."""


class NumpyInferer(BaseInferer):
    """An inferer of the light runtime: ``model`` is a :data:`Network` (NumPy in, NumPy out)."""


class NumpyPaperInferer(NumpyInferer):
    """The paper protocol: every slice zoomed to the plan's patch size, labels zoomed back."""

    def infer(
        self,
        model: Network,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        stats: ImageStats | None,
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
        stats: ImageStats | None,
        return_probabilities: bool,
    ) -> Prediction:
        array, pad_value = self.spacing_inputs(volume, spacing, stats)
        plan, settings = self.plan, self.settings
        depth, _, height, width = array.shape
        size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
        labels = np.empty((depth, height, width), dtype=np.uint8)
        probabilities = None

        def probabilities_of(windows: np.ndarray) -> np.ndarray:
            return mirrored_probabilities(model, windows, settings.tta)

        for start in range(0, depth, settings.batch_size):
            chunk = array[start : start + settings.batch_size]
            probs = sliding_window(
                probabilities_of,
                resample_array(chunk, size),
                plan.patch_size,
                overlap=plan.overlap,
                windows_per_pass=settings.batch_size,
                pad_value=pad_value,
            )
            back = resample_array(probs, (height, width))
            labels[start : start + len(chunk)] = back.argmax(axis=1)
            if return_probabilities:
                if probabilities is None:
                    probabilities = np.empty((back.shape[1], depth, height, width), dtype=np.float16)
                probabilities[:, start : start + len(chunk)] = back.transpose(1, 0, 2, 3)
        return (labels, probabilities) if return_probabilities else labels


NUMPY_INFERERS: dict[str, type[NumpyInferer]] = {"paper": NumpyPaperInferer, "spacing": NumpySpacingInferer}


def numpy_inferer_for(plan: Plan, settings: InferenceSettings | None = None) -> NumpyInferer:
    """The light runtime's inferer of the plan's protocol.

    Example:
        >>> from perspective_unet.intensity import IntensitySpec
        >>> inferer = numpy_inferer_for(Plan("paper", (32, 32), IntensitySpec("unit")))
        >>> logits = lambda x: np.concatenate([x[:, :1], 1 - x[:, :1]], axis=1)  # two classes from one channel
        >>> inferer(logits, np.random.rand(2, 40, 36).astype("float32")).shape
        (2, 40, 36)
    """
    return NUMPY_INFERERS[plan.protocol](plan, settings)
