"""Figures that need a model: the qualitative overlay with a checkpoint's prediction, and heat maps of features.

:mod:`perspective_unet.viz` draws from arrays and files; what must run a model before it draws lives here, so the
import arrow runs one way (the engine uses viz). :func:`overlay_from_files` reads, normalizes and (with a checkpoint)
predicts the slices it shows; :func:`feature_maps` captures the BPRB, ENLTB or SCSI outputs of a Perspective+ Unet
with forward hooks, and :func:`feature_figure_from_files` draws them for a slice of an image file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from perspective_unet.data.orientation import CANONICAL_ORIENTATION
from perspective_unet.data.resample import resampled_shape
from perspective_unet.engine.inference import zoom_slices
from perspective_unet.engine.predictor import Predictor
from perspective_unet.errors import InputError
from perspective_unet.intensity import resolve_intensity
from perspective_unet.runs import ModelSource
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.viz.features import colormap, save_feature_figure
from perspective_unet.viz.overlay import save_overlay_grid
from perspective_unet.viz.palette import class_names_near
from perspective_unet.viz.volumes import choose_slices, read_canonical, read_figure_image

__all__ = [
    "FEATURE_LAYERS",
    "REDUCTIONS",
    "feature_figure_from_files",
    "feature_maps",
    "feature_titles",
    "overlay_from_files",
]

# --------------------------------------------------------------------------------------------------------------------
# The overlay figure
# --------------------------------------------------------------------------------------------------------------------


def _read_image(
    image: Path, predictor: Predictor | None, settings: InferenceSettings, with_label: bool
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None, str]:
    """The figure's canonical image (normalized as the model's training data, else for display), the prepared
    volume's label, the in-plane spacing, and the orientation used."""
    if predictor is not None:
        volume, label, spacing = read_figure_image(
            image, predictor.orientation, prepare=predictor.prepare, with_label=with_label
        )
        return volume, label, spacing, predictor.orientation
    orientation = settings.orientation or CANONICAL_ORIENTATION
    chosen = resolve_intensity(None, window=settings.window, mr_normalize=settings.mr_normalize)
    volume, label, spacing = read_figure_image(image, orientation, intensity=chosen, with_label=with_label)
    return volume, label, spacing, orientation


def overlay_from_files(
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    label: str | os.PathLike[str] | None = None,
    prediction: str | os.PathLike[str] | None = None,
    checkpoint: ModelSource | Sequence[ModelSource] | None = None,
    settings: InferenceSettings | None = None,
    slices: Sequence[int] | None = None,
    num_slices: int = 3,
    class_names: Sequence[str] | None = None,
    panel_size: int = 256,
) -> Path:
    """The qualitative figure of image files: read, reorient, normalize, predict if asked, draw.

    Args:
        image: A NIfTI/DICOM/picture file (brought to the canonical orientation) or a prepared ``*.npy.h5`` volume
            (whose ``label`` dataset is used when ``label`` is not given).
        output: The figure file.
        label: A label map on the image's grid, or None.
        prediction: A predicted label map on the image's grid, or None.
        checkpoint: Predict with this model source instead of reading ``prediction`` (only the shown slices are
            predicted when a label chooses them).
        settings: ``window`` / ``mr_normalize`` (the image's normalization; default the checkpoint's), ``orientation``
            (of image files; default the checkpoint's, else ``"SPL"``), and ``device``, ``tta``, ... for the
            prediction.
        slices: Slice indices (canonical Z) to show; by default chosen by foreground.
        num_slices: How many slices to choose.
        class_names: Names by class id (background first); default the checkpoint's or the prepared dataset's.
        panel_size: Panel height in pixels.

    Example:
        >>> overlay_from_files("prepared/test_vol_h5/case0001.npy.h5", "fig.png",
        ...                    checkpoint="runs/synapse/best.pt")  # doctest: +SKIP
    """
    settings = settings or InferenceSettings()
    if prediction is not None and checkpoint is not None:
        raise ValueError("give either a prediction file or a checkpoint to predict with, not both.")
    predictor = Predictor.from_source(checkpoint, settings) if checkpoint is not None else None
    image_path = Path(image)
    # A prepared volume's own label is read with its image, unless another label file replaces it.
    volume, label_volume, spacing, orientation = _read_image(image_path, predictor, settings, label is None)
    if label is not None:
        label_volume, _ = read_canonical(label, as_label=True, orientation=orientation)
    prediction_volume = None
    if prediction is not None:
        prediction_volume, _ = read_canonical(prediction, as_label=True, orientation=orientation)
    for name, other in (("label", label_volume), ("prediction", prediction_volume)):
        if other is not None and other.shape != volume.shape:
            raise InputError(
                f"the {name} has canonical shape {other.shape} but the image {image} has {volume.shape}; "
                "give files on the same voxel grid."
            )
    if predictor is not None:
        prediction_volume, slices = _predict_shown(predictor, volume, spacing, label_volume, slices, num_slices, image)
    names = class_names or (predictor.class_names if predictor is not None else None) or class_names_near(image_path)
    return save_overlay_grid(
        volume,
        output,
        label=label_volume,
        prediction=prediction_volume,
        slices=slices,
        num_slices=num_slices,
        class_names=names,
        panel_size=panel_size,
        value_range=(0.0, 1.0),
    )


