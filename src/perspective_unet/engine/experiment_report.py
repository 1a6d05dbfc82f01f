"""``perspective-unet experiment report``: the runs of an experiment gathered into tables with spread and tests.

For each configuration the report gives, from the per-case scores of every evaluated run:

- the paper's table layout, mean Dice, mean HD95 and each class's Dice, as mean +- sample standard deviation over
  the configuration's runs (seeds, and folds when the experiment has them), a run's score being the evaluation
  summary's (each class averaged over cases, then the classes averaged);
- a percentile bootstrap confidence interval of the mean Dice over the statistics unit (a case's mean Dice over
  classes, or each case and class), each unit's value averaged over the runs first;
- the paired Wilcoxon signed-rank test of the units' values against the reference configuration's, with Holm's
  correction across the comparisons.

Only runs with a complete evaluation made with the experiment's settings count (see
:func:`~perspective_unet.engine.experiment_folder.evaluation_problem`); the report names the others and why they were
left out.

Written as ``report.md``, ``report.csv``, ``report.tex``, ``report.json`` and ``boxplots.png`` (per-class Dice of
every run and case).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.config.experiment import ExperimentConfig
from perspective_unet.engine.experiment_folder import evaluation_problem, read_experiment
from perspective_unet.errors import InputError
from perspective_unet.outputs import text_writer, write_all
from perspective_unet.runs import RunFolder
from perspective_unet.stats import Comparison, Spread, bootstrap_interval, holm, paired_wilcoxon, spread
from perspective_unet.table import format_table

__all__ = ["ConfigurationSummary", "ExperimentReport", "gather_scores", "report_experiment", "summarize"]

REPORT_FILES = ("report.md", "report.csv", "report.tex", "report.json", "boxplots.png")
HTML_FILE = "report.html"

# (case, class name) -> (dice, hd95) of one run
RunScores = dict[tuple[str, str], tuple[float, float]]


@dataclass
class ConfigurationSummary:
    """One configuration's row of the report.

    Attributes:
        name: The configuration.
        runs: Labels of its evaluated runs.
        dice: Mean Dice over runs (each run: classes averaged after cases).
        hd95: Mean HD95 over runs, likewise.
        per_class: Each class's Dice over runs.
        interval: Bootstrap interval of the mean Dice over units.
        units: The units' values (averaged over runs), by unit name.
        comparison: Against the reference (None for the reference itself).
    """

    name: str
    runs: list[str]
    dice: Spread
    hd95: Spread
    per_class: dict[str, Spread]
    interval: tuple[float, float]
    units: dict[str, float] = field(repr=False)
    comparison: Comparison | None = None


@dataclass
class ExperimentReport:
    """The whole report: settings, one summary per configuration, and the runs left out (label -> why)."""

    name: str
    reference: str
    protocol: str
    unit: str
    confidence: float
    classes: list[str]
    configurations: list[ConfigurationSummary]
    left_out: dict[str, str]
    scores: dict[str, list[RunScores]] = field(repr=False, default_factory=dict)


# The per_case.csv columns of each protocol's Dice and HD95 (see perspective_unet.evaluation).
_PROTOCOL_COLUMNS = {"legacy": ("legacy_Dice", "legacy_HD95_voxels"), "corrected": ("Dice", "HD95")}


def _read_per_case(path: Path, protocol: str) -> RunScores:
    dice, hd95 = _PROTOCOL_COLUMNS[protocol]
    scores: RunScores = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {dice, hd95} <= set(reader.fieldnames or ()):
            raise InputError(f"{path} holds no {protocol!r} scores; evaluate the run with that protocol.")
        for row in reader:
            scores[(row["case"], row["class_name"])] = (float(row[dice] or "nan"), float(row[hd95] or "nan"))
    if not scores:
        raise InputError(f"{path} holds no scores; evaluate the run again.")
    return scores


def gather_scores(root: Path, experiment: ExperimentConfig) -> tuple[dict[str, dict[str, RunScores]], dict[str, str]]:
    """Per configuration, per run label, the run's per-case scores; and the runs left out, each with the reason (no
    complete evaluation made with the experiment's settings)."""
    found: dict[str, dict[str, RunScores]] = defaultdict(dict)
    left_out = {}
    for run in experiment.runs():
        problem = evaluation_problem(root / run.folder, experiment.evaluate)
        if problem is None:
            path = RunFolder(root / run.folder).evaluation / "per_case.csv"
            found[run.configuration][run.label] = _read_per_case(path, experiment.evaluate.protocol)
        else:
            left_out[run.label] = problem
    return found, left_out


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values; NaN (without a warning) when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _run_means(scores: RunScores, classes: list[str]) -> tuple[float, float, dict[str, float]]:
    """A run's summary: each class averaged over cases (undefined values left out), then the classes."""
    per_class_dice = {c: _nanmean([d for (_, k), (d, _) in scores.items() if k == c]) for c in classes}
    per_class_hd = [_nanmean([h for (_, k), (_, h) in scores.items() if k == c]) for c in classes]
    return _nanmean(list(per_class_dice.values())), _nanmean(per_class_hd), per_class_dice


