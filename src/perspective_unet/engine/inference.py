"""Slice-wise prediction of whole volumes: resample each slice to the model's size, predict in batches, bring the
labels back to the volume's own grid.

The protocol of this line of work zooms every slice to the training size with a cubic spline, takes the argmax
and zooms the labels back with nearest-neighbor sampling (corner-aligned, as ``scipy.ndimage.zoom`` does).
``resampler="scipy"`` does exactly that on the CPU, one slice at a time; ``resampler="torch"`` does the same
steps in batches on the model's device. Both steps are linear and separable, so the spline zoom of a slice ``X`` is
``R @ X @ C.T`` with two fixed matrices (:func:`~perspective_unet.runtime.kernels.spline_zoom_matrix`, shared with
the light ONNX runtime, which zooms with the same matrices in NumPy): the torch path gives scipy's resampled
slices to float32 rounding (about 1e-6) and therefore the same labels. One difference is deliberate: for some
sizes (e.g. 32 -> 61; about one target size in ten) scipy's order-0 zoom puts its last output coordinate a
rounding error beyond the last input and returns its constant 0 there, i.e. a last row or column of background;
the torch path keeps the last label. For 224 <-> 512 both agree everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from perspective_unet.errors import InputError
from perspective_unet.models.ops.precision import autocast, inference_dtype
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.kernels import corner_aligned_indices, spline_zoom_matrix

__all__ = ["model_device", "predict_slices", "predict_volume", "zoom_slices"]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's weights (the CPU for a model without any, such as an ONNX Runtime session)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def zoom_slices(slices: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Cubic-spline zoom of a batch of slices (..., H, W) to ``size``, equal to ``scipy.ndimage.zoom(order=3)``
    on every slice up to float rounding, computed as two matrix products on the slices' device and dtype."""
    height, width = slices.shape[-2:]
    target_h, target_w = int(size[0]), int(size[1])
    if (height, width) == (target_h, target_w):
        return slices
    rows = _spline_zoom_matrix_on(height, target_h, slices.device, slices.dtype)
    cols = _spline_zoom_matrix_on(width, target_w, slices.device, slices.dtype)
    return rows @ slices @ cols.T