def _predict_shown(
    predictor: Predictor,
    volume: np.ndarray,
    spacing: tuple[float, ...] | None,
    label: np.ndarray | None,
    slices: Sequence[int] | None,
    num_slices: int,
    image: str | os.PathLike[str],
) -> tuple[np.ndarray, list[int] | None]:
    """The prediction of the slices the figure shows (zeros elsewhere), and those slices (None: still to choose).

    Without given slices or a label to choose them, the whole volume is predicted and the prediction chooses.
    """
    if slices is None and label is None:
        return predictor.predict_canonical(volume, spacing=spacing), None
    chosen = [int(z) for z in slices] if slices is not None else choose_slices(label, num_slices)
    bad = [z for z in chosen if not 0 <= z < volume.shape[0]]
    if bad:
        raise InputError(f"slice(s) {bad} outside 0..{volume.shape[0] - 1} of {image}; choose others.")
    if predictor.plan.context_slices:  # a 2.5D model needs each chosen slice's neighbors
        return predictor.predict_canonical(volume, spacing=spacing), chosen
    prediction = np.zeros(volume.shape, dtype=np.uint8)
    prediction[chosen] = predictor.predict_canonical(volume[chosen], spacing=spacing)
    return prediction, chosen


# --------------------------------------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------------------------------------


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


def feature_figure_from_files(
    checkpoint: ModelSource | Sequence[ModelSource],
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    layer: str = "bprb",
    slice_index: int | None = None,
    reduction: str = "mean_abs",
    cmap: str = "jet",
    panel_size: int = 256,
) -> Path:
    """The feature figure of one slice of an image file, with a checkpoint.

    Args:
        checkpoint: A checkpoint, model folder or run folder of a Perspective+ Unet.
        image: A NIfTI/DICOM/picture file (normalized as the checkpoint's training data) or a prepared ``*.npy.h5``.
        output: The figure file.
        settings: ``window`` / ``mr_normalize`` and ``orientation`` instead of the checkpoint's, ``device``.
        layer: ``bprb``, ``enltb`` or ``scsi``.
        slice_index: Canonical slice index; default the middle slice.
        reduction: ``mean_abs`` or ``l2``.
        cmap: A matplotlib colormap name.
        panel_size: Panel height in pixels.

    Example:
        >>> feature_figure_from_files("best.pt", "ct.nii.gz", "enltb.png", layer="enltb", slice_index=60)
        ... # doctest: +SKIP
    """
    colormap(cmap)  # a misspelled colormap fails before the model is loaded
    predictor = Predictor.from_source(checkpoint, settings)
    _feature_modules(predictor.model, layer)  # fail on ablated parts before reading the image
    volume, _, spacing = read_figure_image(
        Path(image), predictor.orientation, prepare=predictor.prepare, with_label=False
    )
    index = volume.shape[0] // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < volume.shape[0]:
        raise InputError(f"slice {index} is outside 0..{volume.shape[0] - 1} of {image}; choose another --slice.")
    plan = predictor.plan
    network_input = predictor.inferer.network_input(volume, None)
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
