"""Heat maps of intermediate features over the image: the bi-path CNN stages (BPRB), the non-local transformer
stages (ENLTB) or the cross-scale integrator's outputs (SCSI) of a Perspective+ Unet.

``feature_maps`` captures and reduces the activations; ``save_feature_figure`` draws them in a row of panels;
``feature_figure_from_files`` does both for a slice of an image file with a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from perspective_unet.data.resample import resampled_shape
from perspective_unet.engine.inference import zoom_slices
from perspective_unet.engine.sliding_window import stack_context
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats
from perspective_unet.viz.figure import GAP_PX, HEADER_PX, PixelFigure, panel_shape, resize_nearest
from perspective_unet.viz.overlay import overlay
from perspective_unet.viz.volumes import read_figure_image

__all__ = [
    "FEATURE_LAYERS",
    "REDUCTIONS",
    "feature_figure_from_files",
    "feature_maps",
    "feature_titles",
    "save_feature_figure",
]

FEATURE_LAYERS = ("bprb", "enltb", "scsi")
REDUCTIONS = ("mean_abs", "l2")
_LAYER_TITLES = {"bprb": "BPRB", "enltb": "ENLTB", "scsi": "SCSI"}


def _feature_modules(model: torch.nn.Module, layer: str) -> list[torch.nn.Module]:
    """The modules whose outputs a layer's heat maps show (the integrator gives one output per scale)."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"layer must be one of {FEATURE_LAYERS}, got {layer!r}.")
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "cnn"):
        raise ValueError(f"feature maps need a Perspective+ Unet (model.encoder.cnn/...), got {type(model).__name__}.")
    if layer == "bprb":
        return list(encoder.cnn.stages)
    if layer == "enltb":
        if encoder.transformer is None:
            other = " or scsi." if encoder.integrator is not None else "."
            raise ValueError(
                "this model was built without ENLTB (use_enltb=False, an ablation): it has no ENLTB "
                f"features; choose the layer bprb{other}"
            )
        return list(encoder.transformer.stages)
    if encoder.integrator is None:
        other = " or enltb." if encoder.transformer is not None else "."
        raise ValueError(
            "this model was built without SCSI (use_scsi=False, an ablation): it has no SCSI features; "
            f"choose the layer bprb{other}"
        )
    return [encoder.integrator]


def feature_titles(model: torch.nn.Module, layer: str) -> list[str]:
    """Panel titles of :func:`feature_maps`'s outputs, e.g. ``"BPRB 1 (1/1)"`` ... ``"SCSI 3 (1/16)"``.

    Example:
        >>> import perspective_unet
        >>> feature_titles(perspective_unet.create_model("perspective_unet_tiny"), "enltb")
        ['ENLTB 1 (1/4)', 'ENLTB 2 (1/8)', 'ENLTB 3 (1/16)']
    """
    _feature_modules(model, layer)
    strides = list(model.encoder.strides)
    strides = strides if layer == "bprb" else strides[-3:]
    return [f"{_LAYER_TITLES[layer]} {i + 1} (1/{s})" for i, s in enumerate(strides)]


