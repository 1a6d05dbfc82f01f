"""Prediction of a volume with a plan: 2.5D context, then the paper's zoom or the spacing protocol's sliding window.

Spacing protocol, per batch of slices: resample to the plan's in-plane spacing (antialiased where the slice shrinks,
as in training), predict with ``monai.inferers.sliding_window_inference`` (windows of the plan's patch size,
Gaussian weighting, the plan's overlap, several windows per forward pass; an image smaller than a window is padded
with the intensity floor, as training pads), optionally average over mirrorings, resample the class probabilities
back to the slice's own grid (bilinear) and take the argmax there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from perspective_unet.data.resample import resample_image, resampled_shape
from perspective_unet.engine.inference import predict_slices, predict_volume
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats
from perspective_unet.plan import Plan

__all__ = ["predict_at_spacing", "predict_with_plan", "stack_context"]


def stack_context(volume: np.ndarray | torch.Tensor, context: int) -> torch.Tensor:
    """(Z, H, W) -> (Z, 2 * context + 1, H, W): each slice between its neighbors, the end slices repeated.

    Example:
        >>> stack_context(torch.arange(3.0)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    volume = torch.as_tensor(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {tuple(volume.shape)}.")
    if context == 0:
        return volume[:, None]
    depth = volume.shape[0]
    offsets = torch.arange(-context, context + 1)
    indices = (torch.arange(depth)[:, None] + offsets[None]).clamp_(0, depth - 1)
    return volume[indices]


@torch.inference_mode()
def predict_at_spacing(
    model: torch.nn.Module,
    volume: torch.Tensor,
    spacing: Sequence[float],
    plan: Plan,
    *,
    pad_value: float,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    tta: bool = False,
    return_probabilities: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a (Z, C, H, W) volume in network-input units with the spacing protocol (see the module docstring).

    Args:
        model: Segmentation model in eval mode.
        volume: (Z, C, H, W) network input, any sides.
        spacing: In-plane pixel size (row, column) of the volume, mm.
        plan: A spacing-protocol plan.
        pad_value: Value that pads windows reaching past the image (the intensity floor).
        batch_size: Slices resampled together, and windows per forward pass.
        device: Where to run; default the model's device.
        tta: Average the probabilities over the four mirrorings.
        return_probabilities: Also return (classes, Z, H, W) float16 probabilities.
        amp_dtype: Autocast type, or None for full precision.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    depth, _, height, width = volume.shape
    size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
    labels = torch.empty((depth, height, width), dtype=torch.uint8)
    probabilities = None

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        return predict_slices(model, windows, tta=tta, amp_dtype=amp_dtype)

    for start in range(0, depth, batch_size):
        chunk = volume[start : start + batch_size].to(device, torch.float32)
        resampled = resample_image(chunk, size)
        probs = sliding_window_inference(
            resampled,
            plan.patch_size,
            batch_size,
            predictor,
            overlap=plan.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=float(pad_value),
        )
        probs = torch.as_tensor(probs).float()
        back = resample_image(probs, (height, width))
        labels[start : start + len(chunk)] = back.argmax(dim=1).to(torch.uint8).cpu()
        if return_probabilities:
            if probabilities is None:
                probabilities = np.empty((back.shape[1], depth, height, width), dtype=np.float16)
            probabilities[:, start : start + len(chunk)] = back.transpose(0, 1).to(torch.float16).cpu().numpy()
    if return_probabilities:
        return labels.numpy(), probabilities
    return labels.numpy()


def predict_with_plan(
    model: torch.nn.Module,
    volume: np.ndarray,
    plan: Plan,
    *,
    spacing: Sequence[float] | None = None,
    stats: ImageStats | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    tta: bool = False,
    resampler: str = "torch",
    return_probabilities: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a canonical volume of stored values in [0, 1] as the plan says.

    Args:
        model: Segmentation model in eval mode, with ``plan.in_channels`` input channels.
        volume: (Z, H, W) stored values (the plan's intensity stage 1 applied, as prepared data hold them).
        plan: The model's plan.
        spacing: In-plane pixel size (row, column) in mm; needed by the spacing protocol.
        stats: The whole image's statistics for ``zscore_per_image`` (default: computed from ``volume``).
        batch_size: Slices (paper protocol) or windows (spacing protocol) per forward pass.
        device: Where to run; default the model's device.
        tta: Average over mirrorings.
        resampler: Paper protocol only: ``torch`` or ``scipy`` (see ``predict_volume``).
        return_probabilities: Also return (classes, Z, H, W) float16 probabilities on the volume's grid.
        amp_dtype: Autocast type, or None.

    Returns:
        uint8 labels (Z, H, W), and the probabilities when asked.

    Raises:
        InputError: The volume has fewer slices than the model reads at once, or the spacing protocol lacks the
            volume's spacing.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {volume.shape}.")
    if plan.context_slices and volume.shape[0] < plan.in_channels:
        raise InputError(
            f"the model reads {plan.in_channels} neighboring slices at once ({plan.context_slices} "
            f"context slices on each side) but the image has {volume.shape[0]}; give a volume with at "
            f"least {plan.in_channels} slices."
        )
    options = {
        "batch_size": batch_size,
        "device": device,
        "tta": tta,
        "return_probabilities": return_probabilities,
        "amp_dtype": amp_dtype,
    }
    if plan.protocol == "paper" and plan.intensity.scaling == "symmetric" and plan.context_slices == 0:
        # The paper's own path, unchanged: zoom in [0, 1], then (x - 0.5) / 0.5 inside predict_volume.
        return predict_volume(model, volume, img_size=plan.patch_size, resampler=resampler, **options)
    stats = stats or (ImageStats.of(volume) if plan.intensity.per_image else None)
    scaled = stack_context(torch.from_numpy(plan.intensity.apply_stored(volume, stats)), plan.context_slices)
    if plan.protocol == "paper":
        return predict_volume(model, scaled, img_size=plan.patch_size, resampler=resampler, normalize=False, **options)
    if spacing is None:
        raise InputError(
            "the model works at a fixed pixel spacing (spacing protocol) but the image's spacing is "
            "unknown; give an image whose header records its voxel size."
        )
    return predict_at_spacing(model, scaled, spacing, plan, pad_value=plan.intensity.floor(stats), **options)
