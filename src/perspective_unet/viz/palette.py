"""Fixed class colors, the legend of class colors and names, and the class names of a prepared dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perspective_unet.outputs import read_json
from perspective_unet.viz.figure import GAP_PX, LEGEND_ENTRY_PX, LEGEND_PATCH_PX, LEGEND_ROW_PX, PixelFigure

__all__ = ["CLASS_COLORS", "class_color", "class_names_near", "colorize", "draw_legend", "legend_rows"]

# Fixed colors by class id (index 0 is background). The first eight follow the Synapse organ order of this line of
# work (aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach), so figures of different
# runs and papers read alike; later ids cycle through a qualitative palette.
CLASS_COLORS = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),  # aorta
        (60, 180, 75),  # gallbladder
        (255, 225, 25),  # left kidney
        (0, 130, 200),  # right kidney
        (245, 130, 48),  # liver
        (145, 30, 180),  # pancreas
        (70, 240, 240),  # spleen
        (240, 50, 230),  # stomach
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)

# Legend names longer than this are cut (with an ellipsis) so that an entry stays within LEGEND_ENTRY_PX.
_MAX_NAME = 20


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels to (H, W, 3) uint8 colors; ids past the palette cycle through its foreground colors.

    Example:
        >>> colorize(np.array([[0, 1, 16]])).tolist()
        [[[0, 0, 0], [230, 25, 75], [230, 25, 75]]]
    """
    labels = np.asarray(labels).astype(np.int64)
    palette = CLASS_COLORS
    return palette[np.where(labels > 0, (labels - 1) % (len(palette) - 1) + 1, 0)]


def class_color(class_id: int) -> np.ndarray:
    """The (3,) uint8 color of one class id."""
    return colorize(np.array([[class_id]]))[0, 0]


def _legend_per_row(width: int) -> int:
    return max(1, (width - GAP_PX) // LEGEND_ENTRY_PX)


def legend_rows(width: int, num_classes: int) -> int:
    """How many legend rows of ``LEGEND_ROW_PX`` the ``num_classes - 1`` foreground classes need in a figure this wide.

    Example:
        >>> legend_rows(600, 9)  # three entries of 170 px per row for eight classes
        3
    """
    return -(-max(0, num_classes - 1) // _legend_per_row(width))


def draw_legend(figure: PixelFigure, num_classes: int, class_names: Sequence[str] | None, top: int) -> None:
    """Draw one entry per foreground class (color patch, ``<id> <name>``) in rows from ``top`` down.

    Args:
        figure: The figure to draw on; its width sets how many entries fit in a row.
        num_classes: Number of classes, background included.
        class_names: Names by class id (background first); ``class N`` where missing.
        top: The legend's top edge in pixels.
    """
    per_row = _legend_per_row(figure.width)
    offset = (LEGEND_ROW_PX - LEGEND_PATCH_PX) // 2
    for k in range(1, num_classes):
        row, col = divmod(k - 1, per_row)
        x = GAP_PX + col * LEGEND_ENTRY_PX
        y = top + row * LEGEND_ROW_PX + offset
        figure.patch(x, y, LEGEND_PATCH_PX, class_color(k))
        name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
        name = name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"
        figure.text(
            x + LEGEND_PATCH_PX + 6, y + LEGEND_PATCH_PX / 2, f"{k} {name}", ha="left", va="center", fontsize=10
        )


def class_names_near(path: Path) -> list[str] | None:
    """Class names of the prepared dataset a ``<root>/<split>_vol_h5/<case>.npy.h5`` file belongs to, if known."""
    candidate = path.parent.parent / "dataset.json"
    if not path.name.lower().endswith(".h5") or not candidate.is_file():
        return None
    try:
        names = read_json(candidate, "prepare the dataset again.").get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None
