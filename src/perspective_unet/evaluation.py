"""Evaluation results in nnU-Net's layout: per-case scores of every class, their means, and the one writer and reader
of ``summary.json`` (with ``per_case.csv`` and ``summary.md``).

Every evaluation of the project writes through :func:`write_summary`: ``evaluate`` of a checkpoint, ``evaluate
--pred --ref`` of two folders, the out-of-fold predictions of a fold run (``fold_K/validation/``) and ``crossval``.
The schema (documented in docs/metrics.md) is nnU-Net's ``summary.json``, ``metric_per_case`` (each with its
``prediction_file``, ``reference_file`` and ``metrics`` per class id as a string key), ``mean`` (per class id) and
``foreground_mean``, with this project's metrics beside nnU-Net's:

===================  ==========================================================================================
metric               meaning
===================  ==========================================================================================
Dice, IoU            from the voxel counts, as nnU-Net (NaN when the class is absent from both masks)
TP, FP, FN, TN       voxel counts; ``n_pred = TP + FP``, ``n_ref = TP + FN``
HD95                 the corrected protocol's HD95 in mm (NaN when a mask is empty); the headline distance
NSD                  normalized surface Dice at the class's tolerance in mm (MONAI's ``compute_surface_dice``)
legacy_Dice          the papers' Dice (1 for a prediction of an absent class, 0 when both are empty)
legacy_HD95_voxels   the papers' pooled HD95 in voxels (0 when a mask is empty)
===================  ==========================================================================================

Means skip undefined (NaN) values and count them (``undefined``); ``foreground_mean`` averages the classes' means
(classes without any defined value left out). NaN is written as JSON ``null``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.metrics import (
    PROTOCOLS,
    class_tolerances,
    normalized_surface_dice,
    score_case,
    without_ignored,
)
from perspective_unet.outputs import read_json, text_writer, write_all
from perspective_unet.table import format_table

__all__ = [
    "COUNTS",
    "DEFAULT_NSD_TOLERANCE_MM",
    "REPORTS",
    "SUMMARY_FILE",
    "CaseScores",
    "EvaluationSummary",
    "nanmean",
    "read_summary",
    "score_volume",
    "write_summary",
]

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "per_case.csv"
MARKDOWN_FILE = "summary.md"
REPORTS = (SUMMARY_FILE, PER_CASE_FILE, MARKDOWN_FILE)
SUMMARY_FORMAT_VERSION = 2
DEFAULT_NSD_TOLERANCE_MM = 2.0

COUNTS = ("TP", "FP", "FN", "TN", "n_pred", "n_ref")
_OVERLAP = ("Dice", "IoU", *COUNTS)
_CORRECTED = ("HD95", "NSD")
_LEGACY = ("legacy_Dice", "legacy_HD95_voxels")
METRIC_ORDER = (*_OVERLAP, *_CORRECTED, *_LEGACY)
# What a mean of each metric may leave out, and is counted in ``undefined``.
_MAY_BE_UNDEFINED = ("Dice", "IoU", "HD95", "NSD")
UNITS = {
    "HD95": "mm (corrected protocol: max of the directed 95th percentiles)",
    "NSD": "fraction of both surfaces within nsd_tolerance_mm",
    "legacy_HD95_voxels": "voxels (the papers' protocol: pooled 95th percentile)",
}


def _overlap(pred: np.ndarray, ref: np.ndarray, class_id: int, annotated: int) -> dict[str, float]:
    p, r = pred == class_id, ref == class_id
    tp = int(np.count_nonzero(p & r))
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    fp, fn = n_pred - tp, n_ref - tp
    tn = annotated - tp - fp - fn
    union = tp + fp + fn
    return {
        "Dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
        "IoU": tp / union if union else math.nan,
        "TP": tp,
        "FP": fp,
        "FN": fn,
        "TN": tn,
        "n_pred": n_pred,
        "n_ref": n_ref,
    }


def score_volume(
    prediction: Any,
    reference: Any,
    num_classes: int,
    *,
    spacing: Sequence[float] | None,
    protocols: Sequence[str] = PROTOCOLS,
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE_MM,
    ignore_label: int | None = None,
) -> dict[int, dict[str, float]]:
    """Every metric of every foreground class of one case (see the module docstring).

    Args:
        prediction: Predicted labels, a 2D or 3D integer array with values in ``[0, num_classes)``.
        reference: The reference labels, same shape.
        num_classes: Classes, background included.
        spacing: Voxel size per array axis in mm; the corrected protocol (HD95, NSD) needs it.
        protocols: ``corrected`` adds HD95 and NSD, ``legacy`` the papers' Dice and HD95; the overlap counts, Dice and
            IoU are always computed.
        nsd_tolerance: The NSD tolerance in mm: one value, or one per foreground class.
        ignore_label: The value ``reference`` marks voxels without annotation with (nnU-Net's ignore label); they
            count in no metric, not even as true negatives. None: every voxel is annotated.

    Returns:
        ``{class_id: {metric: value}}`` for the foreground classes.

    Example:
        >>> label = np.zeros((6, 6), dtype=np.uint8)
        >>> label[1:4, 1:4] = 1
        >>> scores = score_volume(label, label, 2, spacing=(1.0, 1.0))[1]
        >>> scores["Dice"], scores["TP"], scores["TN"], scores["HD95"], scores["legacy_HD95_voxels"]
        (1.0, 9, 27, 0.0, 0.0)
    """
    pred, ref = np.asarray(prediction), np.asarray(reference)
    annotated = int(ref.size)
    if ignore_label is not None:
        annotated -= int(np.count_nonzero(ref == ignore_label)) if ref.shape == pred.shape else 0
        pred, ref = without_ignored(pred, ref, int(ignore_label), num_classes)
    scores = {class_id: {} for class_id in range(1, num_classes)}
    if "corrected" in protocols:
        corrected = score_case(pred, ref, num_classes, protocol="corrected", spacing=spacing)
        nsd = normalized_surface_dice(pred, ref, num_classes, spacing=spacing, tolerance=nsd_tolerance)  # type: ignore[arg-type]
        for class_id in scores:
            scores[class_id].update(HD95=corrected[class_id]["hd95"], NSD=nsd[class_id])
    if "legacy" in protocols:
        legacy = score_case(pred, ref, num_classes, protocol="legacy")
        for class_id in scores:
            scores[class_id].update(legacy_Dice=legacy[class_id]["dice"], legacy_HD95_voxels=legacy[class_id]["hd95"])
    if not {"corrected", "legacy"} & set(protocols):
        score_case(pred, ref, num_classes, protocol="legacy")  # the same checks of shapes and values
    return {class_id: {**_overlap(pred, ref, class_id, annotated), **values} for class_id, values in scores.items()}


@dataclass(frozen=True)
class CaseScores:
    """The scores of one case.

    Attributes:
        case: The case's name.
        metrics: ``{class_id: {metric: value}}`` (see :func:`score_volume`).
        prediction_file: Where the prediction lies (or came from).
        reference_file: Where the reference lies.
        spacing_known: Whether the case's spacing was known (without it, distances are in voxels of size 1 mm).
    """

    case: str
    metrics: Mapping[int, Mapping[str, float]]
    prediction_file: str = ""
    reference_file: str = ""
    spacing_known: bool = True

    def foreground_dice(self, metric: str = "Dice") -> float:
        """The case's mean over classes of ``metric`` (NaN values left out; NaN when every class is undefined)."""
        values = [float(v[metric]) for v in self.metrics.values() if not math.isnan(float(v[metric]))]
        return float(np.mean(values)) if values else math.nan


def nanmean(values: Iterable[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is).

    Example:
        >>> nanmean([0.5, float("nan"), 1.0])
        0.75
    """
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


@dataclass(frozen=True)
class EvaluationSummary:
    """Per-case scores of one evaluation, and their means.

    Attributes:
        cases: The cases' scores, in case order.
        class_names: Names by class id, background first.
        protocols: The metric protocols computed (``legacy``, ``corrected``).
        nsd_tolerance: NSD tolerance in mm per foreground class (empty without the corrected protocol).
    """

    cases: tuple[CaseScores, ...]
    class_names: tuple[str, ...]
    protocols: tuple[str, ...] = PROTOCOLS
    nsd_tolerance: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(sorted(self.cases, key=lambda c: c.case)))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "protocols", tuple(p for p in PROTOCOLS if p in self.protocols))
        if not self.cases:
            raise ValueError("an evaluation needs at least one case.")

    @classmethod
    def of(
        cls,
        cases: Sequence[CaseScores],
        class_names: Sequence[str],
        protocols: Sequence[str],
        nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE_MM,
    ) -> EvaluationSummary:
        """A summary whose tolerance is given as :func:`score_volume` takes it."""
        tolerance = class_tolerances(nsd_tolerance, len(class_names)) if "corrected" in protocols else {}
        return cls(tuple(cases), tuple(class_names), tuple(protocols), tolerance)

    @property
    def class_ids(self) -> list[int]:
        """The foreground class ids."""
        return list(range(1, len(self.class_names)))

    @property
    def metric_names(self) -> list[str]:
        """The metrics every case holds, in the schema's order."""
        held = set.intersection(*(set(values) for c in self.cases for values in c.metrics.values()))
        return [m for m in METRIC_ORDER if m in held]

    def values(self, class_id: int, metric: str) -> list[float]:
        """``metric`` of ``class_id`` in every case, in case order."""
        return [float(c.metrics[class_id][metric]) for c in self.cases]

    def mean(self) -> dict[int, dict[str, float]]:
        """Per class, each metric's mean over the cases where it is defined."""
        return {k: {m: nanmean(self.values(k, m)) for m in self.metric_names} for k in self.class_ids}

    def foreground_mean(self) -> dict[str, float]:
        """Each metric's mean over the classes' means (classes without a defined mean left out)."""
        means = self.mean()
        return {m: nanmean([means[k][m] for k in self.class_ids]) for m in self.metric_names}

    def undefined(self) -> dict[int, dict[str, int]]:
        """Per class, how many cases leave each metric undefined (NaN)."""
        names = [m for m in _MAY_BE_UNDEFINED if m in self.metric_names]
        return {k: {m: sum(math.isnan(v) for v in self.values(k, m)) for m in names} for k in self.class_ids}

    def case_scores(self, metric: str = "Dice") -> dict[str, float]:
        """Each case's mean over classes of ``metric``, by case."""
        return {c.case: c.foreground_dice(metric) for c in self.cases}

    def merged(self, other: EvaluationSummary) -> EvaluationSummary:
        """The cases of both summaries in one (they must share classes, protocols and tolerances, not cases).

        Raises:
            ValueError: The summaries differ in classes, protocols or tolerances, or share a case.
        """
        if (self.class_names, self.protocols, dict(self.nsd_tolerance)) != (
            other.class_names,
            other.protocols,
            dict(other.nsd_tolerance),
        ):
            raise ValueError("the evaluations differ in their classes, metric protocols or NSD tolerances.")
        shared = sorted({c.case for c in self.cases} & {c.case for c in other.cases})
        if shared:
            raise ValueError(f"cases {shared[:3]} are in both evaluations.")
        return EvaluationSummary((*self.cases, *other.cases), self.class_names, self.protocols, self.nsd_tolerance)

    # ----------------------------------------------------------------------------------------------------------------
    # summary.json
    # ----------------------------------------------------------------------------------------------------------------

    def to_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``summary.json``'s content (see the module docstring); ``extra`` entries (what was evaluated, with which
        settings) go between the means and the long per-case list."""
        means = self.mean()
        data: dict[str, Any] = {
            "format_version": SUMMARY_FORMAT_VERSION,
            "num_cases": len(self.cases),
            "protocols": list(self.protocols),
            "class_names": {str(i): name for i, name in enumerate(self.class_names)},
            "units": {m: UNITS[m] for m in self.metric_names if m in UNITS},
        }
        if self.nsd_tolerance:
            data["nsd_tolerance_mm"] = {str(k): v for k, v in self.nsd_tolerance.items()}
        data["spacing_known_cases"] = sum(c.spacing_known for c in self.cases)
        data["foreground_mean"] = _json_values(self.foreground_mean())
        data["mean"] = {str(k): _json_values(v) for k, v in means.items()}
        data["undefined"] = {str(k): v for k, v in self.undefined().items()}
        data.update(extra or {})
        data["metric_per_case"] = [
            {
                "case": c.case,
                "prediction_file": c.prediction_file,
                "reference_file": c.reference_file,
                "spacing_known": c.spacing_known,
                "metrics": {str(k): _json_values(v) for k, v in c.metrics.items()},
            }
            for c in self.cases
        ]
        return data

    @classmethod
    def from_dict(cls, data: Any, origin: str | os.PathLike[str]) -> EvaluationSummary:
        """Read ``summary.json``'s content back.

        Raises:
            InputError: The content is not a summary of this version (``origin`` is named).
        """
        try:
            if data.get("format_version") != SUMMARY_FORMAT_VERSION:
                raise ValueError(f"format_version {data.get('format_version')!r} is not {SUMMARY_FORMAT_VERSION}")
            names = data["class_names"]
            cases = tuple(
                CaseScores(
                    str(entry["case"]),
                    {int(k): {m: _number(v) for m, v in values.items()} for k, values in entry["metrics"].items()},
                    str(entry.get("prediction_file", "")),
                    str(entry.get("reference_file", "")),
                    bool(entry.get("spacing_known", True)),
                )
                for entry in data["metric_per_case"]
            )
            tolerance = {int(k): float(v) for k, v in (data.get("nsd_tolerance_mm") or {}).items()}
            return cls(cases, tuple(names[str(i)] for i in range(len(names))), tuple(data["protocols"]), tolerance)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{origin} is not an evaluation summary of this version ({type(exc).__name__}: {exc}); evaluate again."
            ) from None


def _number(value: Any) -> float:
    """A metric value read back: null is NaN; anything but a number is refused."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a metric value")
    return value


