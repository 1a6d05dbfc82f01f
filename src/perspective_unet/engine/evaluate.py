"""Evaluation of a model on prepared volumes with the papers' (``legacy``) and the ``corrected`` protocol.

Each volume is predicted slice by slice in batches (the model's outputs do not depend on the batch), the labels are
brought back to the volume's grid, and every foreground class is scored in 3D
(:func:`perspective_unet.evaluation.score_volume`: nnU-Net's counts, Dice and IoU, HD95 in mm and the normalized
surface Dice, the papers' Dice and HD95 in voxels). The reports are written by the project's one summary writer,
:func:`perspective_unet.evaluation.write_summary`. See ``docs/metrics.md`` for the rules and the schema.

Reading the next volume and scoring the previous one run on worker threads while the model predicts, so on a GPU
the device does not wait for files or for the surface-distance computations.

A checkpoint of a cross-validation fold records its held-out cases: ``split="val"`` scores exactly those (never a
case the fold trained on).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from perspective_unet.data import VolumeDataset
from perspective_unet.data.io import write_label_map
from perspective_unet.data.layouts.base import DatasetLayout
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.inference import model_device
from perspective_unet.engine.inferers import inferer_for
from perspective_unet.engine.report import PREDICTIONS_DIR, REPORT_FILE, report_evaluation
from perspective_unet.engine.runtime import DistributedContext, check_memory, resolve_device
from perspective_unet.errors import InputError
from perspective_unet.evaluation import (
    DEFAULT_NSD_TOLERANCE_MM,
    REPORTS,
    CaseScores,
    EvaluationSummary,
    score_volume,
    write_summary,
)
from perspective_unet.intensity import IntensitySpec
from perspective_unet.metrics import PROTOCOLS
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.ops.precision import inference_dtype
from perspective_unet.outputs import output_lock, remove_stale_temporaries
from perspective_unet.plan import Plan
from perspective_unet.runs import ModelSource, load
from perspective_unet.runtime.inference_settings import InferenceSettings

__all__ = ["SavePrediction", "evaluate", "evaluate_model"]

log = logging.getLogger(__name__)

# Writes one case's prediction (the dataset item, its labels, its probabilities or None) and returns the file.
SavePrediction = Callable[[dict[str, Any], np.ndarray, "np.ndarray | None"], str]


def evaluate_model(
    model: torch.nn.Module,
    dataset: VolumeDataset,
    plan: Plan,
    settings: InferenceSettings | None = None,
    *,
    num_classes: int,
    protocols: Sequence[str] = PROTOCOLS,
    class_names: Sequence[str] | None = None,
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE_MM,
    ctx: DistributedContext | None = None,
    progress: bool = True,
    save: SavePrediction | None = None,
    save_probabilities: bool = False,
    plan_source: str | os.PathLike[str] | None = None,
) -> EvaluationSummary:
    """Predict and score every volume of ``dataset``.

    Args:
        model: The segmentation model, on the device to run on (put in eval mode here; its training mode is restored
            at the end).
        dataset: Volumes with labels.
        plan: The model's plan (protocol, spacing, window, intensity scaling, context slices).
        settings: Batch size, mirroring, resampler, and the plan's overrides (patch size, overlap).
        num_classes: Classes, background included.
        protocols: ``legacy`` and/or ``corrected`` (see :func:`~perspective_unet.evaluation.score_volume`).
        class_names: Names indexed by class id (background first); default ``class_<id>``.
        nsd_tolerance: NSD tolerance in mm, one value or one per foreground class.
        ctx: Distributed context; volumes are split across processes and the scores gathered on every process.
        progress: Show a progress bar.
        save: Called with each case's item, labels and probabilities (on a worker thread); returns the file written,
            recorded as the case's ``prediction_file``.
        save_probabilities: Predict the probabilities too, for ``save``.
        plan_source: The file the plan was read from, named when a size it sets cannot be met.

    Voxels the dataset marks with its ignore label (``dataset.info.ignore_label``) are left out of the scores.

    Returns:
        The per-case scores (gathered from every process).
    """
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    ctx = ctx or DistributedContext()
    inferer = inferer_for(plan, settings, plan_source=plan_source)
    # Voxels the dataset marks as not annotated are left out of the scores (evaluation.score_volume).
    ignore_label = dataset.info.ignore_label
    was_training = model.training
    model.eval()
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    files = dict(dataset.volumes)
    scored: list[Future] = []
    saved: list[Future] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="evaluate") as workers:
        loaded = _prefetch(dataset, indices, workers)
        for item in tqdm(
            loaded, total=len(indices), desc="evaluate", disable=not (progress and ctx.is_main), dynamic_ncols=True
        ):
            if item["label"] is None:
                raise InputError(
                    f"case {item['case']} of {dataset.root} has no label; evaluation needs labeled volumes."
                )
            spacing = item.get("spacing")
            try:
                result = inferer(
                    model,
                    item["image"],
                    spacing=None if spacing is None else spacing[1:],
                    return_probabilities=save is not None and save_probabilities,
                )
            except InputError as exc:
                raise InputError(f"case {item['case']} of {dataset.root}: {exc}") from None
            labels, probabilities = result if isinstance(result, tuple) else (result, None)
            reference = str(files.get(item["case"], dataset.root))
            job = (item, labels, probabilities, num_classes, protocols, nsd_tolerance, ignore_label, reference, save)
            scored.append(workers.submit(_score_case, *job))
        rows = [future.result() for future in scored]
        for future in saved:
            future.result()  # a failed write raises here
    model.train(was_training)
    rows = ctx.gather(rows)
    return EvaluationSummary.of(rows, names, protocols, nsd_tolerance)


def _prefetch(dataset: VolumeDataset, indices: Sequence[int], workers: ThreadPoolExecutor) -> Iterator[dict]:
    """``dataset[i]`` for each index, the next one read on a worker while the caller works on the current one."""
    pending = workers.submit(dataset.__getitem__, indices[0]) if indices else None
    for position in range(len(indices)):
        item = pending.result()
        if position + 1 < len(indices):
            pending = workers.submit(dataset.__getitem__, indices[position + 1])
        yield item


def _score_case(
    item: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    num_classes: int,
    protocols: Sequence[str],
    nsd_tolerance: float | Sequence[float],
    ignore_label: int | None,
    reference: str,
    save: SavePrediction | None,
) -> CaseScores:
    spacing = item.get("spacing")
    prediction_file = save(item, labels, probabilities) if save is not None else ""
    metrics = score_volume(
        labels,
        item["label"],
        num_classes,
        spacing=tuple(spacing) if spacing is not None else (1.0,) * labels.ndim,
        protocols=protocols,
        nsd_tolerance=nsd_tolerance,
        ignore_label=ignore_label,
    )
    return CaseScores(item["case"], metrics, prediction_file, reference, spacing is not None)


def evaluation_dataset(layout: DatasetLayout, split: str, info: InferenceInfo) -> VolumeDataset:
    """The volumes ``split`` stands for: a fold run's ``val`` is its own held-out cases, never a case it trained on.

    Raises:
        InputError: ``val`` asked of an ensemble of fold runs or of a run on every case, or a split without volumes.
    """
    if split == "val" and info.fold is None and info.train_config.get("fold") is not None:
        raise InputError(
            f"{info.sources[0]} is a fold run written before checkpoints recorded their held-out cases; --split val "
            "cannot tell them from its training cases. Score its fold with `perspective-unet crossval` after training "
            "it again, or evaluate it on the test split."
        )
    if split == "val" and info.fold is not None:
        if len(info.sources) > 1:
            raise InputError(
                f"--split val of an ensemble of fold runs ({info.sources[0]}, ...) would score cases the other folds "
                "trained on; score each fold's out-of-fold predictions with `perspective-unet crossval`."
            )
        if not info.held_out:
            raise InputError(
                f"{info.sources[0]} is {info.fold}, trained on every case: it has no validation cases; evaluate it "
                "on the test split."
            )
        log.info(
            "%s: --split val scores its %d held-out cases (splits %s)", info.fold, len(info.held_out), info.splits_file
        )
        return VolumeDataset(layout, cases=list(info.held_out))
    dataset = VolumeDataset(layout, split=split)
    if len(dataset) == 0:
        raise InputError(f"{layout.root} has no {split!r} volumes to evaluate; choose another --split.")
    return dataset


def evaluate(
    source: ModelSource | Sequence[ModelSource],
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOLS,
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE_MM,
    progress: bool = True,
    overwrite: bool = False,
    save_predictions: bool = False,
    report: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on a prepared dataset's volumes and write the reports; returns ``summary.json``'s dict.

    ``source`` is anything :func:`perspective_unet.runs.load` takes: a checkpoint, a model folder, a run folder, a
    folder of fold runs or several of these (their ensemble, the mean of their probabilities, is evaluated).
    ``settings`` give the device, batch size, mirroring, resampler and the plan's overrides (the prepared volumes are
    already normalized and canonical: the settings of new images do not apply). ``split="val"`` of a fold run scores
    the fold's held-out cases (see :func:`evaluation_dataset`).

    Existing reports in ``output`` are replaced only with ``overwrite``; the folder is locked while the command
    runs. ``save_predictions`` keeps each case's predicted labels as ``predictions/<case>.nii.gz`` (the prepared
    volume's canonical (Z, H, W) grid, its spacing on the diagonal of the affine); ``report`` keeps them too and
    writes ``report.html`` (:func:`perspective_unet.engine.report.report_evaluation`).

    Raises:
        FileExistsError: ``output`` holds reports and ``overwrite`` is False (checked before any work).

    Example:
        >>> summary = evaluate("runs/synapse/best.pt", "prepared/Synapse", "runs/synapse/eval")  # doctest: +SKIP
        >>> summary["foreground_mean"]["Dice"], summary["foreground_mean"]["HD95"]  # doctest: +SKIP
    """
    settings = settings or InferenceSettings()
    save_predictions = save_predictions or report
    names = (*REPORTS, *((PREDICTIONS_DIR,) if save_predictions else ()), *((REPORT_FILE,) if report else ()))
    existing = [name for name in names if (Path(output) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{Path(output) / existing[0]} already exists; nothing was written. Pass --overwrite to "
            "replace the reports, or choose another output folder."
        )
    with output_lock(output, "evaluate"):
        remove_stale_temporaries(output)
        device = settings.device
        loaded = load(source, device if isinstance(device, torch.device) else resolve_device(device))
        model, info = loaded.model, loaded.info
        layout = open_dataset(data)
        num_classes = model.config.num_classes
        if layout.info.num_classes != num_classes:
            raise InputError(
                f"the checkpoint {info.sources[0]} predicts {num_classes} classes but {data} has "
                f"{layout.info.num_classes}; evaluate it on data of the same label set."
            )
        dataset = evaluation_dataset(layout, split, info)
        plan = settings.plan_for(info.plan or Plan("paper", info.img_size, IntensitySpec("unit")))
        if plan.num_channels != layout.info.num_channels:
            raise InputError(
                f"the checkpoint {info.sources[0]} reads {plan.num_channels} input channel(s) but {data} holds images "
                f"of {layout.info.num_channels}; evaluate it on data of the same channels."
            )
        height, width = plan.patch_size
        check_memory(
            model,
            settings.batch_size * height * width,
            model_device(model),
            training=False,
            what=f"evaluate with {settings.batch_size} x {height} x {width} pixels per forward pass",
        )
        summary = evaluate_model(
            model,
            dataset,
            plan,
            settings,
            num_classes=num_classes,
            protocols=protocols,
            class_names=list(layout.info.class_names),
            nsd_tolerance=nsd_tolerance,
            progress=progress,
            plan_source=info.plan_source,
            save=_prediction_writer(Path(output) / PREDICTIONS_DIR) if save_predictions else None,
        )
        sources = [str(path) for path in loaded.sources]
        extra = {
            "checkpoint": sources[0] if len(sources) == 1 else sources,
            "data": str(data),
            "split": split,
            "plan": plan.to_dict(),
            "img_size": list(plan.patch_size),
            "tta": settings.tta,
            "resampler": settings.resampler,
            # What the forward passes computed in (``auto`` resolves by processor): a reader can tell runs apart.
            "precision": _computed_precision(settings, model_device(model)),
        }
        if info.fold is not None and split == "val":
            extra["fold"] = info.fold
        written = write_summary(summary, output, extra)
        if report:
            report_evaluation(output, overwrite=True)
        else:  # a page of the evaluation just replaced would show its scores beside the new summary
            (Path(output) / REPORT_FILE).unlink(missing_ok=True)
        return written


def _computed_precision(settings: InferenceSettings, device: torch.device) -> str:
    dtype = settings.amp_dtype or inference_dtype(settings.precision, device)
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def _prediction_writer(folder: Path) -> SavePrediction:
    """Keep each case's predicted labels as ``folder/<case>.nii.gz`` on the prepared volume's canonical grid."""

    def save(item: dict[str, Any], labels: np.ndarray, probabilities: np.ndarray | None) -> str:
        spacing = item.get("spacing")
        size = [float(s) for s in spacing] if spacing is not None else [1.0] * labels.ndim
        meta = {"affine": np.diag([*size, 1.0]), "shape": labels.shape}
        return str(write_label_map(labels, meta, folder / f"{item['case']}.nii.gz"))

    return save
