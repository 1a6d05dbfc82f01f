"""Training: the recipe for the data (the paper's, or one derived from the plan and size), per-iteration poly decay,
0.4 CE + 0.6 Dice, augmentation, validation on volumes with the evaluation metric, exact resumption, fine-tuning from
a trained model, a run folder with TensorBoard events, a CSV and a text log and a picture of the curves, optional DDP
under torchrun.

The loop reads top to bottom: set up the run (:func:`~perspective_unet.engine.training.setup_run`), then for each
epoch train, validate, write the checkpoints, the logs and the picture, and stop when the epochs, the iteration cap
or the time limit say so; a cross-validation fold's run then predicts its held-out cases
(:mod:`~perspective_unet.engine.fold_validation`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from perspective_unet.config import TrainConfig
from perspective_unet.engine.evaluate import evaluate_model
from perspective_unet.engine.finetune import InitSource, set_encoder_frozen, with_source_architecture
from perspective_unet.engine.fold_validation import predict_held_out
from perspective_unet.engine.run_log import TrainingLog, append_log, log_fields, read_log
from perspective_unet.engine.runtime import DistributedContext
from perspective_unet.engine.training import TrainingCheckpoint, TrainingRun, checkpoint_payload, setup_run
from perspective_unet.engine.training_data import make_loader
from perspective_unet.errors import InputError
from perspective_unet.models.checkpoint import atomic_torch_save
from perspective_unet.models.ops.precision import autocast
from perspective_unet.outputs import output_lock, remove_stale_temporaries
from perspective_unet.runs import STALE_PATTERNS, RunFolder
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.schedule import poly_lr
from perspective_unet.viz import overlay_panel
from perspective_unet.viz.progress import DICE_PREFIX, save_progress

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a run left its files and how it ended.

    Attributes:
        config: The run's config with every field resolved (plan, recipe, fine-tuning source's architecture).
    """

    config: TrainConfig
    output: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    epochs_completed: int
    iterations: int
    best_val_dice: float | None
    validation: Path | None = None


