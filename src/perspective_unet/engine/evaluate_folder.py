"""``perspective-unet evaluate --pred DIR --ref DIR``: any tool's label maps scored against reference label maps.

Files are paired by case, the name without its suffix (``case.nii.gz`` in both folders; NIfTI, the SimpleITK formats
and PNG masks are read). Each pair must share its grid: the same shape and, within ``affine_tolerance`` mm, the same
affine. Labels must lie in the classes ``dataset.json`` declares (``--labels``: nnU-Net's ``labels`` or a prepared
dataset's ``class_names``); without it the classes run from 0 to the largest label found. Every foreground class is
scored with :func:`perspective_unet.evaluation.score_volume` at the reference's voxel spacing, and the reports are
written by the project's one summary writer: ``summary.json`` in nnU-Net's layout, ``per_case.csv`` and
``summary.md``.

Everything is checked before anything is written: a prediction without a reference (or the reverse), a grid that
differs or a label outside the classes stops with one line naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.io import full_suffix, read_image
from perspective_unet.data.layouts.nnunet_files import label_ids
from perspective_unet.errors import InputError
from perspective_unet.evaluation import (
    DEFAULT_NSD_TOLERANCE_MM,
    REPORTS,
    CaseScores,
    EvaluationSummary,
    score_volume,
    write_summary,
)
from perspective_unet.metrics import PROTOCOLS
from perspective_unet.outputs import output_lock, read_json, remove_stale_temporaries
from perspective_unet.runtime.predict import LABEL_SUFFIXES

__all__ = ["AFFINE_TOLERANCE_MM", "class_names_of", "evaluate_folder", "pair_files"]

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
_READABLE = (*LABEL_SUFFIXES, ".mhd", ".nhdr")


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder of {role} label maps.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = full_suffix(path)
        if path.name.startswith(".") or not path.is_file() or suffix not in _READABLE:
            continue
        case = path.name[: -len(suffix)]
        if case in found:
            raise InputError(f"{found[case]} and {path} are both case {case!r}; keep one of them.")
        found[case] = path
    if not found:
        raise InputError(f"{folder} holds no label maps (NIfTI, .mha, .nrrd, .png, ...).")
    return found


def pair_files(predictions: str | os.PathLike[str], references: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """(case, prediction file, reference file) for every case, paired by the name without its suffix.

    Raises:
        InputError: A folder is missing or empty, or a prediction has no reference (or the reverse).
    """
    pred = _label_files(Path(predictions), "predicted")
    ref = _label_files(Path(references), "reference")
    lonely = sorted(set(pred) - set(ref))
    if lonely:
        raise InputError(
            f"{pred[lonely[0]]} has no reference in {references} ({len(lonely)} prediction(s) without one); every "
            "prediction needs a reference of the same case name."
        )
    missing = sorted(set(ref) - set(pred))
    if missing:
        raise InputError(
            f"{ref[missing[0]]} has no prediction in {predictions} ({len(missing)} reference(s) without one); "
            "predict every case, or score a folder of references that holds only the predicted cases."
        )
    return [(case, pred[case], ref[case]) for case in sorted(pred)]


def class_names_of(path: str | os.PathLike[str]) -> tuple[list[str], int | None]:
    """Class names by id from a ``dataset.json`` (nnU-Net's ``labels``, name -> id, or a prepared folder's
    ``class_names``), and the value that marks voxels without annotation (nnU-Net's ignore label), or None.

    Raises:
        InputError: The file holds neither, ids that are not consecutive from 0, a region, or an ignore label that is
            not the highest id.
    """
    path = Path(path)
    data = read_json(path, "give the dataset.json of the references' labels.")
    if isinstance(data, dict) and isinstance(data.get("class_names"), list) and data["class_names"]:
        ignore = data.get("ignore_label")
        return [str(name) for name in data["class_names"]], ignore if isinstance(ignore, int) else None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path} holds neither nnU-Net's 'labels' (name -> id) nor 'class_names'.")
    return label_ids(labels, path)


def _read_labels(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    array, meta = read_image(path, as_label=True)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path} holds values that are not class ids (non-integer or non-finite).")
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InputError(f"{path} holds {array.dtype} values; a label map holds integer class ids.")
    return array.astype(np.int64, copy=False), meta


def _checked_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    num_classes: int | None,
    affine_tolerance: float,
    ignore_label: int | None = None,
) -> Iterator[tuple[str, Path, Path, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Each pair read and checked: its grid, and its labels within ``num_classes`` (when given; a reference may
    also hold ``ignore_label``)."""
    for case, pred_path, ref_path in pairs:
        pred, pred_meta = _read_labels(pred_path)
        ref, ref_meta = _read_labels(ref_path)
        if pred.shape != ref.shape:
            raise InputError(f"{pred_path} has shape {pred.shape} but its reference {ref_path} has {ref.shape}.")
        difference = float(np.max(np.abs(np.asarray(pred_meta["affine"]) - np.asarray(ref_meta["affine"]))))
        if difference > affine_tolerance:
            raise InputError(
                f"{pred_path} lies on another grid than its reference {ref_path} (affines differ by up to "
                f"{difference:.4g} mm, more than {affine_tolerance:g}); resample it onto the reference's grid."
            )
        for path, array in ((pred_path, pred), (ref_path, ref)):
            if array is ref and ignore_label is not None:
                array = array[array != ignore_label]
                if not array.size:
                    continue
            low, high = int(array.min()), int(array.max())
            if low < 0 or (num_classes is not None and high >= num_classes):
                raise InputError(
                    f"{path} holds labels {low}..{high}, outside the classes 0..{(num_classes or 1) - 1}; give the "
                    "dataset.json of these labels (--labels) or fix the file."
                )
        yield case, pred_path, ref_path, pred, ref, ref_meta


def evaluate_folder(
    predictions: str | os.PathLike[str],
    references: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE_MM,
    affine_tolerance: float = AFFINE_TOLERANCE_MM,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score a folder of label maps against a folder of references; returns ``summary.json``'s content.

    Args:
        predictions: The folder of predicted label maps.
        references: The folder of reference label maps.
        output: The folder of the reports (summary.json, per_case.csv, summary.md).
        labels: A ``dataset.json`` naming the classes (nnU-Net's ignore label there: its voxels are scored by no
            metric); None: classes 0 to the largest label found.
        protocols: The metric protocols (both by default).
        nsd_tolerance: NSD tolerance in mm: one value or one per foreground class.
        affine_tolerance: The largest difference (mm) between a prediction's and its reference's affine entries.
        overwrite: Replace reports ``output`` already holds.

    Raises:
        InputError: Unpaired files, grids that differ, labels outside the classes (the file is named); nothing is
            written then.
        FileExistsError: ``output`` holds reports and ``overwrite`` is False.

    Example:
        >>> summary = evaluate_folder("nnunet_predictions/", "labelsTs/", "eval/", labels="dataset.json")
        ... # doctest: +SKIP
        >>> summary["foreground_mean"]["Dice"], summary["mean"]["1"]["HD95"]  # doctest: +SKIP
    """
    existing = [name for name in REPORTS if (Path(output) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{Path(output) / existing[0]} already exists; nothing was written. Pass --overwrite to replace the "
            "reports, or choose another output folder."
        )
    pairs = pair_files(predictions, references)
    names, ignore_label = class_names_of(labels) if labels is not None else (None, None)
    if names is None:  # one pass to find the classes (and check every file) before scoring
        largest = max(int(max(p.max(), r.max())) for *_, p, r, _ in _checked_pairs(pairs, None, affine_tolerance))
        names = ["background", *(f"class_{i}" for i in range(1, max(largest, 1) + 1))]
        log.info("no --labels: scoring classes 1..%d, the largest label found", len(names) - 1)
    cases = []
    for case, pred_path, ref_path, pred, ref, meta in _checked_pairs(pairs, len(names), affine_tolerance, ignore_label):
        spacing = tuple(meta["spacing"]) if len(meta.get("spacing", ())) == pred.ndim else (1.0,) * pred.ndim
        metrics = score_volume(
            pred,
            ref,
            len(names),
            spacing=spacing,
            protocols=protocols,
            nsd_tolerance=nsd_tolerance,
            ignore_label=ignore_label,
        )
        cases.append(CaseScores(case, metrics, str(pred_path), str(ref_path), meta.get("format") != "picture"))
    summary = EvaluationSummary.of(cases, names, protocols, nsd_tolerance)
    extra = {
        "predictions": str(predictions),
        "references": str(references),
        "labels": None if labels is None else str(labels),
        "affine_tolerance_mm": affine_tolerance,
    }
    with output_lock(output, "evaluate"):
        remove_stale_temporaries(output)
        return write_summary(summary, output, extra)
