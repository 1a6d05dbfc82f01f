"""A training run's curves in one picture (``progress.png``, redrawn after every epoch), as nnU-Net draws its own."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from perspective_unet.outputs import atomic_write

__all__ = ["DICE_PREFIX", "save_progress"]

# Per-class validation Dice columns of a run's log: DICE_PREFIX + the class name.
DICE_PREFIX = "val_dice_"


def _numbers(rows: Sequence[Mapping[str, object]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where ``key`` holds a number."""
    epochs, values = [], []
    for row in rows:
        try:
            value = float(row.get(key, "") or "nan")  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            epochs.append(float(row["epoch"]))  # type: ignore[arg-type]
            values.append(value)
    return epochs, values


def save_progress(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str]) -> Path:
    """Draw a run's log rows (one per epoch, as ``train_log.csv`` holds them) and write a PNG atomically.

    Four panels against the epoch: the training loss with its cross-entropy and Dice terms; the validation Dice of
    each class (``val_dice_<name>`` columns) and their mean; the learning rate at the epoch's end; the epoch's time.

    Args:
        rows: Mappings with ``epoch`` and any of ``train_loss``, ``train_ce``, ``train_dice_loss``, ``lr``,
            ``epoch_seconds``, ``val_mean_dice`` and ``val_dice_<name>``; values may be numbers or their text, empty
            where an epoch has none (a validation every N epochs).
        path: The picture.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    loss, dice, rate, seconds = axes.flat
    for key, label in (("train_loss", "loss"), ("train_ce", "cross-entropy"), ("train_dice_loss", "Dice loss")):
        loss.plot(*_numbers(rows, key), marker=".", label=label)
    loss.set(title="training loss", xlabel="epoch")
    loss.legend(loc="upper right")
    classes = [key for key in (rows[-1] if rows else {}) if key.startswith(DICE_PREFIX)]
    for key in classes:
        dice.plot(*_numbers(rows, key), marker=".", linewidth=1, label=key[len(DICE_PREFIX) :])
    epochs, mean = _numbers(rows, "val_mean_dice")
    if epochs:
        dice.plot(epochs, mean, color="black", linewidth=2.5, marker="o", label="mean")
        dice.legend(loc="lower right", fontsize="small", ncol=2)
    else:
        dice.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=dice.transAxes)
    dice.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    rate.plot(*_numbers(rows, "lr"), marker=".")
    rate.set(title="learning rate", xlabel="epoch")
    seconds.plot(*_numbers(rows, "epoch_seconds"), marker=".")
    seconds.set(title="epoch time (s)", xlabel="epoch")
    seconds.set_ylim(bottom=0)
    for panel in axes.flat:
        panel.grid(alpha=0.3)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    try:
        return atomic_write(path, lambda target: figure.savefig(target, format="png"))
    finally:
        plt.close(figure)
