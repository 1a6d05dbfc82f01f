"""Pictures of segmentations and of what the network sees, like the paper's figures, drawn from arrays and files.

- :mod:`~perspective_unet.viz.palette`: fixed class colors, the legend, class names of a prepared dataset.
- :mod:`~perspective_unet.viz.overlay`: labels over images, the qualitative overlay grid, the TensorBoard panel.
- :mod:`~perspective_unet.viz.features`: heat maps over a slice in a row of panels.
- :mod:`~perspective_unet.viz.volumes`: canonical volumes for figures and the choice of slices to show.
- :mod:`~perspective_unet.viz.figure`: the pixel-exact matplotlib figure and its layout constants.
- :mod:`~perspective_unet.viz.boxplot`: the experiment report's box plots.
- :mod:`~perspective_unet.viz.report`: the self-contained HTML report (tables, box plots, slice overlays, sliders);
  :mod:`perspective_unet.engine.report` reads an evaluation folder into it.

viz never imports the engine: figures that run a model first (a checkpoint's prediction, feature maps) are in
:mod:`perspective_unet.engine.figures`.

Example:
    >>> import numpy as np
    >>> from perspective_unet.viz import save_overlay_grid
    >>> image, label = np.random.rand(4, 32, 32), np.zeros((4, 32, 32), dtype=np.uint8)
    >>> save_overlay_grid(image, "fig.png", label=label, class_names=["background"])  # doctest: +SKIP
"""

from __future__ import annotations

from perspective_unet.viz.features import save_feature_figure
from perspective_unet.viz.overlay import overlay, overlay_grid_size, overlay_panel, save_overlay_grid
from perspective_unet.viz.palette import CLASS_COLORS, colorize
from perspective_unet.viz.volumes import choose_slices, read_canonical

__all__ = [
    "CLASS_COLORS",
    "choose_slices",
    "colorize",
    "overlay",
    "overlay_grid_size",
    "overlay_panel",
    "read_canonical",
    "save_feature_figure",
    "save_overlay_grid",
]
