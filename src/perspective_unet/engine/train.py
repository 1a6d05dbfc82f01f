"""Training with the paper's recipe: SGD with per-iteration poly decay, 0.4 CE + 0.6 Dice, augmentation, validation
on volumes with the evaluation metric, exact resumption, TensorBoard and CSV logs, optional DDP under torchrun.

The loop reads top to bottom: config -> data -> model -> optimiser -> (resume) -> epochs -> checkpoints.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from perspective_unet.config import TrainConfig
from perspective_unet.data import AugmentationConfig, SliceDataset, VolumeDataset, read_dataset_info, seed_worker
from perspective_unet.data.patches import PatchDataset
from perspective_unet.data.planning import plan_for_training
from perspective_unet.data.spacing_augmentation import SpacingAugmentationConfig
from perspective_unet.engine.evaluate import evaluate_model
from perspective_unet.engine.runtime import (
    DistributedContext,
    check_memory,
    compile_model,
    get_rng_state,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from perspective_unet.engine.visualize import overlay_panel
from perspective_unet.errors import InputError
from perspective_unet.losses import SegmentationLoss
from perspective_unet.models.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint_file
from perspective_unet.models.perspective_unet import check_input_size
from perspective_unet.models.registry import create_model
from perspective_unet.outputs import atomic_write, output_lock, remove_stale_temporaries
from perspective_unet.plan import Plan
from perspective_unet.schedule import poly_lr

__all__ = ["TrainResult", "resume_config", "run_files", "train"]

log = logging.getLogger(__name__)

LOG_FIELDS = (
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "train_ce",
    "train_dice_loss",
    "val_mean_dice",
    "val_mean_hd95",
    "epoch_seconds",
)


@dataclass
class TrainResult:
    """Where a run left its files and how it ended."""

    output: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    epochs_completed: int
    iterations: int
    best_val_dice: float | None


def _autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _checkpoint_payload(
    model: torch.nn.Module,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    epoch: int,
    iteration: int,
    best_val_dice: float | None,
    dataset_info: dict[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    return {
        "plan": plan.to_dict(),
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "iteration": iteration,
        "best_val_dice": best_val_dice,
        "train_config": config.to_dict(),
        "dataset": dataset_info,
        "rng": get_rng_state(),
    }


def _dataset_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of dataset.json that prediction needs later (classes, modality, intensity normalisation)."""
    keep = ("name", "num_classes", "class_names", "modality", "normalisation", "intensity", "orientation")
    return json.loads(json.dumps({k: info[k] for k in keep if k in info}))


def _training_set(config: TrainConfig, plan: Plan) -> SliceDataset | PatchDataset:
    """The training slices (paper protocol) or patches (spacing protocol), augmented as the config says."""
    try:
        if plan.protocol == "paper":
            paper = AugmentationConfig.from_dict(config.augmentation) if config.augment else None
            return SliceDataset(config.data, split="train", img_size=plan.patch_size, augmentation=paper,
                                seed=config.seed, context_slices=plan.context_slices, intensity=plan.intensity)
        spacing = SpacingAugmentationConfig.from_dict(config.augmentation) if config.augment else None
    except ValueError as exc:
        raise InputError(f"training config, augmentation: {exc}") from None
    return PatchDataset(config.data, plan, spacing, seed=config.seed)


def _foreground_weights(dataset: SliceDataset | PatchDataset, weight: float) -> torch.Tensor | None:
    """Sampling weight per slice: ``weight`` for slices holding any foreground, 1 otherwise (None when uniform)."""
    if weight == 1.0:
        return None
    has_foreground = [bool(dataset.load_slice(i)[1].any()) for i in range(len(dataset))]
    return torch.tensor([weight if f else 1.0 for f in has_foreground], dtype=torch.float64)


def _make_loader(
    dataset: SliceDataset | PatchDataset,
    config: TrainConfig,
    ctx: DistributedContext,
    epoch: int,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    # A generator seeded per epoch (and process) fixes both the order and the workers' seeds, so a resumed run sees
    # the same batches as an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed + 7919 * epoch + ctx.rank)
    if weights is not None:
        sampler = WeightedRandomSampler(weights, len(dataset) // ctx.world_size, replacement=True, generator=generator)
    elif ctx.enabled:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        drop_last=config.drop_last_batch and len(dataset) >= config.batch_size * ctx.world_size,
        persistent_workers=False,
    )


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.base_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})


