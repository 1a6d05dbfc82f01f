"""The pieces of a training run: resuming (a ``last.pt`` read once), the data, model and optimizer of a run, its
checkpoints and logs (the run folder's layout: :class:`perspective_unet.runs.RunFolder`).
:mod:`perspective_unet.engine.train` puts them together in one loop that reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from perspective_unet.config import TrainConfig
from perspective_unet.config.train import RUN_PLAN_KEY
from perspective_unet.data import SliceDataset, VolumeDataset
from perspective_unet.data.folds import Fold, fold_cases
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.patches import PatchDataset
from perspective_unet.engine.finetune import (
    InitSource,
    WeightTransfer,
    normalization_differences,
    set_encoder_frozen,
    transfer_weights,
)
from perspective_unet.engine.runtime import (
    DistributedContext,
    check_memory,
    compile_model,
    get_rng_state,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from perspective_unet.engine.training_data import (
    check_resampled_slices,
    foreground_weights,
    make_loader,
    training_set,
    validation_set,
)
from perspective_unet.errors import InputError
from perspective_unet.losses import SegmentationLoss
from perspective_unet.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file
from perspective_unet.models.ops.precision import training_dtype
from perspective_unet.models.perspective_unet import check_input_size
from perspective_unet.models.registry import create_model
from perspective_unet.outputs import atomic_write
from perspective_unet.plan import PLAN_FILE, Plan
from perspective_unet.recipe import RECIPE_FIELDS, resolve_recipe
from perspective_unet.runs import RunFolder

__all__ = [
    "TrainingCheckpoint",
    "TrainingRun",
    "checkpoint_payload",
    "setup_run",
]

log = logging.getLogger(__name__)


def checkpoint_payload(
    model: torch.nn.Module,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    epoch: int,
    iteration: int,
    best_val_dice: float | None,
    dataset_info: DatasetInfo,
    plan: Plan,
    fold: Fold | None = None,
) -> dict[str, Any]:
    """A checkpoint's content; a fold run's records its fold (cases and the splits' hash)."""
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
        "dataset": dataset_info.summary(),
        "rng": get_rng_state(),
        **({"fold": fold.record()} if fold is not None else {}),
    }


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.base_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


# Settings a resumed run may change: where it runs and how long; everything else must stay what the run was.
RESUME_MAY_CHANGE = (
    "data",
    "output",
    "splits",  # the path may change; its folds may not (their hash is checked)
    "device",
    "num_workers",
    "val_batch_size",
    "log_every",
    "time_limit_minutes",
    "max_iterations",
)


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A run's ``last.pt``, read once: the saved config, plan and state a resumed run continues from.

    Attributes:
        path: The file.
        state: Its content (on the CPU): weights, optimizer, scaler, counters, RNG states, config, plan.
    """

    path: Path
    state: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> TrainingCheckpoint:
        """Read a training checkpoint.

        Raises:
            InputError: The file is unreadable, or not a training checkpoint (``last.pt``) of this project.
        """
        state = load_checkpoint_file(path)
        if "train_config" not in state or "optimizer" not in state:
            raise InputError(f"{path} is not a training checkpoint (last.pt) of this project; cannot resume from it.")
        return cls(Path(path), state)

    @property
    def plan(self) -> Plan | None:
        """The plan the run was trained with (None for runs written before plans existed)."""
        saved = self.state.get("plan")
        return None if saved is None else Plan.from_dict(saved)

    def fill_open(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the fields it leaves to the recipe (and, without a model, the architecture) taken from the
        run's saved config, so a resumed run trains on as it began."""
        saved = TrainConfig.from_dict(dict(self.state["train_config"]))
        changes: dict[str, Any] = {
            name: getattr(saved, name) for name in RECIPE_FIELDS if getattr(config, name) is None
        }
        if config.model is None:
            changes["model_options"] = {**saved.model_options, **config.model_options}
        return dataclasses.replace(config, **changes)

    def config(self, given: dict[str, Any]) -> TrainConfig:
        """The training config saved in the checkpoint, with the settings a resumed run may change.

        Args:
            given: Settings given for the resumed run (from the command line and a ``--config`` file); the run
                continues in the checkpoint's folder unless they name another output. A value equal to the saved one
                is fine; ``data``, ``output``, ``device``, ``num_workers``, ``val_batch_size``, ``log_every``,
                ``time_limit_minutes`` and ``max_iterations`` may change; ``epochs`` may rise (the poly schedule then
                runs from the saved iteration to the new total, so the learning rate rises again); any other
                difference is refused.

        Raises:
            InputError: A given setting differs from the saved one.
        """
        saved = TrainConfig.from_dict(dict(self.state["train_config"]))
        # The run lives where its last.pt is now (a run folder may have been moved or copied since).
        changes: dict[str, Any] = {"output": str(self.path.parent)}
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
            raise InputError(
                f"{name.replace('_', '-')} {candidate!r} differs from the run's saved {current!r} "
                f"({self.path}){hint}; resume without it, or start a new run in another folder."
            )
        return dataclasses.replace(saved, **changes)


