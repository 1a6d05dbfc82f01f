"""A run's logs: one row per epoch (``train_log.csv``), and as text everything logged while it runs
(``training_log.txt``).

Text records are held in memory until the run has set itself up (:meth:`TrainingLog.start`), so a run refused at its
start (bad data, a source that does not fit) writes nothing into its folder.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from perspective_unet.viz.progress import DICE_PREFIX

__all__ = ["LOG_FIELDS", "LOG_FORMAT", "TrainingLog", "append_log", "log_fields", "read_log"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PACKAGE = "perspective_unet"

LOG_FIELDS = (
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "train_ce",
    "train_dice_loss",
    "val_mean_dice",
    "val_mean_hd95",
    "epoch_seconds",
)


def log_fields(class_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The columns of a run's ``train_log.csv``: :data:`LOG_FIELDS`, then each foreground class's validation Dice."""
    return (*LOG_FIELDS, *(f"{DICE_PREFIX}{name}" for name in class_names[1:]))


def append_log(path: Path, row: dict[str, Any], fields: tuple[str, ...] = LOG_FIELDS) -> None:
    """Add one epoch's row; a log begun by an earlier version keeps its own columns."""
    header = fields
    if path.exists():
        with path.open(newline="") as handle:
            header = tuple(next(csv.reader(handle), fields))
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        if handle.tell() == 0:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in header})


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``train_log.csv`` (none when it does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class _Buffer(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class TrainingLog:
    """Copy every record of INFO and above (this package's and other libraries') into a file while a block runs.

    Args:
        path: The log file.
        append: Add to the file (a resumed run); otherwise it is started anew.

    Example:
        >>> with TrainingLog("runs/x/training_log.txt") as text_log:  # doctest: +SKIP
        ...     setup()  # held in memory
        ...     text_log.start()  # written, and everything after it
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self._handler: logging.Handler = _Buffer()
        self._level: int | None = None

    def __enter__(self) -> TrainingLog:
        package = logging.getLogger(_PACKAGE)
        if package.getEffectiveLevel() > logging.INFO:
            # The package's INFO records must be made to reach the file; the level is restored on exit.
            self._level = package.level
            package.setLevel(logging.INFO)
        logging.getLogger().addHandler(self._handler)
        return self

    def start(self) -> None:
        """Open the file, write what was held back, and write every record from now on."""
        if not isinstance(self._handler, _Buffer):
            return
        held = self._handler.records
        handler = logging.FileHandler(self.path, mode="a" if self.append else "w", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        for record in held:
            handler.handle(record)
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.addHandler(handler)
        self._handler = handler

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        logging.getLogger().removeHandler(self._handler)
        if error is not None and isinstance(self._handler, logging.FileHandler):
            # The command line prints the error after the run; the file keeps it too.
            what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{kind.__name__}: {error}"  # type: ignore[union-attr]
            record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "training stopped: %s", (what,), None)
            self._handler.handle(record)
        self._handler.close()
        if self._level is not None:
            logging.getLogger(_PACKAGE).setLevel(self._level)