def _model_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    return max(divisor, -(-height // divisor) * divisor), max(divisor, -(-width // divisor) * divisor)


@torch.inference_mode()
def feature_maps(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    layer: str,
    *,
    img_size: Sequence[int] | None = None,
    reduction: str = "mean_abs",
    normalize: bool = True,
) -> list[np.ndarray]:
    """Activation strength of an intermediate layer, one (H, W) map per stage or scale, on the image's grid.

    The slice is resampled to the model's size (cubic spline, as for prediction), run through the model with forward
    hooks on the layer's modules, and each captured (B, C, h, w) output is reduced over channels (mean of absolute
    values, or the L2 norm) and upsampled bilinearly back to the image's (H, W).

    Args:
        model: A Perspective+ Unet.
        image: One (H, W) slice with intensities in [0, 1] (the prepared-data convention), or a (C, H, W) network
            input (with ``normalize=False``).
        layer: ``bprb`` (the bi-path CNN stages, ``model.encoder.cnn.stages``), ``enltb``
            (``model.encoder.transformer.stages``) or ``scsi`` (the outputs of ``model.encoder.integrator``).
        img_size: The model's input size (the training size); default the image's size rounded up to a valid one.
        reduction: ``mean_abs`` or ``l2``.
        normalize: Map [0, 1] intensities to [-1, 1] as the training data are.

    Returns:
        float32 maps of the image's shape, finest stage first (not rescaled; see :func:`save_feature_figure`).

    Raises:
        ValueError: an unknown layer, or a part the model was built without (ablations).

    Example:
        >>> import perspective_unet
        >>> model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3)
        >>> [m.shape for m in feature_maps(model, np.random.rand(40, 50), "scsi", img_size=(32, 32))]
        [(40, 50), (40, 50), (40, 50)]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    modules = _feature_modules(model, layer)
    picture = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not torch.is_tensor(image) else image.float()
    if picture.ndim == 2:
        picture = picture[None]
    if picture.ndim != 3:
        raise ValueError(f"feature_maps takes one (H, W) slice or (C, H, W) input, got shape {tuple(picture.shape)}.")
    height, width = picture.shape[-2:]
    divisor = int(getattr(model, "size_divisor", 16))
    size = tuple(int(s) for s in img_size) if img_size is not None else _model_size(height, width, divisor)
    device = next(model.parameters()).device
    x = zoom_slices(picture[None].to(device), size)
    if normalize:
        x = (x - 0.5) / 0.5
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.extend(output if isinstance(output, (list, tuple)) else [output])

    handles = [module.register_forward_hook(hook) for module in modules]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [_strength(feature, reduction, (height, width)) for feature in captured]


def _strength(feature: torch.Tensor, reduction: str, size: tuple[int, int]) -> np.ndarray:
    """A (1, C, h, w) activation reduced over channels and upsampled bilinearly to an (H, W) float32 map."""
    feature = feature.float()
    strength = feature.norm(dim=1, keepdim=True) if reduction == "l2" else feature.abs().mean(dim=1, keepdim=True)
    strength = F.interpolate(strength, size=size, mode="bilinear", align_corners=False)
    return strength[0, 0].cpu().numpy().astype(np.float32)


def save_feature_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    output: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_size: int = 256,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """One row of panels: the gray image, then each heat map blended over it (each scaled to its own min..max).

    The figure is ``GAP_PX + (1 + len(maps)) * (panel_w + GAP_PX)`` pixels wide and ``HEADER_PX + panel_size + GAP_PX``
    high, with ``panel_w = round(panel_size * W / H)``.

    Args:
        image: The (H, W) slice.
        maps: (H, W) maps from :func:`feature_maps`.
        output: The figure file.
        titles: One title per map (:func:`feature_titles`).
        cmap: A matplotlib colormap name.
        alpha: Weight of the heat map over the image.
        panel_size: Panel height in pixels.
        value_range: Intensities shown as black and white; default the slice's minimum and maximum.

    Example:
        >>> maps = feature_maps(model, slice_in_unit_range, "bprb")  # doctest: +SKIP
        >>> save_feature_figure(slice_in_unit_range, maps, "bprb.png", titles=feature_titles(model, "bprb"))
        ... # doctest: +SKIP
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"save_feature_figure takes one (H, W) slice, got shape {image.shape}.")
    for m in maps:
        if np.shape(m) != image.shape:
            raise ValueError(f"every map must have the image's shape {image.shape}, got {np.shape(m)}.")
    colormap = _colormap(cmap)
    panel_h, panel_w = panel_shape(image.shape, panel_size)
    gray = overlay(image, None, value_range=value_range).astype(np.float32)
    panels = [("image", gray.astype(np.uint8))]
    for i, m in enumerate(maps):
        low, high = float(np.min(m)), float(np.max(m))
        scaled = (np.asarray(m) - low) / (high - low) if high > low else np.zeros_like(m)
        heat = colormap(scaled)[..., :3] * 255.0
        blended = ((1 - alpha) * gray + alpha * heat).round().clip(0, 255).astype(np.uint8)
        panels.append((titles[i] if titles and i < len(titles) else f"map {i + 1}", blended))
    width = GAP_PX + len(panels) * (panel_w + GAP_PX)
    figure = PixelFigure(width, HEADER_PX + panel_h + GAP_PX)
    for c, (title, rgb) in enumerate(panels):
        x = GAP_PX + c * (panel_w + GAP_PX)
        figure.text(x + panel_w / 2, HEADER_PX / 2, title, ha="center", va="center", fontsize=11)
        figure.picture(resize_nearest(rgb, panel_h, panel_w), x, HEADER_PX)
    return figure.save(output)


def _colormap(name: str) -> Any:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ValueError(f"--cmap {name!r} is not a matplotlib colormap; choose one such as jet, viridis or magma.")
    return matplotlib.colormaps[name]


def feature_figure_from_files(
    checkpoint: str | os.PathLike[str],
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    layer: str = "bprb",
    slice_index: int | None = None,
    reduction: str = "mean_abs",
    window: Sequence[float] | None = None,
    mr_normalize: bool = False,
    orientation: str | None = None,
    device: str = "auto",
    cmap: str = "jet",
    panel_size: int = 256,
) -> Path:
    """The feature figure of one slice of an image file, with a checkpoint.

    Args:
        checkpoint: A ``.pt`` written by ``train`` or ``convert-official``.
        image: A NIfTI/DICOM/picture file (normalized as the checkpoint's training data) or a prepared ``*.npy.h5``.
        output: The figure file.
        layer: ``bprb``, ``enltb`` or ``scsi``.
        slice_index: Canonical slice index; default the middle slice.
        reduction: ``mean_abs`` or ``l2``.
        window: CT window overriding the checkpoint's normalization.
        mr_normalize: Per-volume MR normalization instead.
        orientation: Canonical orientation overriding the checkpoint's.
        device: Where the model runs.
        cmap: A matplotlib colormap name.
        panel_size: Panel height in pixels.

    Example:
        >>> feature_figure_from_files("best.pt", "ct.nii.gz", "enltb.png", layer="enltb", slice_index=60)
        ... # doctest: +SKIP
    """
    from perspective_unet.engine.predictor import Predictor

    _colormap(cmap)  # a misspelled colormap fails before the model is loaded
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, window=window, mr_normalize=mr_normalize, orientation=orientation
    )
    _feature_modules(predictor.model, layer)  # fail on ablated parts before reading the image
    volume, _, spacing = read_figure_image(
        Path(image), predictor, predictor.orientation, window, mr_normalize, with_label=False
    )
    index = volume.shape[0] // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < volume.shape[0]:
        raise InputError(f"slice {index} is outside 0..{volume.shape[0] - 1} of {image}; choose another --slice.")
    plan = predictor.plan
    stats = ImageStats.of(volume) if plan.intensity.per_image else None
    network_input = stack_context(torch.from_numpy(plan.intensity.apply_stored(volume, stats)), plan.context_slices)
    size = plan.patch_size
    if plan.protocol == "spacing" and spacing is not None:
        # The slice at the plan's pixel size, rounded up to sides the network takes.
        divisor = int(getattr(predictor.model, "size_divisor", 16))
        size = tuple(-(-s // divisor) * divisor for s in resampled_shape(volume.shape[1:], spacing, plan.spacing))
    maps = feature_maps(
        predictor.model, network_input[index], layer, img_size=size, reduction=reduction, normalize=False
    )
    return save_feature_figure(
        volume[index],
        maps,
        output,
        titles=feature_titles(predictor.model, layer),
        cmap=cmap,
        panel_size=panel_size,
        value_range=(0.0, 1.0),
    )
