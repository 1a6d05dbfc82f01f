"""What the HTML report reads of an evaluation folder, as one typed record; the one place that knows its files.

Two layouts are read:

- nnU-Net's ``summary.json``: ``metric_per_case`` (each case's ``prediction_file``, ``reference_file`` and
  ``metrics`` per class id), ``class_names``, ``protocols``, ``mean`` and ``foreground_mean``;
- ``evaluate``'s own: ``per_case.csv`` (Dice and HD95 per case, protocol and class) with ``summary.json`` naming
  the prepared ``data`` and ``split`` (the references: their volume files), and the predictions that
  ``--save-predictions`` keeps in ``predictions/<case>.nii.gz``. The corrected protocol's values are ``Dice`` and
  ``HD95`` (mm), the legacy protocol's ``legacy_Dice`` and ``legacy_HD95_voxels``.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.errors import InputError
from perspective_unet.outputs import read_json

__all__ = ["PREDICTIONS_DIR", "CaseRecord", "EvaluationRecord", "read_evaluation"]

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "per_case.csv"
# Where evaluate --save-predictions keeps each case's labels, named <case>.nii.gz.
PREDICTIONS_DIR = "predictions"
# per_case.csv's (protocol, column) -> the metric's name in the record
_PER_CASE_METRICS = {
    ("corrected", "dice"): "Dice",
    ("corrected", "hd95"): "HD95",
    ("legacy", "dice"): "legacy_Dice",
    ("legacy", "hd95"): "legacy_HD95_voxels",
}


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


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _values(entry: Mapping[str, Any]) -> dict[str, float]:
    return {str(m): _number(v) for m, v in entry.items()}


def read_evaluation(folder: str | os.PathLike[str]) -> EvaluationRecord:
    """The scores of an evaluation folder (or of its ``summary.json`` named directly).

    Raises:
        InputError: The summary is missing, unreadable, or in neither layout.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / SUMMARY_FILE
    data = read_json(path, "evaluate again to write it.")
    try:
        if isinstance(data, dict) and "metric_per_case" not in data and "per_class" in data:
            cases, class_names = _read_per_case(path.parent, data)
            protocols = tuple(p for p in ("corrected", "legacy") if p == data.get("protocol") or p in data)
        else:
            cases, class_names = _read_nnunet_layout(data)
            protocols = tuple(data.get("protocols", ()))
    except InputError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{path} is not an evaluation summary ({type(exc).__name__}: {exc}); evaluate again."
        ) from None
    if not cases:
        raise InputError(f"{path} holds no case; evaluate again.")
    held = set.intersection(*(set(values) for c in cases for values in c.metrics.values()))
    metric_names = tuple(m for m in ("Dice", "HD95", "legacy_Dice", "legacy_HD95_voxels", *sorted(held)) if m in held)
    metric_names = tuple(dict.fromkeys(metric_names))
    class_ids = range(1, len(class_names))
    mean = {k: {m: _nanmean([c.metrics[k][m] for c in cases]) for m in metric_names} for k in class_ids}
    foreground = {m: _nanmean([mean[k][m] for k in class_ids]) for m in metric_names}
    return EvaluationRecord(cases, class_names, protocols, metric_names, mean, foreground)


def _nanmean(values: list[float]) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _read_nnunet_layout(data: Any) -> tuple[tuple[CaseRecord, ...], tuple[str, ...]]:
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
    return cases, class_names


def _read_per_case(folder: Path, data: Mapping[str, Any]) -> tuple[tuple[CaseRecord, ...], tuple[str, ...]]:
    """The cases of ``evaluate``'s own layout (see the module docstring)."""
    path = folder / PER_CASE_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing; evaluate again to write it.")
    metrics: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    names = {0: "background"}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            class_id = int(row["class_id"])
            names[class_id] = row["class_name"]
            for column in ("dice", "hd95"):
                name = _PER_CASE_METRICS.get((row["protocol"], column))
                if name is not None:
                    metrics[row["case"]][class_id][name] = float(row[column])
    references = _reference_files(data)
    predictions = folder / PREDICTIONS_DIR
    cases = tuple(
        CaseRecord(
            case,
            {k: dict(v) for k, v in sorted(scores.items())},
            str(predictions / f"{case}.nii.gz") if (predictions / f"{case}.nii.gz").is_file() else "",
            references.get(case, ""),
        )
        for case, scores in metrics.items()
    )
    return cases, tuple(names[k] for k in range(max(names) + 1))


def _reference_files(data: Mapping[str, Any]) -> dict[str, str]:
    """The prepared volume file of each case of the evaluated split (none when the data are not there)."""
    root = data.get("data")
    if not root or not Path(root).exists():
        return {}
    try:
        return {case: str(path) for case, path in open_dataset(root).volume_files(str(data.get("split", "test")))}
    except InputError:
        return {}
