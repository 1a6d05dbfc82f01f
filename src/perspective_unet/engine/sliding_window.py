"""The spacing protocol's prediction of a volume, and the 2.5D context both protocols stack.

Per batch of slices: resample to the plan's in-plane spacing (antialiased where the slice shrinks,
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
from perspective_unet.engine.inference import model_device, predict_slices
from perspective_unet.engine.inference_settings import InferenceSettings
from perspective_unet.plan import Plan

__all__ = ["predict_at_spacing", "stack_context"]


def stack_context(volume: np.ndarray | torch.Tensor, context: int) -> torch.Tensor:
    """(Z, H, W) -> (Z, 2 * context + 1, H, W): each slice between its neighbors, the end slices repeated.

    A (Z, C, H, W) volume of C input channels gives (Z, C * (2 * context + 1), H, W), channel-major (channel 0's
    planes from below to above, then channel 1's, ...), the order training stacks them in.

    Example:
        >>> stack_context(torch.arange(3.0)[:, None, None], 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0]]
    """
    volume = torch.as_tensor(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"expected a (Z, H, W) or (Z, C, H, W) volume, got shape {tuple(volume.shape)}.")
    if context == 0:
        return volume[:, None] if volume.ndim == 3 else volume
    depth = volume.shape[0]
    offsets = torch.arange(-context, context + 1)
    indices = (torch.arange(depth)[:, None] + offsets[None]).clamp_(0, depth - 1)
    stacked = volume[indices]  # (Z, planes, H, W) or (Z, planes, C, H, W)
    return stacked if volume.ndim == 3 else stacked.transpose(1, 2).flatten(1, 2)


@torch.inference_mode()
def predict_at_spacing(
    model: torch.nn.Module,
    volume: torch.Tensor,
    spacing: Sequence[float],
    plan: Plan,
    settings: InferenceSettings | None = None,
    *,
    pad_value: float | Sequence[float],
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a (Z, C, H, W) volume in network-input units with the spacing protocol (see the module docstring).

    Args:
        model: Segmentation model in eval mode, on the device to run on.
        volume: (Z, C, H, W) network input, any sides.
        spacing: In-plane pixel size (row, column) of the volume, mm.
        plan: A spacing-protocol plan: its spacing, patch size (the window) and overlap.
        settings: ``patch_size`` and ``overlap`` where they replace the plan's, ``batch_size`` (slices resampled
            together, and windows per forward pass), ``tta`` (average over the four mirrorings) and ``amp_dtype``;
            default settings when None.
        pad_value: Value that pads windows reaching past the image (the intensity floor), or one per input channel.
        return_probabilities: Also return (classes, Z, H, W) float16 probabilities.
    """
    settings = settings or InferenceSettings()
    plan, batch_size = settings.plan_for(plan), settings.batch_size
    device = model_device(model)
    depth, _, height, width = volume.shape
    size = resampled_shape((height, width), spacing, plan.spacing)  # type: ignore[arg-type]
    labels = torch.empty((depth, height, width), dtype=torch.uint8)
    probabilities = None
    # MONAI pads with one value: inputs of several channels, each with its own floor, are shifted so that every floor
    # is 0, padded with 0, and shifted back in each window.
    shift = None if isinstance(pad_value, (int, float)) else torch.tensor(pad_value, device=device).view(1, -1, 1, 1)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        return predict_slices(model, windows if shift is None else windows + shift, settings)

    for start in range(0, depth, batch_size):
        chunk = volume[start : start + batch_size].to(device, torch.float32)
        resampled = resample_image(chunk, size)
        probs = sliding_window_inference(
            resampled if shift is None else resampled - shift,
            plan.patch_size,
            batch_size,
            predictor,
            overlap=plan.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0 if shift is not None else float(pad_value),  # type: ignore[arg-type]
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