def _json_values(values: Mapping[str, float]) -> dict[str, Any]:
    """Metric values for JSON: counts as integers, NaN as null."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        value = float(value)
        out[name] = None if math.isnan(value) else int(value) if name in COUNTS and value.is_integer() else value
    return out


def read_summary(path: str | os.PathLike[str]) -> EvaluationSummary:
    """An evaluation's ``summary.json`` (or the ``summary.json`` in the folder ``path``).

    Raises:
        InputError: The file is missing, unreadable or not an evaluation summary of this version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    return EvaluationSummary.from_dict(read_json(path, "evaluate again to write it."), path)


# --------------------------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------------------------


def write_summary(
    summary: EvaluationSummary, output: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``summary.json``, ``per_case.csv`` and ``summary.md`` into ``output``, all three or none.

    Returns:
        The content of ``summary.json``.
    """
    output = Path(output)
    data = summary.to_dict(extra)
    write_all(
        {
            output / PER_CASE_FILE: lambda path: _write_per_case(summary, path),
            output / SUMMARY_FILE: text_writer(json.dumps(data, indent=2, allow_nan=False) + "\n"),
            output / MARKDOWN_FILE: text_writer(summary_markdown(summary)),
        }
    )
    return data


def _write_per_case(summary: EvaluationSummary, path: Path) -> None:
    metrics = summary.metric_names
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "class_id", "class_name", *metrics, "prediction_file", "reference_file"])
        for case in summary.cases:
            for class_id in summary.class_ids:
                values = case.metrics[class_id]
                writer.writerow(
                    [
                        case.case,
                        class_id,
                        summary.class_names[class_id],
                        *(values[m] for m in metrics),
                        case.prediction_file,
                        case.reference_file,
                    ]
                )


def _fmt(values: Mapping[str, float], metric: str, scale: float = 1.0) -> str:
    value = values.get(metric, math.nan)
    return "n/a" if value is None or math.isnan(value) else f"{value * scale:.2f}"


def summary_markdown(summary: EvaluationSummary) -> str:
    """The summary as Markdown tables: one per protocol, a row per class and the foreground mean."""
    means, overall, undefined = summary.mean(), summary.foreground_mean(), summary.undefined()
    names = {k: summary.class_names[k] for k in summary.class_ids}
    parts = [f"# Evaluation\n\n{len(summary.cases)} case(s); Dice, IoU and NSD in %.\n"]
    if "corrected" in summary.protocols:
        tolerances = "/".join(f"{t:g}" for t in sorted(set(summary.nsd_tolerance.values())))
        header = ["class", "Dice", "IoU", "HD95 (mm)", f"NSD ({tolerances} mm)", "undefined Dice / HD95"]
        columns = (("Dice", 100), ("IoU", 100), ("HD95", 1), ("NSD", 100))
        rows = [
            [
                names[k],
                *(_fmt(means[k], m, scale) for m, scale in columns),
                f"{undefined[k].get('Dice', 0)} / {undefined[k].get('HD95', 0)}",
            ]
            for k in summary.class_ids
        ]
        rows.append(["foreground mean", *(_fmt(overall, m, scale) for m, scale in columns), ""])
        parts.append(
            "## Corrected protocol (HD95 in mm; undefined values left out and counted)\n\n"
            + format_table(header, rows, markdown=True)
            + "\n"
        )
    if "legacy" in summary.protocols:
        columns = (("legacy_Dice", 100), ("legacy_HD95_voxels", 1))
        rows = [[names[k], *(_fmt(means[k], m, scale) for m, scale in columns)] for k in summary.class_ids]
        rows.append(["mean", *(_fmt(overall, m, scale) for m, scale in columns)])
        parts.append(
            "## Legacy protocol (as in the papers; HD95 in voxels, (1, 0) / (0, 0) rules for empty masks)\n\n"
            + format_table(["class", "DSC", "HD95 (voxels)"], rows, markdown=True)
            + "\n"
        )
    return "\n".join(parts)