def _units(runs: list[RunScores], unit: str) -> dict[str, float]:
    """Each unit's Dice averaged over the runs (a case's classes are averaged first for unit ``case``)."""
    values: dict[str, list[float]] = defaultdict(list)
    for scores in runs:
        by_case: dict[str, list[float]] = defaultdict(list)
        for (case, name), (dice, _) in scores.items():
            if unit == "case_class":
                values[f"{case}/{name}"].append(dice)
            else:
                by_case[case].append(dice)
        for case, dices in by_case.items():
            values[case].append(_nanmean(dices))
    return {key: _nanmean(v) for key, v in sorted(values.items())}


def summarize(root: str | os.PathLike[str]) -> ExperimentReport:
    """Gather an experiment folder's evaluated runs and compute the report's numbers (nothing is written).

    Raises:
        InputError: The folder holds no experiment, or none of its runs has an evaluation that counts.
    """
    root = Path(root)
    experiment = read_experiment(root)
    found, left_out = gather_scores(root, experiment)
    if not found:
        raise InputError(
            f"{root}: no run has a complete evaluation with the experiment's settings yet; run "
            "`perspective-unet experiment run` first."
        )
    # Class id order, as the per-case files list the classes (a class only later runs score comes after).
    classes = list(dict.fromkeys(name for runs in found.values() for s in runs.values() for _, name in s))
    stats = experiment.statistics
    summaries = []
    for name in experiment.configurations:
        runs = list(found.get(name, {}).values())
        if not runs:
            continue
        means = [_run_means(scores, classes) for scores in runs]
        units = _units(runs, stats.unit)
        summaries.append(
            ConfigurationSummary(
                name=name,
                runs=list(found[name]),
                dice=spread([m[0] for m in means]),
                hd95=spread([m[1] for m in means]),
                per_class={c: spread([m[2][c] for m in means]) for c in classes},
                interval=bootstrap_interval(
                    list(units.values()),
                    confidence=stats.confidence,
                    resamples=stats.bootstrap_resamples,
                    seed=stats.bootstrap_seed,
                ),
                units=units,
            )
        )
    _compare(summaries, experiment.reference)
    return ExperimentReport(
        name=experiment.name,
        reference=experiment.reference,
        protocol=experiment.evaluate.protocol,
        unit=stats.unit,
        confidence=stats.confidence,
        classes=classes,
        configurations=summaries,
        left_out=left_out,
        scores={name: list(runs.values()) for name, runs in found.items()},
    )


def _compare(summaries: list[ConfigurationSummary], reference: str) -> None:
    base = next((s for s in summaries if s.name == reference), None)
    if base is None:
        return
    others = [s for s in summaries if s is not base]
    for summary in others:
        keys = sorted(set(summary.units) & set(base.units))
        summary.comparison = paired_wilcoxon([summary.units[k] for k in keys], [base.units[k] for k in keys])
    adjusted = holm([s.comparison.p_value for s in others])
    for summary, p_holm in zip(others, adjusted):
        summary.comparison = Comparison(**{**asdict(summary.comparison), "p_holm": p_holm})


