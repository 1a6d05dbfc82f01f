"""``perspective-unet report``: an evaluation folder as one self-contained HTML page (drawn by
:mod:`perspective_unet.viz.report`).

The page holds the summary table (each class's mean of every metric, and the foreground mean), per-class box plots of
Dice and HD95, a sortable per-case table, and for each case its worst and best slice as image / reference /
prediction overlays with a slider through its slices. Scores come from the folder's ``summary.json``; the overlays
from the files it names: each case's ``reference_file`` (a prepared ``*.npy.h5`` volume holds the image too) and
``prediction_file`` (``evaluate --save-predictions`` keeps them), and for references without an image, the image
found by case name in ``images`` (``<case>_0000.nii.gz`` as nnU-Net names it, or ``<case>.nii.gz``, ...).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from perspective_unet.data.datasets import VolumeDataset
from perspective_unet.data.io import NIFTI_SUFFIXES, PICTURE_SUFFIXES, read_image
from perspective_unet.data.layouts.base import TRAIN_DIR
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.files import load_h5
from perspective_unet.errors import InputError
from perspective_unet.evaluation import CaseScores, EvaluationSummary, read_summary
from perspective_unet.viz.boxplot import class_box_plot_png
from perspective_unet.viz.report import CaseSlices, ReportPage, ReportTable, anchor, case_slices, write_report
from perspective_unet.viz.volumes import is_prepared, read_canonical, read_figure_image

__all__ = ["PREDICTIONS_DIR", "REPORT_FILE", "report_evaluation"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
# Where evaluate --save-predictions keeps each case's labels, named <case>.nii.gz (the summary names each file).
PREDICTIONS_DIR = "predictions"
# Metrics of the summary table, in order, with their headings; counts (TP, FP, ...) stay in the JSON.
_SUMMARY_METRICS = {
    "Dice": "Dice",
    "IoU": "IoU",
    "HD95": "HD95 (mm)",
    "NSD": "NSD",
    "legacy_Dice": "papers' Dice",
    "legacy_HD95_voxels": "papers' HD95 (voxels)",
}
_IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".nrrd", ".mhd", *PICTURE_SUFFIXES)


def report_evaluation(
    evaluation: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    images: str | os.PathLike[str] | None = None,
    max_cases: int = 40,
    slider_cases: int = 10,
    max_frames: int = 24,
    panel_px: int = 160,
    overwrite: bool = False,
) -> Path:
    """Write the HTML report of an evaluation folder.

    Args:
        evaluation: A folder with ``summary.json`` (from ``evaluate``, ``crossval``, a fold's ``validation/``).
        output: The HTML file; default ``report.html`` in ``evaluation``.
        images: A folder of the cases' images, for references that do not hold theirs (``evaluate --pred --ref``).
        max_cases: Cases drawn, lowest mean Dice first (every case stays in the tables).
        slider_cases: Of those, how many (lowest mean Dice first) get a slider through their slices; the others show
            their worst and best slice only.
        max_frames: The most slices a case's slider steps through.
        panel_px: The largest side of a panel, in pixels.
        overwrite: Replace an existing report.

    Returns:
        The report's path.

    Raises:
        InputError: ``evaluation`` holds no readable summary, or ``images`` is not a folder.
        FileExistsError: The report exists and ``overwrite`` is False.
    """
    folder = Path(evaluation)
    target = Path(output) if output is not None else folder / REPORT_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; nothing was written. Pass --overwrite to replace it.")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images {images} is not a folder; give the folder of the cases' images.")
    summary = read_summary(folder)
    dice = _dice_metric(summary)
    order = sorted(summary.cases, key=lambda c: _sort_key(c.foreground_dice(dice)))
    views, missing = [], []
    for rank, case in enumerate(order[:max_cases]):
        try:
            volumes = _case_volumes(case, folder, None if images is None else Path(images))
        except InputError as exc:
            missing.append(f"{case.case}: {exc}")
            continue
        if volumes is None:
            missing.append(f"{case.case}: no prediction file was kept (evaluate with --save-predictions)")
            continue
        frames = max_frames if rank < slider_cases else 0
        note = _case_note(case, dice, "HD95" in summary.metric_names)
        views.append(case_slices(case.case, *volumes, note=note, max_frames=frames, panel_px=panel_px))
    page = _page(summary, folder, views, missing, len(order) - max_cases, slider_cases)
    written = write_report(page, target)
    log.info("report of %d case(s), %d drawn: %s (%.1f MB)", len(order), len(views), written, _megabytes(written))
    return written


def _megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6


def _sort_key(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _dice_metric(summary: EvaluationSummary) -> str:
    """The Dice the report sorts and draws by: nnU-Net's (the corrected protocol's), else the papers'."""
    return "Dice" if "Dice" in summary.metric_names else "legacy_Dice"


def _case_note(case: CaseScores, dice: str, with_hd95: bool) -> str:
    parts = [f"mean {_SUMMARY_METRICS[dice]} {case.foreground_dice(dice):.3f}"]
    if with_hd95:
        parts.append(f"mean HD95 {case.foreground_dice('HD95'):.2f} mm")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Volumes of a case
# --------------------------------------------------------------------------------------------------------------------


def _resolve(name: str, folder: Path) -> Path | None:
    if not name:
        return None
    path = Path(name)
    candidates = [path] if path.is_absolute() else [path, folder / path]
    return next((p for p in candidates if p.exists()), None)


def _find_image(case: str, images: Path | None) -> Path | None:
    if images is None:
        return None
    for stem in (f"{case}_0000", case):
        for suffix in _IMAGE_SUFFIXES:
            if (images / f"{stem}{suffix}").is_file():
                return images / f"{stem}{suffix}"
    series = images / case
    return series if series.is_dir() else None


