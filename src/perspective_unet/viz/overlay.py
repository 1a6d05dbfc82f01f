"""Labels over images: colored overlays, the qualitative overlay grid figure, and the TensorBoard panel.

``save_overlay_grid`` draws the qualitative figure like the paper's (rows = slices; columns = image, label overlay,
prediction overlay; a legend of class colors and names);
:func:`perspective_unet.engine.figures.overlay_from_files` draws it from image, label and prediction files or a
checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from perspective_unet.errors import InputError
from perspective_unet.viz.figure import (
    GAP_PX,
    HEADER_PX,
    LEFT_PX,
    LEGEND_ROW_PX,
    PixelFigure,
    panel_shape,
    resize_nearest,
)
from perspective_unet.viz.palette import colorize, draw_legend, legend_rows
from perspective_unet.viz.volumes import choose_slices

__all__ = ["overlay", "overlay_grid_size", "overlay_panel", "save_overlay_grid"]


def _to_gray(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if value_range is None:
        low, high = float(np.nanmin(image)), float(np.nanmax(image))
    else:
        low, high = float(value_range[0]), float(value_range[1])
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    labels: np.ndarray | None,
    alpha: float = 0.45,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """An (H, W) image in gray with labels blended in color; returns (H, W, 3) uint8.

    Args:
        image: Intensities; shown from ``value_range`` (black) to its upper end (white), by default the image's own
            minimum and maximum.
        labels: Class ids of the same shape, or None for the gray image alone.
        alpha: Weight of the class color where a label is non-zero.
        value_range: Intensities shown as black and white.

    Example:
        >>> overlay(np.array([[0.0, 1.0]]), np.array([[0, 1]])).tolist()
        [[[0, 0, 0], [244, 152, 174]]]
    """
    gray = np.repeat(_to_gray(image, value_range)[..., None], 3, axis=-1).astype(np.float32)
    if labels is None:
        return gray.astype(np.uint8)
    colors = colorize(labels).astype(np.float32)
    mask = (np.asarray(labels) > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * gray + alpha * colors, gray)
    return blended.round().astype(np.uint8)


def overlay_panel(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
    """Image, label overlay and prediction overlay side by side, (H, 3W, 3) uint8, for TensorBoard."""
    img = image.detach().float().cpu().numpy()
    img = img[img.shape[0] // 2] if img.ndim == 3 else img  # the middle channel is the slice itself (2.5D input)
    lab = label.detach().cpu().numpy()
    pred = prediction.detach().cpu().numpy()
    return np.concatenate([overlay(img, None), overlay(img, lab), overlay(img, pred)], axis=1)


def overlay_grid_size(
    image_shape: Sequence[int], num_rows: int, num_columns: int, num_classes: int, panel_size: int = 256
) -> tuple[int, int]:
    """(width, height) in pixels of the figure :func:`save_overlay_grid` draws.

    Panels are ``panel_size`` pixels high and ``round(panel_size * W / H)`` wide; the figure adds a left margin of
    ``LEFT_PX`` for the slice numbers, a header of ``HEADER_PX`` for the column titles, ``GAP_PX`` after every panel
    and, for ``num_classes - 1`` foreground classes, legend rows of ``LEGEND_ROW_PX`` (plus ``GAP_PX``) holding as
    many entries of ``LEGEND_ENTRY_PX`` as fit.
    """
    panel_h, panel_w = panel_shape(image_shape, panel_size)
    width = LEFT_PX + num_columns * (panel_w + GAP_PX)
    rows = legend_rows(width, num_classes)
    height = HEADER_PX + num_rows * (panel_h + GAP_PX) + rows * LEGEND_ROW_PX + (GAP_PX if rows else 0)
    return width, height


def _as_volumes(
    image: np.ndarray, label: np.ndarray | None, prediction: np.ndarray | None
) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """The image and the label and prediction as (Z, H, W) volumes of one shape (one slice gets a Z axis)."""
    image = np.asarray(image)
    volumes = {"label": label, "prediction": prediction}
    if image.ndim == 2:
        image = image[None]
        volumes = {k: (None if v is None else np.asarray(v)[None]) for k, v in volumes.items()}
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, H, W) or (H, W), got shape {image.shape}.")
    for name, volume in volumes.items():
        if volume is not None and np.shape(volume) != image.shape:
            raise InputError(f"the {name} has shape {np.shape(volume)} but the image {image.shape}; they must match.")
    return image, volumes


def save_overlay_grid(
    image: np.ndarray,
    output: str | os.PathLike[str],
    *,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    num_slices: int = 3,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
    panel_size: int = 256,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Draw the qualitative figure: one row per slice; columns image, label overlay, prediction overlay; a legend.

    Args:
        image: (Z, H, W) intensities (canonical orientation, e.g. in [0, 1]) or one (H, W) slice.
        output: The figure file (``.png``; matplotlib picks the format from the suffix).
        label: Ground-truth class ids of the image's shape, or None (no label column).
        prediction: Predicted class ids of the image's shape, or None (no prediction column).
        slices: Slice indices to show; by default :func:`choose_slices` of the label (else the prediction).
        num_slices: How many slices to choose when ``slices`` is not given.
        class_names: Names by class id (background first) for the legend; ``class N`` where missing.
        alpha: Weight of the class colors over the image.
        panel_size: Height of each panel in pixels (see :func:`overlay_grid_size` for the whole figure's size).
        value_range: Intensities shown as black and white; default the volume's minimum and maximum.

    Returns:
        The figure's path.

    Example:
        >>> image = np.random.rand(10, 64, 64).astype("float32")
        >>> label = np.zeros((10, 64, 64), dtype=np.uint8); label[4, 20:40, 20:40] = 1
        >>> save_overlay_grid(image, "figure.png", label=label, class_names=["bg", "liver"])  # doctest: +SKIP
        PosixPath('figure.png')
    """
    image, volumes = _as_volumes(image, label, prediction)
    label, prediction = volumes["label"], volumes["prediction"]
    if slices is None:
        slices = choose_slices(label if label is not None else prediction, num_slices, depth=image.shape[0])
    slices = [int(z) for z in slices]
    bad = [z for z in slices if not 0 <= z < image.shape[0]]
    if bad or not slices:
        raise InputError(f"slice(s) {bad or slices} outside 0..{image.shape[0] - 1} of the image; choose others.")
    if value_range is None:
        shown = image[slices].astype(np.float32)
        value_range = (float(shown.min()), float(shown.max()))

    columns = [("image", None)] + [(name, v) for name, v in volumes.items() if v is not None]
    largest = max([int(np.max(v[slices])) for _, v in columns[1:]] + [0])
    num_classes = max(len(class_names or ()), largest + 1)
    width, height = overlay_grid_size(image.shape, len(slices), len(columns), num_classes, panel_size)
    panel_h, panel_w = panel_shape(image.shape, panel_size)
    figure = PixelFigure(width, height)
    for c, (name, _) in enumerate(columns):
        figure.text(
            LEFT_PX + c * (panel_w + GAP_PX) + panel_w / 2, HEADER_PX / 2, name, ha="center", va="center", fontsize=12
        )
    for r, z in enumerate(slices):
        y = HEADER_PX + r * (panel_h + GAP_PX)
        figure.text(LEFT_PX - 8, y + panel_h / 2, f"slice {z}", ha="right", va="center", fontsize=10)
        for c, (_, volume) in enumerate(columns):
            rgb = overlay(image[z], None if volume is None else volume[z], alpha, value_range)
            figure.picture(resize_nearest(rgb, panel_h, panel_w), LEFT_PX + c * (panel_w + GAP_PX), y)
    draw_legend(figure, num_classes, class_names, HEADER_PX + len(slices) * (panel_h + GAP_PX))
    return figure.save(output)
