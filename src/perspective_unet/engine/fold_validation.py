"""Out-of-fold predictions: a cross-validation fold's training ends by predicting its held-out cases.

As nnU-Net does, the final weights (not ``best.pt``, which was chosen on these very cases) predict each held-out case
with the plan's inference, and the fold's run folder receives ``validation/`` (names in
:class:`~perspective_unet.runs.RunFolder`)::

    fold_K/validation/
      <case>.nii.gz                 the label map on the case's own grid (the raw file's shape, affine, orientation)
      <case>_probabilities.npz      float16 class probabilities on the same grid (ensembles in ``find-best`` read them)
      summary.json, per_case.csv, summary.md    the scores (:func:`perspective_unet.evaluation.write_summary`)

The folder is written beside the run under a temporary name and swapped in whole, so it is never half-written; a
resumed run that trains further replaces it.

A held-out case's "own grid" comes from the geometry the prepared data record for it (``geometry.json`` or the
volume's attributes); :func:`to_own_grid` and :func:`from_own_grid` move arrays between it and the canonical
(Z, H, W) grid the model sees. Data without geometry (the circulating TransUNet files) keep the canonical grid.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data import VolumeDataset
from perspective_unet.data.folds import Fold
from perspective_unet.data.io import write_label_map, write_probabilities
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.orientation import from_canonical, to_canonical, uncrop_canonical
from perspective_unet.engine.evaluate import evaluate_model
from perspective_unet.evaluation import EvaluationSummary, write_summary
from perspective_unet.outputs import TEMPORARY_PREFIX, write_all
from perspective_unet.runs import RunFolder
from perspective_unet.runtime.inference_settings import InferenceSettings

__all__ = ["from_own_grid", "own_grid_meta", "predict_held_out", "to_own_grid"]

log = logging.getLogger(__name__)


def _has_geometry(attrs: Mapping[str, Any]) -> bool:
    return "affine" in attrs and "original_shape" in attrs


def own_grid_meta(attrs: Mapping[str, Any], canonical_shape: Sequence[int], spacing: Sequence[float] | None) -> dict:
    """What :func:`~perspective_unet.data.io.write_label_map` needs to write a case on its own grid.

    Args:
        attrs: The case's geometry attributes (a dataset item's ``meta``).
        canonical_shape: The (Z, H, W) shape the model saw.
        spacing: The canonical spacing (z, y, x) in mm, for data without geometry.
    """
    if _has_geometry(attrs):
        return {
            "affine": np.asarray(attrs["affine"], dtype=np.float64),
            "shape": tuple(int(v) for v in np.ravel(attrs["original_shape"])),
            "orientation": str(attrs.get("orientation") or ""),
        }
    size = tuple(spacing) if spacing is not None else (1.0,) * len(canonical_shape)
    return {"affine": np.diag([*size, 1.0]), "shape": tuple(canonical_shape)}


def to_own_grid(array: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """A canonical (Z, H, W) array (or a block of it, ``crop_z``) on the case's own grid; unchanged without
    geometry."""
    if not _has_geometry(attrs):
        return array
    return from_canonical(uncrop_canonical(array, dict(attrs)), dict(attrs), str(attrs.get("orientation") or "SPL"))


def from_own_grid(array: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """The inverse of :func:`to_own_grid`: an array on the case's own grid back to the canonical grid (its block)."""
    if not _has_geometry(attrs):
        return np.asarray(array)
    canonical = to_canonical(np.asarray(array), dict(attrs), str(attrs.get("orientation") or "SPL"))
    if "crop_z" in attrs:
        start, stop = (int(v) for v in np.ravel(attrs["crop_z"]))
        canonical = canonical[start:stop]
    return canonical


def _case_writer(staging: Path, run: RunFolder, class_names: Sequence[str]) -> Any:
    """Writes a case's label map and probabilities into ``staging``; returns where the label map will lie once the
    folder is swapped in."""

    def save(item: dict[str, Any], labels: np.ndarray, probabilities: np.ndarray | None) -> str:
        attrs, case = item["meta"], item["case"]
        meta = own_grid_meta(attrs, labels.shape, item.get("spacing"))
        own_labels = to_own_grid(labels, attrs)
        writers = {staging / run.validation_labels(case).name: lambda path: write_label_map(own_labels, meta, path)}
        if probabilities is not None:
            own = np.stack([to_own_grid(p, attrs) for p in probabilities])
            writers[staging / run.validation_probabilities(case).name] = lambda path: write_probabilities(
                own, meta, path, class_names
            )
        write_all(writers)
        return str(run.validation_labels(case))

    return save


def predict_held_out(
    model: Any,
    fold: Fold,
    data: str,
    output: str | Path,
    plan: Any,
    class_names: Sequence[str],
    *,
    batch_size: int = 16,
    extra: Mapping[str, Any] | None = None,
) -> EvaluationSummary | None:
    """Predict a fold's held-out cases into ``output/validation`` and score them (see the module docstring).

    Args:
        model: The trained model (its final weights), on the device to run on.
        fold: The fold; nothing is done for a fold without held-out cases (``fold_all``).
        data: The prepared dataset folder.
        output: The fold's run folder.
        plan: The run's plan.
        class_names: Names by class id, background first.
        batch_size: Slices or windows per forward pass.
        extra: Entries for ``summary.json`` beside the fold's own (what was trained, after how many epochs).

    Returns:
        The scores, or None for a fold without held-out cases.
    """
    if not fold.val:
        return None
    run = RunFolder(output)
    dataset = VolumeDataset(open_dataset(data), cases=list(fold.val))
    staging = run.path / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-validation"
    staging.mkdir(parents=True)
    try:
        settings = InferenceSettings(batch_size=batch_size)
        summary = evaluate_model(
            model,
            dataset,
            plan,
            settings,
            num_classes=len(class_names),
            class_names=class_names,
            progress=False,
            save=_case_writer(staging, run, class_names),
            save_probabilities=True,
        )
        record = {
            "fold": fold.name,
            "splits_file": fold.splits_file,
            "splits_sha256": fold.splits_sha256,
            "data": str(data),
            "split": "val",
            "plan": plan.to_dict(),
            "tta": settings.tta,
            **(extra or {}),
        }
        write_summary(summary, staging, record)
        _swap_in(staging, run.validation)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    foreground = summary.foreground_mean()
    log.info(
        "%s: out-of-fold predictions of its %d held-out cases in %s (foreground mean Dice %.4f)",
        fold.name,
        len(fold.val),
        run.validation,
        foreground["Dice"],
    )
    return summary


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` where ``target`` is, the old ``target`` (if any) removed only after the new one is in place."""
    old = target.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-old-{target.name}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