def _case_volumes(
    case: CaseScores, folder: Path, images: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The case's canonical image, reference and prediction, or None when its prediction was not kept."""
    if not case.prediction_file:
        return None
    prediction_path = _resolve(case.prediction_file, folder)
    reference_path = _resolve(case.reference_file, folder)
    if prediction_path is None:
        raise InputError(f"the prediction {case.prediction_file} is not there")
    if reference_path is None:
        raise InputError(f"the reference {case.reference_file or '(none named)'} is not there")
    if is_prepared(reference_path):
        image, reference, _ = load_h5(reference_path)  # a prepared volume: canonical image and label, one read
        if reference is None:
            raise InputError(f"the reference {reference_path} holds no label")
        image, reference = np.asarray(image, dtype=np.float32), np.asarray(reference).astype(np.int64)
        prediction = _prediction_on_reference_grid(prediction_path)
    elif reference_path.is_dir() and reference_path.name == TRAIN_DIR:
        # A fold's held-out case stored as training slices: its volume stacked back, as the fold scored it; the
        # out-of-fold label map lies on the case's own grid, brought to the same canonical order.
        item = VolumeDataset(open_dataset(reference_path.parent), cases=[case.case])[0]
        image, reference = np.asarray(item["image"], dtype=np.float32), np.asarray(item["label"]).astype(np.int64)
        image = image if image.ndim == 3 else image[:, 0]  # the first channel of several
        prediction, _ = read_canonical(prediction_path, as_label=True)
    else:
        reference, _ = read_canonical(reference_path, as_label=True)
        prediction, _ = read_canonical(prediction_path, as_label=True)
        image_path = _find_image(case.case, images)
        if image_path is not None:
            image, _, _ = read_figure_image(image_path, "SPL")
        else:
            image = np.zeros(reference.shape, dtype=np.float32)
    if not image.shape == reference.shape == prediction.shape:
        raise InputError(
            f"image {image.shape}, reference {reference.shape} and prediction {prediction.shape} differ in shape"
        )
    return image, reference, prediction


def _prediction_on_reference_grid(path: Path) -> np.ndarray:
    """A prediction of a prepared volume, on that volume's canonical grid: ``evaluate --save-predictions`` keeps
    it so (the array as stored)."""
    prediction, _ = read_image(path, as_label=True)
    return np.rint(prediction).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------


def _summary_table(summary: EvaluationSummary) -> ReportTable:
    metrics = [m for m in _SUMMARY_METRICS if m in summary.metric_names]
    means, overall = summary.mean(), summary.foreground_mean()
    rows = [(summary.class_names[k], *(means[k][m] for m in metrics)) for k in summary.class_ids]
    rows.append(("foreground mean", *(overall[m] for m in metrics)))
    return ReportTable(
        "Summary: each class's mean over cases",
        ("class", *(_SUMMARY_METRICS[m] for m in metrics)),
        tuple(rows),
        total=True,
    )


def _case_table(summary: EvaluationSummary, drawn: set[str]) -> ReportTable:
    dice = _dice_metric(summary)
    overall = [m for m in (dice, "HD95", "NSD") if m in summary.metric_names]
    headers = ("case", *(f"mean {_SUMMARY_METRICS[m]}" for m in overall))
    headers += tuple(f"{_SUMMARY_METRICS[dice]} {summary.class_names[k]}" for k in summary.class_ids)
    rows = [
        (c.case, *(c.foreground_dice(m) for m in overall), *(c.metrics[k][dice] for k in summary.class_ids))
        for c in summary.cases
    ]
    links = tuple(anchor(c.case) if c.case in drawn else "" for c in summary.cases)
    return ReportTable("Cases", headers, tuple(rows), sortable=True, links=links)


def _box_plots(summary: EvaluationSummary) -> tuple[tuple[str, bytes], ...]:
    figures = []
    dice = _dice_metric(summary)
    for metric, label, limits in ((dice, _SUMMARY_METRICS[dice], (-0.02, 1.02)), ("HD95", "HD95 (mm)", None)):
        if metric not in summary.metric_names:
            continue
        scores = {summary.class_names[k]: {"": summary.values(k, metric)} for k in summary.class_ids}
        size = (max(4.5, 0.45 * len(summary.class_ids) + 2), 3.2)
        png = class_box_plot_png(scores, ylabel=label, ylim=limits, size=size)
        figures.append((f"{label} per class, one point per case (undefined values left out)", png))
    return tuple(figures)


def _page(
    summary: EvaluationSummary,
    folder: Path,
    views: list[CaseSlices],
    missing: list[str],
    left_out: int,
    sliders: int,
) -> ReportPage:
    notes = [
        f"{folder}: {len(summary.cases)} case(s), {len(summary.class_ids)} foreground class(es); protocols "
        f"{', '.join(summary.protocols) or 'n/a'}.",
        "Dice, IoU and NSD are fractions; HD95 is in mm (the corrected protocol); means leave undefined values out.",
    ]
    if left_out > 0:
        notes.append(
            f"Slices are drawn for the {len(views)} cases of lowest mean Dice; {left_out} more are only listed."
        )
    if len(views) > sliders:
        notes.append(f"The {sliders} cases of lowest mean Dice have a slider through their slices.")
    notes.extend(f"Not drawn: {line}." for line in missing)
    return ReportPage(
        title=f"Evaluation report: {folder.resolve().name}",
        notes=tuple(notes),
        tables=(_summary_table(summary), _case_table(summary, {v.case for v in views})),
        figures=_box_plots(summary),
        cases=tuple(views),
        class_names=summary.class_names,
    )
