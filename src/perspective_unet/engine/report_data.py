"""What the HTML report reads of an evaluation folder, as one typed record.

The folder's ``summary.json`` is read by :func:`perspective_unet.evaluation.read_summary`, the one reader of every
evaluation's summary (``evaluate`` of a checkpoint or of two folders, a fold's ``validation/``, ``crossval``): each
case's ``prediction_file`` (kept by ``evaluate --save-predictions`` in ``predictions/<case>.nii.gz``, or the label
map ``evaluate --pred`` scored) and ``reference_file``, and its metrics per class id. The corrected protocol's values
are ``Dice`` and ``HD95`` (mm), the legacy protocol's ``legacy_Dice`` and ``legacy_HD95_voxels``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.evaluation import read_summary

__all__ = ["PREDICTIONS_DIR", "CaseRecord", "EvaluationRecord", "read_evaluation"]

# Where evaluate --save-predictions keeps each case's labels, named <case>.nii.gz.
PREDICTIONS_DIR = "predictions"


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

    @property
    def dice_metric(self) -> str:
        """The Dice the report sorts and draws by: nnU-Net's (the corrected protocol's), else the papers'."""
        return "Dice" if "Dice" in self.metric_names else "legacy_Dice"

    def values(self, class_id: int, metric: str) -> list[float]:
        """``metric`` of ``class_id`` in every case."""
        return [float(c.metrics[class_id][metric]) for c in self.cases]


def read_evaluation(folder: str | os.PathLike[str]) -> EvaluationRecord:
    """The scores of an evaluation folder (or of its ``summary.json`` named directly).

    Raises:
        InputError: The summary is missing, unreadable, of another format version, or holds no case.
    """
    summary = read_summary(folder)
    path = Path(folder)
    cases = tuple(
        CaseRecord(
            c.case,
            {
                int(k): {m: float("nan") if v is None else float(v) for m, v in values.items()}
                for k, values in c.metrics.items()
            },
            c.prediction_file if c.prediction_file and Path(c.prediction_file).is_file() else "",
            c.reference_file or "",
        )
        for c in summary.cases
    )
    if not cases:
        raise InputError(f"{path} holds no case; evaluate again.")
    held = set.intersection(*(set(values) for c in cases for values in c.metrics.values()))
    metric_names = tuple(m for m in ("Dice", "HD95", "legacy_Dice", "legacy_HD95_voxels", *sorted(held)) if m in held)
    metric_names = tuple(dict.fromkeys(metric_names))
    class_names = tuple(summary.class_names)
    class_ids = range(1, len(class_names))
    mean = {k: {m: _nanmean([c.metrics[k][m] for c in cases]) for m in metric_names} for k in class_ids}
    foreground = {m: _nanmean([mean[k][m] for k in class_ids]) for m in metric_names}
    return EvaluationRecord(cases, class_names, tuple(summary.protocols), metric_names, mean, foreground)


def _nanmean(values: list[float]) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan
