"""An experiment's report as an HTML page (``experiment report --report``): the tables of ``report.md``, the box
plots, and a sortable table of every statistics unit's Dice per configuration, drawn by
:mod:`perspective_unet.viz.report`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from perspective_unet.stats import Spread
from perspective_unet.viz.boxplot import class_box_plot_png
from perspective_unet.viz.report import ReportPage, ReportTable

if TYPE_CHECKING:  # the report's type only: experiment_report calls this module, the arrow runs one way
    from perspective_unet.engine.experiment_report import ExperimentReport

__all__ = ["experiment_page"]


def _percent(value: Spread) -> float | None:
    return value.mean * 100 if value.n and math.isfinite(value.mean) else None


def _std(value: Spread, scale: float = 100.0) -> float | None:
    return value.std * scale if value.n > 1 and math.isfinite(value.std) else None


def experiment_page(report: ExperimentReport) -> ReportPage:
    """The page of an experiment's report (numbers as in ``report.md``: Dice in %, HD95 in the protocol's unit)."""
    unit = "mm" if report.protocol == "corrected" else "voxels"
    configurations = ReportTable(
        "Configurations: mean and standard deviation over runs",
        ("configuration", "runs", "DSC (%)", "± std", f"HD95 ({unit})", "± std", *(f"{c} (%)" for c in report.classes)),
        tuple(
            (
                s.name,
                len(s.runs),
                _percent(s.dice),
                _std(s.dice),
                s.hd95.mean if s.hd95.n else None,
                _std(s.hd95, 1.0),
                *(_percent(s.per_class[c]) for c in report.classes),
            )
            for s in report.configurations
        ),
        digits=2,
    )
    level = f"{report.confidence * 100:g}%"
    comparisons = ReportTable(
        f"Comparison with {report.reference} (paired Wilcoxon, Holm-corrected)",
        ("configuration", "units", "mean DSC (%)", f"{level} CI low", f"{level} CI high", "Δ DSC (%)", "p", "p (Holm)"),
        tuple(
            (
                s.name,
                len(s.units),
                _percent(s.dice),
                s.interval[0] * 100,
                s.interval[1] * 100,
                *(
                    ("reference", None, None)
                    if s.comparison is None
                    else (s.comparison.mean_difference * 100, s.comparison.p_value, s.comparison.p_holm)
                ),
            )
            for s in report.configurations
        ),
        digits=3,
    )
    keys = sorted({key for s in report.configurations for key in s.units})
    units = ReportTable(
        f"Units ({'case' if report.unit == 'case' else 'case/class'}): Dice (%), mean of each configuration's runs",
        ("unit", *(s.name for s in report.configurations)),
        tuple((key, *(s.units.get(key, math.nan) * 100 for s in report.configurations)) for key in keys),
        sortable=True,
        digits=2,
    )
    box_scores = {
        c: {name: [s[key][0] for s in runs for key in s if key[1] == c] for name, runs in report.scores.items()}
        for c in report.classes
    }
    notes = [
        f"Metric protocol: {report.protocol} (HD95 in {unit}); statistics unit: {report.unit}.",
        "Slice overlays are not part of an experiment's report: score a run with `evaluate --save-predictions "
        "--report` to see its cases.",
    ]
    if report.left_out:
        notes.append("Left out: " + "; ".join(f"{label} ({why})" for label, why in report.left_out.items()) + ".")
    return ReportPage(
        title=f"Experiment {report.name}",
        notes=tuple(notes),
        tables=(configurations, comparisons, units),
        figures=(("Dice per class: every run's cases, by configuration", class_box_plot_png(box_scores)),),
    )