@dataclass
class TrainingRun:
    """Everything a training loop works with; the loop changes ``iteration``, ``best_val_dice`` and
    ``epochs_completed``.

    Attributes:
        config: The run's config, with the plan's protocol, size, batch size and context slices filled in.
        plan: The plan the data are seen through.
        ctx: Distributed context (a single process when not under torchrun).
        device: Where the model runs.
        info: The dataset's description.
        train_set: Training slices (paper protocol) or patches (spacing protocol).
        val_set: Validation volumes, or None.
        sampling_weights: Per-slice weights of the sampler, or None for uniform sampling.
        model: The model as trained (compiled and wrapped for DDP when asked).
        core_model: The bare model (saved, validated).
        loss_fn: The loss.
        optimizer: The optimizer.
        scaler: The AMP gradient scaler (disabled without float16).
        amp_dtype: Autocast type, or None.
        max_iterations: Optimizer steps of the whole schedule.
        writer: TensorBoard writer (main process only).
        fold: The cross-validation fold trained (None: the dataset's own splits).
        start_epoch: Epochs already done (resumed runs).
        iteration: Optimizer steps done.
        best_val_dice: Best validation mean Dice so far.
        epochs_completed: Epochs done when the loop stops.
    """

    config: TrainConfig
    plan: Plan
    ctx: DistributedContext
    device: torch.device
    info: DatasetInfo
    train_set: SliceDataset | PatchDataset
    val_set: VolumeDataset | None
    sampling_weights: torch.Tensor | None
    model: torch.nn.Module
    core_model: torch.nn.Module
    loss_fn: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    max_iterations: int
    writer: SummaryWriter | None = None
    fold: Fold | None = None
    start_epoch: int = 0
    iteration: int = 0
    best_val_dice: float | None = None
    epochs_completed: int = 0

    @property
    def output(self) -> Path:
        return Path(self.config.output)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def _build_model(config: TrainConfig, plan: Plan, num_classes: int, device: torch.device) -> torch.nn.Module:
    options = dict(config.model_options)
    in_channels = options.pop("in_channels", plan.in_channels)
    if in_channels != plan.in_channels and not options.get("repeat_gray_to_rgb"):
        raise InputError(
            f"model option in_channels={in_channels} differs from the plan's {plan.in_channels} input "
            f"channel(s) (the slice and {plan.context_slices} context slices on each side)."
        )
    model = create_model(config.model, in_channels=in_channels, num_classes=num_classes, **options)
    check_input_size(*plan.patch_size, divisor=model.config.size_divisor)
    height, width = plan.patch_size
    lean = config.compile and config.activation_memory_budget is not None  # keeps a share of the activations
    check_memory(
        model,
        config.batch_size * height * width,
        device,
        training=not lean,
        what=f"training with batches of {config.batch_size} x {height} x {width}",
    )
    return model.to(device)


def _restore(run: TrainingRun, resume: TrainingCheckpoint) -> None:
    """Weights, optimizer, scaler, counters and random states of a ``last.pt``, exactly as they were."""
    state = resume.state
    run.core_model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.iteration, run.best_val_dice = (
        int(state["epoch"]),
        int(state["iteration"]),
        state["best_val_dice"],
    )
    run.epochs_completed = run.start_epoch
    set_rng_state(state["rng"])
    if run.ctx.is_main:
        log.info("resumed from %s after epoch %d (iteration %d)", resume.path, run.start_epoch, run.iteration)


def _run_fold(config: TrainConfig, info: DatasetInfo, resume: TrainingCheckpoint | None) -> Fold | None:
    """The run's fold; a resumed run's folds must be those it started with (nothing is drawn for it).

    Raises:
        InputError: The splits file changed since the resumed run started, or is gone.
    """
    if config.fold is None:
        return None
    fold = fold_cases(config.data, info, config.fold, config.num_folds, splits=config.splits, draw=resume is None)
    recorded = (resume.state.get("fold") or {}).get("splits_sha256") if resume is not None else None
    if resume is not None and recorded is None:
        log.warning("%s records no splits hash (an older version wrote it); its folds cannot be checked", resume.path)
    elif recorded is not None and recorded != fold.splits_sha256:
        raise InputError(
            f"{fold.splits_file} changed since {resume.path} was trained on it (the folds' SHA-256 was "  # type: ignore[union-attr]
            f"{recorded[:12]}..., is {fold.splits_sha256[:12]}...); resuming would train on former validation cases. "
            "Restore the file, or start a new run in another folder."
        )
    return fold


