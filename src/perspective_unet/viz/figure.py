"""A matplotlib figure laid out in pixels, and the layout constants of the figures drawn with it.

Figures are drawn with matplotlib's Agg backend (no display needed) at ``DPI`` dots per inch, so a figure of
``width`` x ``height`` pixels is exactly that size on disk, and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DPI",
    "GAP_PX",
    "HEADER_PX",
    "LEFT_PX",
    "LEGEND_ENTRY_PX",
    "LEGEND_PATCH_PX",
    "LEGEND_ROW_PX",
    "PixelFigure",
    "panel_shape",
    "resize_nearest",
]

# Layout of figures, in pixels (figures are drawn at 100 dpi, so 1 inch = 100 px).
DPI = 100
HEADER_PX = 30
LEFT_PX = 80
GAP_PX = 4
LEGEND_ROW_PX = 26
LEGEND_ENTRY_PX = 170
LEGEND_PATCH_PX = 16


def resize_nearest(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """A picture (H, W, ...) resampled to ``height`` x ``width`` by nearest neighbor (pixel centers)."""
    rows = np.minimum(((np.arange(height) + 0.5) * picture.shape[0] / height).astype(np.int64), picture.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * picture.shape[1] / width).astype(np.int64), picture.shape[1] - 1)
    return picture[rows][:, cols]


def panel_shape(image_shape: Sequence[int], panel_size: int) -> tuple[int, int]:
    """(height, width) in pixels of a panel ``panel_size`` high that keeps the image's aspect ratio."""
    height, width = int(image_shape[-2]), int(image_shape[-1])
    return int(panel_size), max(1, round(panel_size * width / height))


class PixelFigure:
    """A matplotlib figure laid out in pixels from the top-left corner.

    Example:
        >>> figure = PixelFigure(200, 100)
        >>> figure.picture(np.zeros((50, 50, 3), dtype=np.uint8), x=10, y=30)
        >>> figure.save("figure.png")  # doctest: +SKIP
    """

    def __init__(self, width: int, height: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.width, self.height = int(width), int(height)
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.figure)

    def picture(self, rgb: np.ndarray, x: int, y: int) -> None:
        """Show an (h, w, 3) picture pixel for pixel with its top-left corner at (x, y)."""
        height, width = rgb.shape[:2]
        box = (x / self.width, 1 - (y + height) / self.height, width / self.width, height / self.height)
        axes = self.figure.add_axes(box)
        axes.imshow(rgb, interpolation="nearest", aspect="auto", resample=False)
        axes.set_axis_off()

    def text(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        """Text anchored at (x, y); ``kwargs`` go to ``Figure.text`` (alignment, font size)."""
        self.figure.text(x / self.width, 1 - y / self.height, text, **kwargs)

    def patch(self, x: int, y: int, size: int, color: np.ndarray) -> None:
        """A ``size`` x ``size`` square of an RGB color (0..255) with its top-left corner at (x, y)."""
        from matplotlib.patches import Rectangle

        box = Rectangle(
            (x / self.width, 1 - (y + size) / self.height),
            size / self.width,
            size / self.height,
            transform=self.figure.transFigure,
            facecolor=np.asarray(color) / 255.0,
            edgecolor="none",
            antialiased=False,  # the legend shows each class in its exact color, which tests look for
        )
        self.figure.add_artist(box)

    def save(self, output: str | os.PathLike[str]) -> Path:
        """Write the figure (format from the suffix) atomically, so no reader sees half a file; returns its path."""
        from perspective_unet.data.io import atomic_write_path

        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_write_path(path)
        try:
            self.figure.savefig(tmp, dpi=DPI, facecolor="white")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