def _pm(value: Spread, scale: float = 100.0) -> str:
    if value.n == 0 or not math.isfinite(value.mean):
        return "n/a"
    if not math.isfinite(value.std):
        return f"{value.mean * scale:.2f}"
    return f"{value.mean * scale:.2f} ± {value.std * scale:.2f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _markdown(report: ExperimentReport) -> str:
    header = ["configuration", "runs", "DSC (%)", "HD95", *report.classes]
    rows = [
        [s.name, len(s.runs), _pm(s.dice), _pm(s.hd95, 1.0), *(_pm(s.per_class[c]) for c in report.classes)]
        for s in report.configurations
    ]
    level = f"{report.confidence * 100:g}%"
    tests = [
        [
            s.name,
            len(s.units),
            f"{s.dice.mean * 100:.2f}" if s.dice.n else "n/a",
            f"[{s.interval[0] * 100:.2f}, {s.interval[1] * 100:.2f}]" if math.isfinite(s.interval[0]) else "n/a",
            *(
                ("reference", "", "", "")
                if s.comparison is None
                else (
                    s.comparison.n,
                    f"{s.comparison.mean_difference * 100:+.2f}",
                    _p(s.comparison.p_value),
                    _p(s.comparison.p_holm),
                )
            ),
        ]
        for s in report.configurations
    ]
    unit = "case (its mean Dice over classes)" if report.unit == "case" else "case and class"
    lines = [
        f"# Experiment {report.name}",
        "",
        f"Metric protocol: {report.protocol} (HD95 in {'voxels' if report.protocol == 'legacy' else 'mm'}). "
        "Mean ± sample standard deviation over each configuration's runs; DSC in %.",
        "",
        format_table(header, rows, markdown=True),
        "",
        f"## Comparison with {report.reference}",
        "",
        f"Unit: {unit}, each unit's Dice averaged over the configuration's runs. {level} percentile bootstrap interval "
        "of the mean over units; paired two-sided Wilcoxon signed-rank test against the reference on the same units, "
        "p-values Holm-corrected across the comparisons.",
        "",
        format_table(
            ["configuration", "units", "mean DSC (%)", f"{level} CI", "pairs", "Δ DSC (%)", "p", "p (Holm)"],
            tests,
            markdown=True,
        ),
        "",
    ]
    if report.left_out:
        runs = "; ".join(f"{label} ({why})" for label, why in report.left_out.items())
        lines += [f"Left out, without a complete evaluation with this experiment's settings: {runs}.", ""]
    return "\n".join(lines)


def _csv(report: ExperimentReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "configuration",
            "runs",
            "dice_mean",
            "dice_std",
            "hd95_mean",
            "hd95_std",
            "units",
            "ci_low",
            "ci_high",
            "pairs",
            "dice_difference",
            "p_wilcoxon",
            "p_holm",
            *(f"{c}_{k}" for c in report.classes for k in ("mean", "std")),
        ]
    )
    for s in report.configurations:
        c = s.comparison
        writer.writerow(
            [
                s.name,
                len(s.runs),
                s.dice.mean,
                s.dice.std,
                s.hd95.mean,
                s.hd95.std,
                len(s.units),
                *s.interval,
                *(("", "", "", "") if c is None else (c.n, c.mean_difference, c.p_value, c.p_holm)),
                *(v for name in report.classes for v in (s.per_class[name].mean, s.per_class[name].std)),
            ]
        )
    return buffer.getvalue()


def _latex(report: ExperimentReport) -> str:
    def cell(value: Spread, scale: float = 100.0) -> str:
        return _pm(value, scale).replace("±", r"$\pm$")

    names = [c.replace("_", r"\_") for c in report.classes]
    lines = [
        r"\begin{tabular}{l" + "c" * (2 + len(names)) + "}",
        r"\hline",
        " & ".join(["Configuration", "DSC", "HD95", *names]) + r" \\",
        r"\hline",
    ]
    for s in report.configurations:
        cells = [
            s.name.replace("_", r"\_"),
            cell(s.dice),
            cell(s.hd95, 1.0),
            *(cell(s.per_class[c]) for c in report.classes),
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(lines)


def _json(report: ExperimentReport) -> str:
    data = {k: v for k, v in asdict(report).items() if k != "scores"}
    return json.dumps(data, indent=2, default=str, allow_nan=True)


def report_experiment(
    root: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    html: bool = False,
) -> ExperimentReport:
    """Write the report of an experiment folder (into ``root/report`` unless ``output`` says otherwise); with
    ``html``, also ``report.html``, the same numbers as a self-contained page to open in a browser.

    Raises:
        FileExistsError: The report folder holds a report and ``overwrite`` is False (nothing is written).
        InputError: See :func:`summarize`.
    """
    from perspective_unet.viz.boxplot import class_box_plot

    folder = Path(output) if output is not None else Path(root) / "report"
    names = (*REPORT_FILES, HTML_FILE) if html else REPORT_FILES
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder / existing[0]} already exists; nothing was written. Pass --overwrite to "
            "replace the report, or choose another output folder."
        )
    report = summarize(root)
    folder.mkdir(parents=True, exist_ok=True)
    box_scores = {
        c: {name: [s[key][0] for s in runs for key in s if key[1] == c] for name, runs in report.scores.items()}
        for c in report.classes
    }
    texts = {
        "report.md": _markdown(report),
        "report.csv": _csv(report),
        "report.tex": _latex(report),
        "report.json": _json(report),
    }
    writers: dict[Path, Any] = {folder / name: text_writer(text) for name, text in texts.items()}
    writers[folder / "boxplots.png"] = lambda path: class_box_plot(box_scores, path, title=report.name)
    if html:
        from perspective_unet.engine.experiment_report_page import experiment_page
        from perspective_unet.viz.report import render_report

        writers[folder / HTML_FILE] = text_writer(render_report(experiment_page(report)))
    write_all(writers)
    return report