def setup_run(
    config: TrainConfig,
    resume: TrainingCheckpoint | None,
    ctx: DistributedContext,
    init: InitSource | None = None,
) -> TrainingRun:
    """Data as the plan says, the recipe, the model (from ``init``'s weights when fine-tuning), loss and optimizer, the
    state of a resumed run, the run folder's records (``config.json`` with the resolved plan, the fine-tuning table).

    Args:
        config: The run; its open fields are filled from the plan and the recipe.
        resume: The ``last.pt`` a resumed run continues from.
        ctx: Distributed context.
        init: The trained model a new run starts from (``config.init_from`` read; ignored when resuming).
    """
    device = resolve_device(config.device, ctx.local_rank)
    seed_everything(config.seed + ctx.rank)
    layout = open_dataset(config.data)
    info = layout.info
    if ctx.is_main:
        log.info("data %s: %s", config.data, layout.describe())
    plan = (resume.plan if resume is not None else None) or layout.plan_for_training(
        protocol=config.protocol,
        patch_size=config.img_size,
        batch_size=config.batch_size,
        context_slices=config.context_slices,
    )
    config = dataclasses.replace(
        config,
        protocol=plan.protocol,
        img_size=plan.patch_size,
        batch_size=plan.batch_size,
        context_slices=plan.context_slices,
    )
    fold = _run_fold(config, info, resume)
    if fold is not None and ctx.is_main:
        log.info(
            "%s: %d training and %d validation cases (folds of %s)",
            fold.name,
            len(fold.train),
            len(fold.val),
            fold.splits_file,
        )
    check_resampled_slices(
        layout, plan, config.num_workers, resume.path if resume is not None else layout.root / PLAN_FILE
    )
    train_set = training_set(config, plan, fold, layout)
    val_set = validation_set(config, ctx, fold, layout)
    try:
        config, recipe = resolve_recipe(config, plan, len(train_set), gpu=device.type == "cuda")
    except ValueError as exc:
        raise InputError(f"training config: {exc}") from None
    if ctx.is_main and resume is None:
        log.info("%s", recipe)
    model = _build_model(config, plan, info.num_classes, device)
    transfer = None
    if init is not None and resume is None:
        transfer = transfer_weights(model, init, info.class_names)
        if ctx.is_main:
            _report_transfer(transfer, init, plan)
    amp_dtype = training_dtype(config.precision, device, amp=config.amp)
    run = TrainingRun(
        config=config,
        plan=plan,
        ctx=ctx,
        device=device,
        info=info,
        train_set=train_set,
        val_set=val_set,
        sampling_weights=foreground_weights(train_set, config.foreground_sampling_weight, info.ignore_label),
        model=model,
        core_model=model,
        loss_fn=SegmentationLoss(
            info.num_classes, ce_weight=config.ce_weight, dice_weight=config.dice_weight, ignore_index=info.ignore_label
        ),
        optimizer=_make_optimizer(model, config),
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        max_iterations=0,
        fold=fold,
    )
    if resume is not None:
        _restore(run, resume)
    if config.freeze_encoder_epochs and run.start_epoch < config.freeze_encoder_epochs:
        # Before DDP wraps the model: it registers only the parameters that take gradients then.
        set_encoder_frozen(model, True)
        if ctx.is_main:
            log.info("the encoder stays as loaded for the first %d epoch(s)", config.freeze_encoder_epochs)
    if config.compile:
        run.model = compile_model(run.model, activation_memory_budget=config.activation_memory_budget)
    if ctx.enabled:
        run.model = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(
        len(make_loader(train_set, config, ctx, 0, run.sampling_weights)) / config.grad_accum_steps
    )
    run.max_iterations = config.epochs * steps_per_epoch
    if ctx.is_main:
        folder = RunFolder(run.output)
        folder.path.mkdir(parents=True, exist_ok=True)
        record = {**config.to_dict(), RUN_PLAN_KEY: plan.to_dict()}
        atomic_write(folder.config, lambda path: path.write_text(json.dumps(record, indent=2)))
        if transfer is not None:
            transfer.write_csv(folder.initialization)
        run.writer = SummaryWriter(str(folder.tensorboard), purge_step=run.iteration if resume else None)
    return run


def _report_transfer(transfer: WeightTransfer, init: InitSource, plan: Plan) -> None:
    """The fine-tuning table, and a warning when the source saw its data otherwise than the run's plan does."""
    log.info("fine-tuning from %s:\n%s", transfer.source, transfer.summary())
    differences = normalization_differences(init.info, plan)
    if differences:
        log.warning(
            "%s was trained on data seen otherwise than this run's plan sees its data: %s. The run uses its own "
            "data's plan; the loaded weights meet other inputs at first.",
            init.path,
            "; ".join(differences),
        )