@functools.lru_cache(maxsize=32)
def _spline_zoom_matrix_on(source: int, target: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Kept on the device: a volume's batches reuse the matrices instead of copying them there for every batch. Made
    # outside inference mode, so a cached matrix is a normal tensor wherever it is used later.
    with torch.inference_mode(False):
        return torch.from_numpy(spline_zoom_matrix(source, target).copy()).to(device, dtype)


def _flip_variants(tta: bool) -> list[tuple[int, ...]]:
    return [(), (-1,), (-2,), (-2, -1)] if tta else [()]


def predict_slices(
    model: torch.nn.Module, images: torch.Tensor, settings: InferenceSettings | None = None
) -> torch.Tensor:
    """Softmax probabilities of a batch of model-sized, normalized slices (B, C_in, H, W) -> (B, classes, H, W).

    With ``settings.tta`` the probabilities are averaged over the four horizontal/vertical flips; the forward passes
    run under autocast to ``settings.amp_dtype`` when set, else as ``settings.precision`` says. A model whose outputs
    depend on its batch (``batch_dependent``, SCSI attention as released) sees one slice at a time.
    """
    settings = settings or InferenceSettings()
    amp_dtype = settings.amp_dtype or inference_dtype(settings.precision, images.device)
    total = None
    variants = _flip_variants(settings.tta)
    one_at_a_time = bool(getattr(model, "batch_dependent", False))
    for dims in variants:
        x = images.flip(dims) if dims else images
        with autocast(images.device, amp_dtype):
            logits = torch.cat([model(s) for s in x.split(1)]) if one_at_a_time else model(x)
        if not torch.isfinite(logits).all():
            # An all-background map would otherwise be written as if it were a result.
            if not torch.isfinite(x).all():
                raise InputError(
                    "the network input holds NaN or infinite values (the image's intensities, after normalization); "
                    "clean or mask the image (nothing more was written)."
                )
            raise InputError(
                "the model produced NaN or infinite outputs from a finite input; its weights are damaged "
                "(nothing more was written)."
            )
        probs = torch.softmax(logits.float(), dim=1)
        probs = probs.flip(dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(variants)


@torch.inference_mode()
def predict_volume(
    model: torch.nn.Module,
    volume: np.ndarray | torch.Tensor,
    img_size: Sequence[int] = (224, 224),
    settings: InferenceSettings | None = None,
    *,
    normalize: bool = True,
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a volume slice by slice.

    Args:
        model: A segmentation model in eval mode taking (B, C, H, W) and returning logits.
        volume: (Z, H, W) intensities in [0, 1] (the prepared-data convention), or (Z, C, H, W) for several channels.
        img_size: The (height, width) the model was trained at; every slice is resampled to it.
        settings: ``batch_size`` (slices per forward pass; the model's outputs do not depend on the batch), ``tta``,
            ``resampler`` (``torch``: batched on the model's device; ``scipy``: TransUNet's slice-by-slice loop; both
            resample with scipy's cubic spline and give the same labels) and ``amp_dtype``; default settings when None.
        normalize: Map [0, 1] intensities to [-1, 1] ((x - 0.5) / 0.5) as the training data are.
        return_probabilities: Also return (classes, Z, H, W) float16 probabilities on the volume's grid.

    Returns:
        uint8 labels of shape (Z, H, W), and the probabilities when asked.

    Example:
        >>> import perspective_unet
        >>> model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3).eval()
        >>> predict_volume(model, np.random.rand(4, 50, 70).astype("float32"), img_size=(32, 48)).shape
        (4, 50, 70)
    """
    settings = settings or InferenceSettings()
    batch_size, resampler = settings.batch_size, settings.resampler
    array = torch.as_tensor(np.asarray(volume, dtype=np.float32)) if not torch.is_tensor(volume) else volume.float()
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(f"expected a (Z, H, W) or (Z, C, H, W) volume, got shape {tuple(array.shape)}.")
    if not torch.isfinite(array).all():
        raise InputError("the volume contains NaN or infinite intensities; clean or mask them before predicting.")
    device = model_device(model)
    depth, _, height, width = array.shape
    target_h, target_w = int(img_size[0]), int(img_size[1])
    # The scipy loop fills labels on the CPU; the torch path keeps them on the device until the end.
    labels = np.empty((depth, height, width), dtype=np.uint8) if resampler == "scipy" else None
    probabilities = None
    rows = torch.from_numpy(corner_aligned_indices(target_h, height)).to(device)
    cols = torch.from_numpy(corner_aligned_indices(target_w, width)).to(device)
    if resampler == "torch":
        # One transfer in and one out per volume: no per-batch synchronization with an accelerator.
        on_device = array.pin_memory() if device.type == "cuda" and array.device.type == "cpu" else array
        on_device = on_device.to(device, non_blocking=True)
        device_labels = torch.empty((depth, height, width), dtype=torch.uint8, device=device)
    for start in range(0, depth, batch_size):
        chunk = array[start : start + batch_size]
        if resampler == "scipy":
            factors = (1, target_h / height, target_w / width)
            resized = np.stack([scipy.ndimage.zoom(s.numpy(), factors, order=3) for s in chunk])
            x = torch.from_numpy(resized).to(device)
        else:
            x = zoom_slices(on_device[start : start + batch_size], (target_h, target_w))
        if normalize:
            x = (x - 0.5) / 0.5
        probs = predict_slices(model, x, settings)
        small_labels = probs.argmax(dim=1)
        if resampler == "scipy":
            factors = (height / target_h, width / target_w)
            back = [scipy.ndimage.zoom(s, factors, order=0) for s in small_labels.cpu().numpy().astype(np.uint8)]
            labels[start : start + len(chunk)] = np.stack(back)
        else:
            device_labels[start : start + len(chunk)] = small_labels[:, rows][:, :, cols]
        if return_probabilities:
            if probabilities is None:
                probabilities = np.empty((probs.shape[1], depth, height, width), dtype=np.float16)
            full = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=True)
            probabilities[:, start : start + len(chunk)] = full.transpose(0, 1).to(torch.float16).cpu().numpy()
    if resampler == "torch":
        labels = device_labels.cpu().numpy()
    if return_probabilities:
        return labels, probabilities
    return labels
