"""What the HTML report reads of an evaluation folder: the typed view of its ``summary.json`` (nnU-Net's layout).

The one place that knows the file's schema for the report: ``metric_per_case`` (each case's ``prediction_file``,
``reference_file`` and ``metrics`` per class id), ``class_names``, ``protocols``, ``mean`` and ``foreground_mean``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.outputs import read_json

__all__ = ["CaseRecord", "EvaluationRecord", "read_evaluation"]

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class CaseRecord:
    """One case's scores and files.

    Attributes:
        case: Its name.
        metrics: ``{class_id: {metric: value}}`` (NaN where undefined).
        prediction_file: Where its prediction lies ("" when it was not kept).
        reference_file: Where its reference lies.
    """

    case: str
    metrics: Mapping[int, Mapping[str, float]]
    prediction_file: str = ""
    reference_file: str = ""

    def has(self, metric: str) -> bool:
        """Whether every class holds ``metric``."""
        return bool(self.metrics) and all(metric in v for v in self.metrics.values())

    def mean(self, metric: str) -> float:
        """The mean over classes of ``metric`` (NaN values left out; NaN when none is defined)."""
        values = [float(v[metric]) for v in self.metrics.values() if metric in v and not math.isnan(float(v[metric]))]
        return float(np.mean(values)) if values else math.nan


@dataclass(frozen=True)
class EvaluationRecord:
    """An evaluation's scores as the report reads them.

    Attributes:
        cases: Per-case scores, in the file's order.
        class_names: Names by class id, background first.
        protocols: The metric protocols computed.
        metric_names: The metrics every case holds.
        mean: Per class id, each metric's mean over cases.
        foreground_mean: Each metric's mean over classes.
    """

    cases: tuple[CaseRecord, ...]
    class_names: tuple[str, ...]
    protocols: tuple[str, ...]
    metric_names: tuple[str, ...]
    mean: Mapping[int, Mapping[str, float]]
    foreground_mean: Mapping[str, float]

    @property
    def class_ids(self) -> list[int]:
        """The foreground class ids."""
        return list(range(1, len(self.class_names)))

    def values(self, class_id: int, metric: str) -> list[float]:
        """``metric`` of ``class_id`` in every case."""
        return [float(c.metrics[class_id][metric]) for c in self.cases]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _values(entry: Mapping[str, Any]) -> dict[str, float]:
    return {str(m): _number(v) for m, v in entry.items()}


def read_evaluation(folder: str | os.PathLike[str]) -> EvaluationRecord:
    """The scores of an evaluation folder (or of its ``summary.json`` named directly).

    Raises:
        InputError: The summary is missing, unreadable, or not in nnU-Net's layout (an evaluation of an older
            version: evaluate again).
    """
    path = Path(folder)
    if path.is_dir():
        path = path / SUMMARY_FILE
    data = read_json(path, "evaluate again to write it.")
    try:
        names = data["class_names"]
        class_names = tuple(str(names[str(i)]) for i in range(len(names)))
        cases = tuple(
            CaseRecord(
                str(entry["case"]),
                {int(k): _values(v) for k, v in entry["metrics"].items()},
                str(entry.get("prediction_file") or ""),
                str(entry.get("reference_file") or ""),
            )
            for entry in data["metric_per_case"]
        )
        mean = {int(k): _values(v) for k, v in data["mean"].items()}
        foreground = _values(data["foreground_mean"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{path} is not an evaluation summary in nnU-Net's layout ({type(exc).__name__}: {exc}); evaluate again."
        ) from None
    if not cases:
        raise InputError(f"{path} holds no case; evaluate again.")
    held = set.intersection(*(set(values) for c in cases for values in c.metrics.values()))
    metric_names = tuple(m for m in foreground if m in held)
    return EvaluationRecord(cases, class_names, tuple(data.get("protocols", ())), metric_names, mean, foreground)
