"""Pictures of segmentations and of what the network sees, like the paper's figures.

- :mod:`~perspective_unet.viz.palette`: fixed class colors, the legend, class names of a prepared dataset.
- :mod:`~perspective_unet.viz.overlay`: labels over images, the qualitative overlay grid, the TensorBoard panel.
- :mod:`~perspective_unet.viz.features`: heat maps of the BPRB, ENLTB and SCSI outputs over a slice.
- :mod:`~perspective_unet.viz.volumes`: canonical volumes for figures and the choice of slices to show.
- :mod:`~perspective_unet.viz.figure`: the pixel-exact matplotlib figure and its layout constants.

Example:
    >>> from perspective_unet.viz import overlay_from_files
    >>> overlay_from_files("prepared/test_vol_h5/case0001.npy.h5", "fig.png")  # doctest: +SKIP
"""

from __future__ import annotations

from perspective_unet.viz.features import (
    FEATURE_LAYERS,
    REDUCTIONS,
    feature_figure_from_files,
    feature_maps,
    feature_titles,
    save_feature_figure,
)
from perspective_unet.viz.overlay import (
    overlay,
    overlay_from_files,
    overlay_grid_size,
    overlay_panel,
    save_overlay_grid,
)
from perspective_unet.viz.palette import CLASS_COLORS, colorize
from perspective_unet.viz.volumes import choose_slices, read_canonical

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
