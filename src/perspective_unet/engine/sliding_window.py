"""The spacing protocol's prediction of a volume with PyTorch (the light runtime's NumPy counterpart is
:mod:`perspective_unet.runtime.inferers`).

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
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings

__all__ = ["predict_at_spacing"]


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