def train(
    config: TrainConfig,
    *,
    resume: TrainingCheckpoint | str | Path | None = None,
    overwrite: bool = False,
    before_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train a model as ``config`` describes; returns where the checkpoints are.

    Args:
        config: The run. ``config.data`` is a prepared dataset (``perspective-unet prepare``).
        resume: A ``last.pt`` of an earlier run of the same config (its path, or the file already read): training
            continues exactly where it stopped (weights, optimizer, AMP scaler, iteration, RNG states; the data order
            is seeded per epoch). :meth:`TrainingCheckpoint.config` gives that run's config. A fine-tuning run
            resumes as any other (its weights come from ``last.pt``, not ``init_from``).
        overwrite: Replace the run an output folder already holds (its checkpoints, logs and events).
        before_checkpoint: Called with the run folder on the main process before each epoch's checkpoints are
            written (the experiment runner writes a run's record with its first checkpoint, so that no checkpoint
            is ever without it).

    The output folder is locked while the run lasts; a folder that holds another run is refused unless ``resume``
    or ``overwrite`` says what to do with it. Everything logged goes to its ``training_log.txt`` too, progress bars
    show only on a terminal (a batch job's log gets one line per epoch), and ``progress.png`` is redrawn after every
    epoch. Under ``torchrun`` every process trains on its share of each epoch (DistributedDataParallel); validation
    volumes are split across processes and their scores gathered; only rank 0 writes files.

    Raises:
        InputError: The output folder holds a run and neither ``resume`` nor ``overwrite`` is given, or another
            command is using it; ``init_from`` is no single trained model or one of another architecture; and every
            bad input of the data, plan or config. Nothing is written then.

    Example:
        >>> from perspective_unet.config import TrainConfig
        >>> result = train(TrainConfig(data="prepared/Synapse", output="runs/synapse"))  # doctest: +SKIP
    """
    folder = RunFolder(config.output)
    found = [path.name for path in folder.results()]
    if found and resume is None and not overwrite:
        raise InputError(
            f"{folder.path} already holds a run ({', '.join(found)}); continue it with --resume "
            f"{folder.last}, choose another output folder, or pass --overwrite to replace it."
        )
    if resume is not None and not isinstance(resume, TrainingCheckpoint):
        resume = TrainingCheckpoint.read(resume)
    if resume is not None:
        config = resume.fill_open(config)
    init = None
    if config.init_from and resume is None:
        init = InitSource.read(config.init_from)
        config = with_source_architecture(config, init)
    ctx = DistributedContext.from_environment(config.device)
    if not ctx.is_main:
        return _train(config, resume, ctx, init, None)
    with output_lock(folder.path, "train"):
        remove_stale_temporaries(folder.path, STALE_PATTERNS)
        if overwrite and resume is None:
            for path in folder.records():
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        with TrainingLog(folder.training_log, append=resume is not None) as text_log:
            return _train(config, resume, ctx, init, before_checkpoint, text_log)


def _train(
    config: TrainConfig,
    resume: TrainingCheckpoint | None,
    ctx: DistributedContext,
    init: InitSource | None,
    before_checkpoint: Callable[[Path], None] | None,
    text_log: TrainingLog | None = None,
) -> TrainResult:
    run = setup_run(config, resume, ctx, init)
    if text_log is not None:
        text_log.start()
    started = time.monotonic()
    try:
        for epoch in range(run.start_epoch, run.config.epochs):
            _freeze_encoder(run, epoch)
            epoch_start = time.monotonic()
            row, sample = _train_one_epoch(run, epoch)
            validated = _validate(run, epoch, row)
            row["epoch_seconds"] = round(time.monotonic() - epoch_start, 2)
            if ctx.is_main:
                if before_checkpoint is not None:
                    before_checkpoint(run.output)
                _save(run, epoch, row, validated, sample)
            ctx.barrier()
            run.epochs_completed = epoch + 1
            if _should_stop(run, started):
                break
        validation = _predict_held_out(run)
    finally:
        # A failed run (a full disk, an interrupt) closes its event file too, so nothing holds the folder open.
        if run.writer is not None:
            run.writer.close()
        # The DDP wrapper holds the process group: free it while the group lives. Freed after the group was
        # destroyed, its gloo destructor once waited forever for its threads (a worker left hanging after its run).
        run.model = run.core_model
        ctx.close()
    folder = RunFolder(run.output)
    if ctx.is_main:
        _log_end(run, started)
    return TrainResult(
        config=run.config,
        output=run.output,
        last_checkpoint=folder.last,
        best_checkpoint=folder.best if folder.best.exists() else None,
        epochs_completed=run.epochs_completed,
        iterations=run.iteration,
        best_val_dice=run.best_val_dice,
        validation=validation,
    )


def _predict_held_out(run: TrainingRun) -> Path | None:
    """A fold run's out-of-fold predictions with the final weights (main process; the others wait)."""
    if run.fold is None or not run.fold.val:
        return None
    folder = None
    if run.ctx.is_main:
        predict_held_out(
            run.core_model,
            run.fold,
            run.config.data,
            run.output,
            run.plan,
            list(run.info.class_names),
            batch_size=run.config.val_batch_size,
            extra={
                "checkpoint": str(RunFolder(run.output).last),
                "epoch": run.epochs_completed,
                "num_folds": run.config.num_folds,
            },
        )
        folder = RunFolder(run.output).validation
    run.ctx.barrier()
    return folder


def _train_one_epoch(run: TrainingRun, epoch: int) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
    """One epoch of training (a pass over the slices, or its iterations); returns its log row and a sample (image,
    label, logits) to show."""
    config, ctx = run.config, run.ctx
    run.model.train()
    # Augmentation draws restart from a per-epoch seed (workers reseed from the loader's generator), so a resumed run
    # augments exactly as an uninterrupted one.
    run.train_set.reseed(epoch * 1000 + ctx.rank)
    loader = make_loader(run.train_set, config, ctx, epoch, run.sampling_weights)
    totals, seen = {"loss": 0.0, "ce": 0.0, "dice": 0.0}, 0
    # disable=None: a bar on a terminal only; a batch job's log gets the epoch's line alone.
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=None if ctx.is_main else True,
        leave=False,
        dynamic_ncols=True,
    )
    run.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(bar):
        images = batch["image"].to(run.device, non_blocking=True)
        labels = batch["label"].to(run.device, non_blocking=True)
        with autocast(run.device, run.amp_dtype):
            logits = run.model(images)
        parts = run.loss_fn.components(logits, labels)
        run.scaler.scale(parts["loss"] / config.grad_accum_steps).backward()
        if (step + 1) % config.grad_accum_steps == 0 or step + 1 == len(loader):
            _optimizer_step(run, parts["loss"])
        for key in totals:
            totals[key] += parts[key].item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{parts['loss'].item():.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if config.max_iterations is not None and run.iteration >= config.max_iterations:
            break
    row: dict[str, Any] = {"epoch": epoch + 1, "iteration": run.iteration, "lr": run.optimizer.param_groups[0]["lr"]}
    for key, name in (("loss", "train_loss"), ("ce", "train_ce"), ("dice", "train_dice_loss")):
        row[name] = ctx.mean(totals[key] / max(seen, 1), run.device)
    return row, (images[0], labels[0], logits[0])


def _optimizer_step(run: TrainingRun, loss: torch.Tensor) -> None:
    """The poly learning rate of this iteration, one optimizer step, the scalar log.

    With ``lr_after_step`` the rate of this iteration is set after the step, for the next one (the released code's
    order); the optimizer keeps it, so a resumed run continues with the rate it saved.
    """
    config = run.config
    scheduled = poly_lr(config.base_lr, run.iteration, run.max_iterations, config.lr_power)
    if not config.lr_after_step:
        for group in run.optimizer.param_groups:
            group["lr"] = scheduled
    lr = run.optimizer.param_groups[0]["lr"]
    run.scaler.step(run.optimizer)
    if config.lr_after_step:
        for group in run.optimizer.param_groups:
            group["lr"] = scheduled
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.iteration += 1
    if run.writer is not None and run.iteration % config.log_every == 0:
        run.writer.add_scalar("train/loss", loss.item(), run.iteration)
        run.writer.add_scalar("train/lr", lr, run.iteration)


def _validate(run: TrainingRun, epoch: int, row: dict[str, Any]) -> bool:
    """Score the validation volumes every ``val_every`` epochs and after the last; adds to the row, says if it ran."""
    config = run.config
    if run.val_set is None or ((epoch + 1) % config.val_every and epoch + 1 != config.epochs):
        return False
    summary = evaluate_model(
        run.core_model,
        run.val_set,
        run.plan,
        InferenceSettings(batch_size=config.val_batch_size),
        num_classes=run.num_classes,
        protocols=("legacy",),
        ctx=run.ctx,
        progress=False,
        class_names=list(run.info.class_names),
    )
    mean = summary.foreground_mean()
    row["val_mean_dice"], row["val_mean_hd95"] = mean["legacy_Dice"], mean["legacy_HD95_voxels"]
    row.update(
        {f"{DICE_PREFIX}{summary.class_names[k]}": values["legacy_Dice"] for k, values in summary.mean().items()}
    )
    if run.writer is not None:
        run.writer.add_scalar("val/mean_dice", row["val_mean_dice"], run.iteration)
        run.writer.add_scalar("val/mean_hd95", row["val_mean_hd95"], run.iteration)
        for class_id, values in summary.mean().items():
            run.writer.add_scalar(f"val_dice/{summary.class_names[class_id]}", values["legacy_Dice"], run.iteration)
    return True


def _save(run: TrainingRun, epoch: int, row: dict[str, Any], validated: bool, sample: tuple[torch.Tensor, ...]) -> None:
    """``last.pt`` (and ``best.pt`` when validation improved), the log row, the TensorBoard panel (main process)."""
    payload = checkpoint_payload(
        run.core_model,
        run.config,
        run.optimizer,
        run.scaler,
        epoch=epoch + 1,
        iteration=run.iteration,
        best_val_dice=run.best_val_dice,
        dataset_info=run.info,
        plan=run.plan,
        fold=run.fold,
    )
    folder = RunFolder(run.output)
    if validated and (run.best_val_dice is None or row["val_mean_dice"] > run.best_val_dice):
        run.best_val_dice = payload["best_val_dice"] = row["val_mean_dice"]
        atomic_torch_save(payload, folder.best)
    atomic_torch_save(payload, folder.last)
    append_log(folder.train_log, row, log_fields(run.info.class_names))
    save_progress(read_log(folder.train_log), folder.progress)
    if run.writer is not None:
        image, label, logits = sample
        run.writer.add_scalar("train/epoch_loss", row["train_loss"], run.iteration)
        run.writer.add_image(
            "train/panel", overlay_panel(image, label, logits.argmax(0)), run.iteration, dataformats="HWC"
        )
        run.writer.flush()
    message = f"epoch {epoch + 1}/{run.config.epochs}: loss {row['train_loss']:.4f}"
    if validated:
        message += f", val mean Dice {row['val_mean_dice']:.4f}, HD95 {row['val_mean_hd95']:.2f}"
    log.info("%s (%.1f s)", message, row["epoch_seconds"])


def _freeze_encoder(run: TrainingRun, epoch: int) -> None:
    """Unfreeze the encoder when its frozen epochs are over (``setup_run`` froze it for the first ones)."""
    if not run.config.freeze_encoder_epochs or epoch != run.config.freeze_encoder_epochs:
        return
    set_encoder_frozen(run.core_model, False)
    if isinstance(run.model, DistributedDataParallel):
        # DDP synchronizes only the parameters that took gradients when it was built: build it anew.
        device = run.device
        run.model = DistributedDataParallel(
            run.model.module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if run.ctx.is_main:
        log.info("epoch %d: the encoder trains from now on (frozen for %d epochs)", epoch + 1, epoch)


def _log_end(run: TrainingRun, started: float) -> None:
    """How the run ended, as the last line of its log."""
    config = run.config
    why = "all epochs done"
    if run.epochs_completed < config.epochs:
        capped = config.max_iterations is not None and run.iteration >= config.max_iterations
        why = "the iteration cap reached" if capped else "the time limit reached"
    best = f", best validation mean Dice {run.best_val_dice:.4f}" if run.best_val_dice is not None else ""
    log.info(
        "run ended after epoch %d of %d (%s), %d iterations in %.1f minutes%s",
        run.epochs_completed,
        config.epochs,
        why,
        run.iteration,
        (time.monotonic() - started) / 60,
        best,
    )


def _should_stop(run: TrainingRun, started: float) -> bool:
    """The iteration cap or the time limit reached (checked after whole epochs)."""
    config = run.config
    capped = config.max_iterations is not None and run.iteration >= config.max_iterations
    return capped or (
        config.time_limit_minutes is not None and (time.monotonic() - started) / 60 >= config.time_limit_minutes
    )