# What makes a folder a run (its results), and what --overwrite removes with them.
RUN_FILES = ("last.pt", "best.pt", "train_log.csv")
RUN_RECORDS = ("config.json", "tensorboard")
# Temporary files a killed run leaves: this version's names, and the checkpoint temporaries of earlier versions.
STALE_PATTERNS = (".tmp-*", ".last.pt.*.tmp", ".best.pt.*.tmp")
# Settings a resumed run may change: where it runs and how long; everything else must stay what the run was.
RESUME_MAY_CHANGE = ("data", "output", "device", "num_workers", "val_batch_size", "log_every", "time_limit_minutes",
                     "max_iterations")


def run_files(output: Path) -> list[str]:
    """The files of a run present in ``output``."""
    return [name for name in RUN_FILES if (output / name).exists()]


def _saved_plan(resume: str | Path | None) -> Plan | None:
    if resume is None:
        return None
    saved = load_checkpoint_file(resume).get("plan")
    return None if saved is None else Plan.from_dict(saved)


def resume_config(checkpoint: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The training config saved in a run's ``last.pt``, with the settings a resumed run may change.

    Args:
        checkpoint: The run's ``last.pt``; the run continues in its folder unless ``given`` names another output.
        given: Settings given for the resumed run (from the command line and a ``--config`` file). A value equal to
            the saved one is fine; ``data``, ``output``, ``device``, ``num_workers``, ``val_batch_size``,
            ``log_every``, ``time_limit_minutes`` and ``max_iterations`` may change; ``epochs`` may rise (the poly
            schedule then runs from the saved iteration to the new total, so the learning rate rises again); any
            other difference is refused.

    Raises:
        InputError: The file is not a training checkpoint, or a given setting differs from the saved one.
    """
    state = load_checkpoint_file(checkpoint)
    if "train_config" not in state or "optimizer" not in state:
        raise InputError(f"{checkpoint} is not a training checkpoint (last.pt) of this project; cannot resume from "
                         "it.")
    saved = TrainConfig.from_dict(dict(state["train_config"]))
    # The run lives where its last.pt is now (a run folder may have been moved or copied since).
    changes: dict[str, Any] = {"output": str(Path(checkpoint).parent)}
    for name, value in given.items():
        if value is None:
            continue
        merged = {**getattr(saved, name), **value} if isinstance(value, dict) else value
        candidate = getattr(TrainConfig.from_dict({**saved.to_dict(), name: merged}), name)
        current = getattr(saved, name)
        if candidate == current:
            continue
        if name in RESUME_MAY_CHANGE or (name == "epochs" and candidate > current):
            changes[name] = candidate
            continue
        hint = " (epochs may only rise)" if name == "epochs" else ""
        raise InputError(f"{name.replace('_', '-')} {candidate!r} differs from the run's saved {current!r} "
                         f"({checkpoint}){hint}; resume without it, or start a new run in another folder.")
    return dataclasses.replace(saved, **changes)


def train(config: TrainConfig, *, resume: str | Path | None = None, overwrite: bool = False) -> TrainResult:
    """Train a model as ``config`` describes; returns where the checkpoints are.

    Args:
        config: The run. ``config.data`` is a prepared dataset (``perspective-unet prepare``).
        resume: A ``last.pt`` of an earlier run of the same config: training continues exactly where it stopped
            (weights, optimiser, AMP scaler, iteration, RNG states; the data order is seeded per epoch).
            :func:`resume_config` gives that run's config.
        overwrite: Replace the run an output folder already holds (its checkpoints, log and events).

    The output folder is locked while the run lasts; a folder that holds another run is refused unless ``resume``
    or ``overwrite`` says what to do with it. Under ``torchrun`` every process trains on its share of each epoch
    (DistributedDataParallel); validation volumes are split across processes and their scores gathered; only rank 0
    writes files.

    Raises:
        InputError: The output folder holds a run and neither ``resume`` nor ``overwrite`` is given, or another
            command is using it; and every bad input of the data, plan or config.

    Example:
        >>> from perspective_unet.config import TrainConfig
        >>> result = train(TrainConfig(data="prepared/Synapse", output="runs/synapse"))  # doctest: +SKIP
    """
    output = Path(config.output)
    found = run_files(output)
    if found and resume is None and not overwrite:
        raise InputError(f"{output} already holds a run ({', '.join(found)}); continue it with --resume "
                         f"{output / 'last.pt'}, choose another output folder, or pass --overwrite to replace it.")
    ctx = DistributedContext.from_environment(config.device)
    if not ctx.is_main:
        return _train(config, resume, ctx)
    with output_lock(output, "train"):
        remove_stale_temporaries(output, STALE_PATTERNS)
        if overwrite and resume is None:
            for path in (output / name for name in RUN_FILES + RUN_RECORDS):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        return _train(config, resume, ctx)


def _train(config: TrainConfig, resume: str | Path | None, ctx: DistributedContext) -> TrainResult:
    device = resolve_device(config.device, ctx.local_rank)
    output = Path(config.output)
    seed_everything(config.seed + ctx.rank)

    # Data, as the dataset's plan (with this run's overrides) says; the config keeps the resolved values.
    info = read_dataset_info(config.data)
    num_classes = int(info["num_classes"])
    saved_plan = _saved_plan(resume)
    plan = saved_plan or plan_for_training(config.data, info, protocol=config.protocol, patch_size=config.img_size,
                                           batch_size=config.batch_size, context_slices=config.context_slices)
    config = dataclasses.replace(config, protocol=plan.protocol, img_size=plan.patch_size,
                                 batch_size=plan.batch_size, context_slices=plan.context_slices)
    train_set = _training_set(config, plan)
    val_set = None
    if config.val_every > 0:
        try:
            val_set = VolumeDataset(config.data, split=config.val_split)
        except (FileNotFoundError, InputError):
            val_set = None
        if val_set is not None and len(val_set) == 0:
            val_set = None
        if val_set is None and ctx.is_main:
            log.info(
                "no %r volumes in %s: training without validation (best.pt is not written)",
                config.val_split,
                config.data,
            )

    # Model, loss, optimiser
    options = dict(config.model_options)
    in_channels = options.pop("in_channels", plan.in_channels)
    if in_channels != plan.in_channels and not options.get("repeat_gray_to_rgb"):
        raise InputError(f"model option in_channels={in_channels} differs from the plan's {plan.in_channels} input "
                         f"channel(s) (the slice and {plan.context_slices} context slices on each side).")
    model = create_model(config.model, in_channels=in_channels, num_classes=num_classes, **options)
    check_input_size(*plan.patch_size, divisor=model.config.size_divisor)
    height, width = plan.patch_size
    lean = config.compile and config.activation_memory_budget is not None  # keeps a share of the activations
    check_memory(model, config.batch_size * height * width, device, training=not lean,
                 what=f"training with batches of {config.batch_size} x {height} x {width}")
    model = model.to(device)
    loss_fn = SegmentationLoss(num_classes, ce_weight=config.ce_weight, dice_weight=config.dice_weight)
    optimizer = _make_optimizer(model, config)
    amp_dtype = _autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, iteration, best_val_dice = 0, 0, None
    if resume is not None:
        state = load_checkpoint_file(resume, map_location=device)
        if "optimizer" not in state or "train_config" not in state:
            raise InputError(f"{resume} is not a training checkpoint (last.pt) of this project; cannot resume from it.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration, best_val_dice = int(state["epoch"]), int(state["iteration"]), state["best_val_dice"]
        set_rng_state(state["rng"])
        if ctx.is_main:
            log.info("resumed from %s after epoch %d (iteration %d)", resume, start_epoch, iteration)

    core_model = model
    if config.compile:
        model = compile_model(model, activation_memory_budget=config.activation_memory_budget)
    if ctx.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampling_weights = _foreground_weights(train_set, config.foreground_sampling_weight)
    steps_per_epoch = math.ceil(
        len(_make_loader(train_set, config, ctx, 0, sampling_weights)) / config.grad_accum_steps
    )
    max_iterations = config.epochs * steps_per_epoch
    dataset_info = _dataset_summary(info)
    writer = None
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write(output / "config.json", lambda path: path.write_text(json.dumps(config.to_dict(), indent=2)))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output / "tensorboard"), purge_step=iteration if resume else None)

    try:
        last_path, best_path = output / "last.pt", output / "best.pt"
        started = time.monotonic()
        epochs_completed = start_epoch
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.monotonic()
            model.train()
            # Augmentation draws restart from a per-epoch seed (workers reseed from the loader's generator), so a
            # resumed run augments exactly as an uninterrupted one.
            train_set.reseed(epoch * 1000 + ctx.rank)
            loader = _make_loader(train_set, config, ctx, epoch, sampling_weights)
            totals = {"loss": 0.0, "ce": 0.0, "dice": 0.0}
            seen = 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not ctx.is_main, leave=False,
                       dynamic_ncols=True)
            optimizer.zero_grad(set_to_none=True)
            for step, batch in enumerate(bar):
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(images)
                parts = loss_fn.components(logits, labels)
                loss = parts["loss"]
                scaler.scale(loss / config.grad_accum_steps).backward()
                last_of_epoch = step + 1 == len(loader)
                if (step + 1) % config.grad_accum_steps == 0 or last_of_epoch:
                    lr = poly_lr(config.base_lr, iteration, max_iterations, config.lr_power)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    iteration += 1
                    if writer is not None and iteration % config.log_every == 0:
                        writer.add_scalar("train/loss", loss.item(), iteration)
                        writer.add_scalar("train/lr", lr, iteration)
                totals["loss"] += loss.item() * len(images)
                totals["ce"] += parts["ce"].item() * len(images)
                totals["dice"] += parts["dice"].item() * len(images)
                seen += len(images)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if config.max_iterations is not None and iteration >= config.max_iterations:
                    break
            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "lr": optimizer.param_groups[0]["lr"]}
            for key, name in (("loss", "train_loss"), ("ce", "train_ce"), ("dice", "train_dice_loss")):
                row[name] = ctx.mean(totals[key] / max(seen, 1), device)

            validate = val_set is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
            if validate:
                summary = evaluate_model(
                    core_model,
                    val_set,
                    num_classes=num_classes,
                    plan=plan,
                    batch_size=config.val_batch_size,
                    protocols=("legacy",),
                    ctx=ctx,
                    progress=False,
                    class_names=info.get("class_names"),
                )["legacy"]
                row["val_mean_dice"], row["val_mean_hd95"] = summary["mean_dice"], summary["mean_hd95"]
                if writer is not None:
                    writer.add_scalar("val/mean_dice", summary["mean_dice"], iteration)
                    writer.add_scalar("val/mean_hd95", summary["mean_hd95"], iteration)
                    for entry in summary["per_class"].values():
                        writer.add_scalar(f"val_dice/{entry['name']}", entry["dice"], iteration)
            row["epoch_seconds"] = round(time.monotonic() - epoch_start, 2)

            if ctx.is_main:
                payload = _checkpoint_payload(
                    core_model,
                    config,
                    optimizer,
                    scaler,
                    epoch=epoch + 1,
                    iteration=iteration,
                    best_val_dice=best_val_dice,
                    dataset_info=dataset_info,
                    plan=plan,
                )
                if validate and (best_val_dice is None or row["val_mean_dice"] > best_val_dice):
                    best_val_dice = row["val_mean_dice"]
                    payload["best_val_dice"] = best_val_dice
                    atomic_torch_save(payload, best_path)
                atomic_torch_save(payload, last_path)
                _append_log(output / "train_log.csv", row)
                if writer is not None:
                    writer.add_scalar("train/epoch_loss", row["train_loss"], iteration)
                    writer.add_image(
                        "train/panel",
                        overlay_panel(images[0], labels[0], logits[0].argmax(0)),
                        iteration,
                        dataformats="HWC",
                    )
                    writer.flush()
                message = f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f}"
                if validate:
                    message += f", val mean Dice {row['val_mean_dice']:.4f}, HD95 {row['val_mean_hd95']:.2f}"
                log.info("%s (%.1f s)", message, row["epoch_seconds"])
            ctx.barrier()
            epochs_completed = epoch + 1
            out_of_time = config.time_limit_minutes is not None and (time.monotonic() - started) / 60 >= (
                config.time_limit_minutes
            )
            if (config.max_iterations is not None and iteration >= config.max_iterations) or out_of_time:
                break

    finally:
        # A failed run (a full disk, an interrupt) closes its event file too, so nothing holds the folder open.
        if writer is not None:
            writer.close()
        ctx.close()
    return TrainResult(
        output=output,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        epochs_completed=epochs_completed,
        iterations=iteration,
        best_val_dice=best_val_dice,
    )
