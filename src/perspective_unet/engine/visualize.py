"""Compatibility module: the figures moved to :mod:`perspective_unet.viz`; this re-exports its public names.

Kept so that ``from perspective_unet.engine.visualize import overlay_panel, save_overlay_grid`` (engine.train,
engine.demo) keeps working until those imports move to :mod:`perspective_unet.viz`.
"""

from __future__ import annotations

from perspective_unet.viz import (
    CLASS_COLORS,
    FEATURE_LAYERS,
    REDUCTIONS,
    choose_slices,
    colorize,
    feature_figure_from_files,
    feature_maps,
    feature_titles,
    overlay,
    overlay_from_files,
    overlay_grid_size,
    overlay_panel,
    read_canonical,
    save_feature_figure,
    save_overlay_grid,
)

__all__ = [
    "CLASS_COLORS",
    "FEATURE_LAYERS",
    "REDUCTIONS",
    "choose_slices",
    "colorize",
    "feature_figure_from_files",
    "feature_maps",
    "feature_titles",
    "overlay",
    "overlay_from_files",
    "overlay_grid_size",
    "overlay_panel",
    "read_canonical",
    "save_feature_figure",
    "save_overlay_grid",
]
