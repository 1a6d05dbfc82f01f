"""Heat maps of intermediate features over the image: one row of panels, the gray slice and each map blended over it.

:func:`save_feature_figure` draws maps already computed; the maps of a model's BPRB, ENLTB or SCSI outputs and the
figure of an image file with a checkpoint come from :mod:`perspective_unet.engine.figures`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.viz.figure import GAP_PX, HEADER_PX, PixelFigure, panel_shape, resize_nearest
from perspective_unet.viz.overlay import overlay

__all__ = ["colormap", "save_feature_figure"]


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
        maps: (H, W) maps (:func:`perspective_unet.engine.figures.feature_maps`).
        output: The figure file.
        titles: One title per map (:func:`perspective_unet.engine.figures.feature_titles`).
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
    cmap_of = colormap(cmap)
    panel_h, panel_w = panel_shape(image.shape, panel_size)
    gray = overlay(image, None, value_range=value_range).astype(np.float32)
    panels = [("image", gray.astype(np.uint8))]
    for i, m in enumerate(maps):
        low, high = float(np.min(m)), float(np.max(m))
        scaled = (np.asarray(m) - low) / (high - low) if high > low else np.zeros_like(m)
        heat = cmap_of(scaled)[..., :3] * 255.0
        blended = ((1 - alpha) * gray + alpha * heat).round().clip(0, 255).astype(np.uint8)
        panels.append((titles[i] if titles and i < len(titles) else f"map {i + 1}", blended))
    width = GAP_PX + len(panels) * (panel_w + GAP_PX)
    figure = PixelFigure(width, HEADER_PX + panel_h + GAP_PX)
    for c, (title, rgb) in enumerate(panels):
        x = GAP_PX + c * (panel_w + GAP_PX)
        figure.text(x + panel_w / 2, HEADER_PX / 2, title, ha="center", va="center", fontsize=11)
        figure.picture(resize_nearest(rgb, panel_h, panel_w), x, HEADER_PX)
    return figure.save(output)


def colormap(name: str) -> Any:
    """The matplotlib colormap of that name.

    Raises:
        ValueError: No colormap has that name.
    """
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ValueError(f"--cmap {name!r} is not a matplotlib colormap; choose one such as jet, viridis or magma.")
    return matplotlib.colormaps[name]
