"""Per-class box plots of Dice scores, one box per configuration: an experiment report's figure."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.outputs import atomic_write

__all__ = ["class_box_plot", "class_box_plot_png"]


def class_box_plot(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    ylabel: str = "Dice",
) -> Path:
    """Draw ``scores[class][configuration]`` (values of runs and cases) as grouped boxes and write a PNG atomically.

    Each class gets a group of boxes, one per configuration in the order of the first class's mapping, with every
    value drawn as a point over its box (experiments often have few runs, where a box alone hides how few).
    """
    from matplotlib import pyplot as plt

    figure = _draw(scores, title, ylabel, (-0.02, 1.02), None)
    try:
        return atomic_write(path, lambda target: figure.savefig(target, format="png"))
    finally:
        plt.close(figure)


def class_box_plot_png(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    title: str = "",
    ylabel: str = "Dice",
    ylim: tuple[float, float] | None = (-0.02, 1.02),
    size: tuple[float, float] | None = None,
) -> bytes:
    """:func:`class_box_plot`'s figure as PNG bytes; ``ylim`` None lets the axis fit the values (distances), ``size``
    (inches at 100 dpi) replaces the default that grows with the boxes."""
    from matplotlib import pyplot as plt

    figure = _draw(scores, title, ylabel, ylim, size)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _draw(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None,
    size: tuple[float, float] | None,
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = list(scores)
    configurations = list(next(iter(scores.values()), {}))
    count = max(1, len(configurations))
    width = 0.8 / count
    figsize = size or (max(6.0, 1.1 * len(classes) * count / 2 + 2), 4.2)
    figure, axes = plt.subplots(figsize=figsize, dpi=100)
    colors = plt.get_cmap("tab10").colors
    rng = np.random.default_rng(0)  # the points' horizontal jitter only
    for j, configuration in enumerate(configurations):
        positions = [i + (j - (count - 1) / 2) * width for i in range(len(classes))]
        data = [
            np.asarray([v for v in scores[c].get(configuration, []) if np.isfinite(v)], dtype=float) for c in classes
        ]
        drawn = [(p, d) for p, d in zip(positions, data) if d.size]
        if drawn:
            boxes = axes.boxplot(
                [d for _, d in drawn],
                positions=[p for p, _ in drawn],
                widths=width * 0.8,
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for box in boxes["boxes"]:
                box.set(facecolor=colors[j % len(colors)], alpha=0.35)
            for p, d in drawn:
                axes.scatter(
                    p + rng.uniform(-width / 6, width / 6, d.size), d, s=9, color=colors[j % len(colors)], zorder=3
                )
        if configuration:  # an unnamed single configuration (one evaluation's cases) needs no legend
            axes.plot([], [], color=colors[j % len(colors)], linewidth=6, alpha=0.5, label=configuration)
    axes.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(axis="y", alpha=0.3)
    if any(configurations):
        axes.legend(loc="lower left", fontsize=8, frameon=False)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure
