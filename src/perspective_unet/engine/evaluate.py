"""Evaluation of a model on prepared volumes with the papers' (``legacy``) and the ``corrected`` protocol.

Each volume is predicted slice by slice in batches (the model's outputs do not depend on the batch), the labels are
brought back to the volume's grid, and every foreground class is scored in 3D with
:func:`perspective_unet.metrics.score_case`. See ``docs/metrics.md`` for the rules of both protocols.

Reading the next volume and scoring the previous one run on worker threads while the model predicts, so on a GPU
the device does not wait for files or for the surface-distance computations.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from perspective_unet.data import VolumeDataset
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.inference import model_device
from perspective_unet.engine.inferers import inferer_for
from perspective_unet.engine.runtime import DistributedContext, check_memory, resolve_device
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec
from perspective_unet.metrics import PROTOCOLS, aggregate, score_case
from perspective_unet.outputs import output_lock, remove_stale_temporaries, write_all
from perspective_unet.plan import Plan
from perspective_unet.runs import ModelSource, load
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.table import format_table

__all__ = ["REPORTS", "evaluate", "evaluate_model", "write_reports"]

REPORTS = ("summary.json", "per_case.csv", "summary.md")


def evaluate_model(
    model: torch.nn.Module,
    dataset: VolumeDataset,
    plan: Plan,
    settings: InferenceSettings | None = None,
    *,
    num_classes: int,
    protocols: Sequence[str] = PROTOCOLS,
    class_names: Sequence[str] | None = None,
    ctx: DistributedContext | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict and score every volume of ``dataset``.

    Args:
        model: The segmentation model, on the device to run on (put in eval mode here; its training mode is restored
            at the end).
        dataset: Volumes with labels.
        plan: The model's plan (protocol, spacing, window, intensity scaling, context slices).
        settings: Batch size, mirroring, resampler, autocast, and the plan's overrides (patch size, overlap).
        num_classes: Classes, background included.
        protocols: ``legacy`` and/or ``corrected``.
        class_names: Names indexed by class id (background first).
        ctx: Distributed context; volumes are split across processes and the scores gathered on every process.
        progress: Show a progress bar.

    Returns:
        ``{"per_case": [{"case", "spacing_known", protocol: scores, ...}], protocol: aggregate(...), ...}``.
    """
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    ctx = ctx or DistributedContext()
    inferer = inferer_for(plan, settings)
    was_training = model.training
    model.eval()
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    scored: list[Future] = []
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
                prediction = inferer(model, item["image"], spacing=None if spacing is None else spacing[1:])
            except InputError as exc:
                raise InputError(f"case {item['case']} of {dataset.root}: {exc}") from None
            scored.append(workers.submit(_score_row, item, prediction, num_classes, protocols))
        rows = [future.result() for future in scored]
    model.train(was_training)
    rows = sorted(ctx.gather(rows), key=lambda r: r["case"])
    result: dict[str, Any] = {"per_case": rows}
    for protocol in protocols:
        result[protocol] = aggregate([r[protocol] for r in rows], class_names, protocol=protocol)
    return result


def _prefetch(dataset: VolumeDataset, indices: Sequence[int], workers: ThreadPoolExecutor) -> Iterator[dict]:
    """``dataset[i]`` for each index, the next one read on a worker while the caller works on the current one."""
    pending = workers.submit(dataset.__getitem__, indices[0]) if indices else None
    for position in range(len(indices)):
        item = pending.result()
        if position + 1 < len(indices):
            pending = workers.submit(dataset.__getitem__, indices[position + 1])
        yield item


def _score_row(item: dict[str, Any], prediction: Any, num_classes: int, protocols: Sequence[str]) -> dict[str, Any]:
    spacing = item.get("spacing")
    row: dict[str, Any] = {"case": item["case"], "spacing_known": spacing is not None}
    for protocol in protocols:
        row[protocol] = score_case(
            prediction,
            item["label"],
            num_classes,
            protocol=protocol,
            spacing=tuple(spacing) if spacing is not None else (1.0,) * prediction.ndim,
        )
    return row


def _finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _per_class_by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for entry in summary["per_class"].values():
        fields = {k: _finite_or_none(v) for k, v in entry.items() if k != "name"}
        out[entry["name"]] = fields
    return out


def write_reports(
    result: dict[str, Any], output: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``output`` (all three or none); returns the
    summary dict.

    ``summary.json`` holds, at the top level, ``mean_dice`` (in [0, 1]) and ``mean_hd95`` of the legacy protocol and
    ``per_class`` values by class name; the corrected protocol's numbers sit under ``corrected``.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    legacy, corrected = result.get("legacy"), result.get("corrected")
    main = legacy or corrected
    summary: dict[str, Any] = {
        "protocol": "legacy" if legacy else "corrected",
        "num_cases": main["num_cases"],
        "mean_dice": main["mean_dice"],
        "mean_hd95": main["mean_hd95"],
        "per_class": _per_class_by_name(main),
    }
    if legacy and corrected:
        summary["corrected"] = {
            "mean_dice": _finite_or_none(corrected["mean_dice"]),
            "mean_hd95": _finite_or_none(corrected["mean_hd95"]),
            "per_class": _per_class_by_name(corrected),
            "undefined": corrected["undefined"],
            "spacing_known_cases": sum(r["spacing_known"] for r in result["per_case"]),
            "hd95_units": "mm",
        }
    summary["hd95_units"] = "voxels" if legacy else "mm"
    summary.update(extra or {})

    def write_per_case(path: Path) -> None:
        protocols = [p for p in PROTOCOLS if p in result]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "protocol", "class_id", "class_name", "dice", "hd95"])
            for row in result["per_case"]:
                for protocol in protocols:
                    for class_id, scores in row[protocol].items():
                        name = result[protocol]["per_class"][class_id]["name"]
                        writer.writerow([row["case"], protocol, class_id, name, scores["dice"], scores["hd95"]])

    # The three reports appear together or not at all (a full disk must not leave a summary without its cases).
    write_all(
        {
            output / "per_case.csv": write_per_case,
            output / "summary.json": lambda path: path.write_text(json.dumps(summary, indent=2)),
            output / "summary.md": lambda path: path.write_text(summary_markdown(result)),
        }
    )
    return summary


def _fmt(value: float, scale: float = 1.0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * scale:.2f}"


def summary_markdown(result: dict[str, Any]) -> str:
    """Tables laid out like the paper's: DSC (x100) and HD95, then DSC per organ, one table per protocol."""
    parts = []
    titles = {
        "legacy": "Legacy protocol (as in the papers; HD95 in voxels, (1, 0) / (0, 0) rules for empty masks)",
        "corrected": "Corrected protocol (HD95 in mm; undefined values left out and counted)",
    }
    for protocol in PROTOCOLS:
        if protocol not in result:
            continue
        summary = result[protocol]
        names = [e["name"] for e in summary["per_class"].values()]
        header = ["cases", "DSC", "HD95", *names]
        row = [summary["num_cases"], _fmt(summary["mean_dice"], 100), _fmt(summary["mean_hd95"])]
        row += [_fmt(e["dice"], 100) for e in summary["per_class"].values()]
        text = f"## {titles[protocol]}\n\n" + format_table(header, [row], markdown=True) + "\n"
        if protocol == "corrected":
            hd_row = ["HD95", *[_fmt(e["hd95"]) for e in summary["per_class"].values()]]
            undefined = [
                "undefined Dice / HD95",
                *[f"{e['dice_undefined']} / {e['hd95_undefined']}" for e in summary["per_class"].values()],
            ]
            text += "\n" + format_table(["", *names], [hd_row, undefined], markdown=True) + "\n"
        parts.append(text)
    return "# Evaluation\n\n" + "\n".join(parts)


def evaluate(
    source: ModelSource | Sequence[ModelSource],
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOLS,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on a prepared dataset's volumes and write the reports; returns ``summary.json``'s dict.

    ``source`` is anything :func:`perspective_unet.runs.load` takes: a checkpoint, a model folder, a run folder, a
    folder of fold runs or several of these (their ensemble, the mean of their probabilities, is evaluated).
    ``settings`` give the device, batch size, mirroring, resampler and the plan's overrides (the prepared volumes are
    already normalized and canonical: the settings of new images do not apply).

    Existing reports in ``output`` are replaced only with ``overwrite``; the folder is locked while the command
    runs.

    Raises:
        FileExistsError: ``output`` holds reports and ``overwrite`` is False (checked before any work).

    Example:
        >>> summary = evaluate("runs/synapse/best.pt", "prepared/Synapse", "runs/synapse/eval")  # doctest: +SKIP
        >>> summary["mean_dice"], summary["corrected"]["mean_hd95"]  # doctest: +SKIP
    """
    settings = settings or InferenceSettings()
    existing = [name for name in REPORTS if (Path(output) / name).exists()]
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
        dataset = VolumeDataset(layout, split=split)
        if len(dataset) == 0:
            raise InputError(f"{data} has no {split!r} volumes to evaluate; choose another --split.")
        plan = settings.plan_for(info.plan or Plan("paper", info.img_size, IntensitySpec("unit")))
        height, width = plan.patch_size
        check_memory(
            model,
            settings.batch_size * height * width,
            model_device(model),
            training=False,
            what=f"evaluate with {settings.batch_size} x {height} x {width} pixels per forward pass",
        )
        result = evaluate_model(
            model,
            dataset,
            plan,
            settings,
            num_classes=num_classes,
            protocols=protocols,
            class_names=list(layout.info.class_names),
            progress=progress,
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
        }
        return write_reports(result, output, extra=extra)
