"""TrainConfig: a training run, its recipe and its mechanics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perspective_unet.config.augmentation import _AUGMENTATION_CHECKS, PROTOCOL_AUGMENTATION
from perspective_unet.config.checks import (
    OPTIMIZERS,
    PRECISIONS,
    PROTOCOLS,
    Check,
    _check_fields,
    _choice,
    _int,
    _number,
    check_bool,
    check_int_list,
    check_mapping,
    check_path,
    check_str,
    dataclass_from_dict,
)
from perspective_unet.config.model import _MODEL_CHECKS, ModelConfig
from perspective_unet.outputs import read_yaml

# Training ------------------------------------------------------------------------------------------------------------

# The entry of a run's config.json that holds its resolved plan beside the fields.
RUN_PLAN_KEY = "plan"


@dataclass
class TrainConfig:
    """A training run: data, model, the optimization recipe and the run's mechanics.

    A field left None is filled in when training starts: protocol, slice or patch size, batch size and context slices
    from the dataset's plan (``plan.json``: for Synapse and ACDC the paper's 224x224 and batch 12); model, epochs,
    iterations per epoch, optimizer and learning rate from the recipe for the data
    (:func:`perspective_unet.recipe.resolve_recipe`): the paper's Synapse recipe for the paper protocol (SGD 0.05,
    600 epochs, the 112.7 M model), one derived from the plan and the number of training slices for the spacing
    protocol. The run's ``config.json`` and checkpoints hold the resolved values. The other defaults are the paper's
    (momentum 0.9, weight decay 1e-4, poly 0.9 per iteration, 0.4 CE + 0.6 Dice, seed 1234); ``configs/*.yaml`` hold
    the recipe per dataset; the command line overrides single fields.

    Attributes:
        data: Prepared dataset folder (``perspective-unet prepare``), or TransUNet-style Synapse/ACDC files.
        output: Run folder for checkpoints, logs and TensorBoard events.
        model: Registered model variant; None takes the recipe's (with ``init_from``: the source's architecture).
        model_options: ``ModelConfig`` overrides (e.g. ``{"use_scsi": False}``).
        init_from: A trained model to start from (fine-tuning): a checkpoint, run folder, model folder or released
            checkpoint. Its weights are loaded where names and shapes match, the first convolution's adapted where
            the input channels differ, the head's rows kept for the classes whose names both share and drawn anew
            for the others; the run's data keep their own plan. None trains from random weights.
        freeze_encoder_epochs: With ``init_from``, the encoder's weights (bi-path CNN, ENLTB branch and SCSI) stay
            as loaded for this many first epochs while the decoder and head adapt; their BatchNorm statistics still
            follow the new data.
        protocol: ``paper`` (each slice zoomed to ``img_size``) or ``spacing`` (slices resampled to the plan's pixel
            spacing, random patches of ``img_size``); None takes the dataset plan's (``plan.json``).
        img_size: (height, width) slices are zoomed to (paper protocol) or of the training patches and inference
            window (spacing protocol); None takes the plan's.
        context_slices: Neighboring slices on each side fed as extra input channels (2.5D); None takes the plan's.
        epochs: Epochs of training; None takes the recipe's.
        iterations_per_epoch: Optimizer steps per epoch, the batches drawn at random (nnU-Net's epochs); 0: one
            pass over the training slices (one patch per slice and pass in the spacing protocol). None: the recipe's
            when ``epochs`` is None too, else 0.
        batch_size: Slices or patches per optimizer step (per process under DDP), before gradient accumulation;
            None takes the plan's.
        base_lr: Initial learning rate; decays as base_lr * (1 - iter / max_iter) ** lr_power every iteration.
            None: the recipe's rate for the optimizer (0.05 for SGD, 2e-3 for AdamW).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_power: Exponent of the poly schedule.
        lr_after_step: Set each iteration's poly rate after its optimizer step, for the next step, as the released
            code does: step t then runs at the rate of iteration t - 1 (steps 0 and 1 at ``base_lr``), one iteration
            behind the schedule, and the last step does not reach the schedule's smallest rate.
        optimizer: ``sgd`` (the paper's, with ``momentum``) or ``adamw`` (``weight_decay`` decoupled; converges in
            fewer steps, which suits short CPU runs such as the demo); None takes the recipe's.
        foreground_sampling_weight: How much more often a training slice that holds any foreground is drawn than
            an empty one (1: uniform, as the paper). Abdominal volumes are mostly organ-free slices; a weight > 1
            spends the steps of short runs where the organs are.
        ce_weight: Weight of cross-entropy in the loss.
        dice_weight: Weight of the Dice loss.
        seed: Seed of every random number generator.
        num_workers: DataLoader worker processes.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: Mixed precision (bfloat16 where supported, else float16 with loss scaling) on CUDA with ``precision``
            ``auto``; ignored on CPU.
        precision: ``auto`` (on CUDA as ``amp`` says, float32 elsewhere: bfloat16 training on a CPU has not met the
            accuracy bar, docs/performance.md), ``fp32`` (no autocast on any device) or ``bf16`` (bfloat16 autocast
            on any device; fast where the processor has AMX or AVX-512 BF16).
        grad_accum_steps: Batches whose gradients add up before each optimizer step.
        compile: Wrap the model in ``torch.compile``.
        activation_memory_budget: With ``compile``, the share (0, 1] of the activations kept for backward; the
            compiler recomputes the cheapest rest. 0.4 with the paper model at batch 2 on a CPU: 0.55x the plain
            path's peak memory at 1.48x its speed (docs/performance.md). None: torch's default (keep what is cheapest
            to keep).
        val_every: Validate every this many epochs on the validation volumes (0: never).
        val_split: Split of the prepared data used for validation (never ``test``: test cases are for ``evaluate``
            only). Ignored with ``fold``.
        fold: Cross-validation fold to train, 0..``num_folds``-1, or ``"all"`` for every development case without
            validation; the fold's held-out cases are the validation set (see ``perspective_unet.data.folds``).
            None: the dataset's own train and val splits.
        num_folds: Folds of the dataset's ``splits.json`` (drawn on first use from its train and val cases).
        splits: A splits file of one's own (nnU-Net's ``splits_final.json`` layout) instead of the data folder's
            ``splits_final.json`` or ``splits.json``; with ``fold`` only.
        val_batch_size: Slices per forward pass during validation.
        augment: Augment the training data: the paper's augmentation (paper protocol) or nnU-Net's (spacing
            protocol).
        augmentation: Overrides of the protocol's augmentation settings (``AugmentationConfig`` for the paper
            protocol, ``SpacingAugmentationConfig`` for the spacing protocol): probabilities and ranges.
        drop_last_batch: Skip the last, incomplete batch of each epoch; the released code keeps it (185 iterations
            per epoch on Synapse at batch 12 instead of 184).
        max_iterations: Stop after this many optimizer steps (the schedule still spans all epochs); None: no cap.
        time_limit_minutes: Stop at the end of the epoch that passes this wall-clock budget; None: no limit.
        log_every: Iterations between TensorBoard scalar writes.
    """

    data: str = ""
    output: str = "runs/perspective_unet"
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    freeze_encoder_epochs: int = 0
    protocol: str | None = None
    img_size: tuple[int, int] | None = None
    context_slices: int | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    batch_size: int | None = None
    base_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_power: float = 0.9
    lr_after_step: bool = False
    optimizer: str | None = None
    foreground_sampling_weight: float = 1.0
    ce_weight: float = 0.4
    dice_weight: float = 0.6
    seed: int = 1234
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    grad_accum_steps: int = 1
    compile: bool = False
    activation_memory_budget: float | None = None
    val_every: int = 10
    val_split: str = "val"
    fold: int | str | None = None
    num_folds: int = 5
    splits: str | None = None
    val_batch_size: int = 16
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)
    drop_last_batch: bool = True
    max_iterations: int | None = None
    time_limit_minutes: float | None = None
    log_every: int = 10

    def __post_init__(self) -> None:
        _check_fields(self, _TRAIN_CHECKS, normalize=True)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, ``model_options`` and ``augmentation`` entries included.

        ``model_options`` keys must be ``ModelConfig`` fields (``in_channels`` too: training checks it against the
        plan; not ``num_classes``, which comes from the dataset) with values of the field's type and range; whether
        they agree with each other and with the variant's other fields is checked when the model is built.
        ``augmentation`` keys must belong to the protocol's settings (``AugmentationConfig`` for ``paper``,
        ``SpacingAugmentationConfig`` for ``spacing``; either, but one of them, while ``protocol`` is None and the
        plan decides), with values of the field's type and range; with ``augment`` off they are unused, so keys of
        either protocol pass (still type-checked).
        """
        _check_fields(self, _TRAIN_CHECKS, normalize=False)
        if self.ce_weight + self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight must not both be 0.")
        if self.splits is not None and self.fold is None:
            raise ValueError("splits names the folds of cross-validation; give a fold too (fold: K or 'all').")
        if isinstance(self.fold, int) and self.fold >= self.num_folds:
            raise ValueError(f"fold must be 0..{self.num_folds - 1} for {self.num_folds} folds, got {self.fold}.")
        if self.freeze_encoder_epochs and not self.init_from:
            raise ValueError("freeze_encoder_epochs keeps trained encoder weights; it needs init_from.")
        if self.epochs is not None and self.freeze_encoder_epochs >= self.epochs:
            raise ValueError(
                f"freeze_encoder_epochs ({self.freeze_encoder_epochs}) must be below epochs ({self.epochs}), or the "
                "encoder is never trained."
            )
        if self.activation_memory_budget is not None and not self.compile:
            raise ValueError("activation_memory_budget acts on the compiled model only; set compile too.")
        self._validate_model_options()
        self._validate_augmentation()

    def _validate_model_options(self) -> None:
        known = {item.name for item in dataclasses.fields(ModelConfig)} - {"num_classes"}
        unknown = sorted(set(self.model_options) - known)
        if "num_classes" in self.model_options:
            raise ValueError(
                "model_options.num_classes cannot be set: the number of classes comes from the dataset (dataset.json)."
            )
        if unknown:
            raise ValueError(f"model_options has unknown keys {unknown}; valid keys are {sorted(known)}.")
        for key, value in self.model_options.items():
            _MODEL_CHECKS[key](f"model_options.{key}", value)

    def _validate_augmentation(self) -> None:
        overrides = self.augmentation
        if not overrides:
            return
        protocols = [self.protocol] if self.protocol is not None and self.augment else list(PROTOCOL_AUGMENTATION)
        keys = {p: {item.name for item in dataclasses.fields(PROTOCOL_AUGMENTATION[p])} for p in protocols}
        unknown = sorted(set(overrides) - set().union(*keys.values()))
        if unknown:
            if len(protocols) == 1:
                raise ValueError(
                    f"augmentation has unknown keys {unknown} for the {protocols[0]} protocol; valid "
                    f"keys are {sorted(keys[protocols[0]])}."
                )
            raise ValueError(
                f"augmentation has unknown keys {unknown}; valid keys are "
                + " and ".join(f"{sorted(keys[p])} ({p} protocol)" for p in protocols)
                + "."
            )
        for key, value in overrides.items():
            errors = []
            for protocol in (p for p in protocols if key in keys[p]):
                try:
                    _AUGMENTATION_CHECKS[protocol][key](f"augmentation.{key}", value)
                    break
                except ValueError as exc:
                    errors.append((protocol, str(exc)))
            else:
                if len({m for _, m in errors}) == 1:
                    raise ValueError(errors[0][1])
                raise ValueError("; ".join(f"{m.rstrip('.')} (for the {p} protocol)" for p, m in errors) + ".")
        if not self.augment:
            return
        # The settings are used: they must make one protocol's augmentation (this checks how fields agree).
        usable = [p for p in protocols if set(overrides) <= keys[p]]
        if not usable:
            only = {
                p: sorted(set(overrides) & (keys[p] - keys[q])) for p, q in (("paper", "spacing"), ("spacing", "paper"))
            }
            raise ValueError(
                f"augmentation mixes settings of the paper protocol only {only['paper']} with settings of "
                f"the spacing protocol only {only['spacing']}; one protocol's augmentation applies: set "
                "protocol, or keep the settings of one."
            )
        errors = []
        for protocol in usable:
            try:
                dataclass_from_dict(PROTOCOL_AUGMENTATION[protocol], overrides, "augmentation options")
                return
            except ValueError as exc:
                errors.append(f"augmentation.{exc}")
        raise ValueError(errors[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (safe for YAML, JSON and ``torch.load(weights_only=True)``)."""
        out = dataclasses.asdict(self)
        out["img_size"] = None if self.img_size is None else list(self.img_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, data, "training config keys")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML file of fields; ``overrides`` that are not None win over the file (dicts are merged).

        Raises:
            FileNotFoundError: The file does not exist.
            ValueError: The file holds no mapping, or a field is invalid; the message names the file.
            InputError: The file is not valid YAML (or too large, nested too deep, or sets a field twice: see
                :func:`perspective_unet.outputs.read_yaml`).
        """
        data = cls.read_fields(path)
        for key, value in overrides.items():
            if value is None:
                continue
            # Dict fields (model_options, augmentation) are merged, so one override keeps the file's other entries.
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return cls.from_dict(data)

    @staticmethod
    def read_fields(path: str | Path) -> dict[str, Any]:
        """The fields a YAML (or JSON) config file sets. A run's ``config.json`` is one too: the plan it records beside
        its fields is left out, as a new run takes its data's plan.

        Raises:
            FileNotFoundError: The file does not exist.
            ValueError: It holds no mapping.
            InputError: It is not valid YAML (see :func:`perspective_unet.outputs.read_yaml`).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see the configs/ folder for examples.")
        data = read_yaml(path, "fix the config file (see the configs/ folder for examples).") or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of fields, not a {type(data).__name__}.")
        data.pop(RUN_PLAN_KEY, None)
        return data


def _check_val_split(name: str, value: Any) -> str:
    value = check_str(name, value)
    if value == "test":
        raise ValueError(
            f"{name} must not be 'test': checkpoints are selected on validation cases only and test cases "
            "are for `perspective-unet evaluate`; use 'val', or cross-validation folds (fold: K)."
        )
    return value


def _check_fold(name: str, value: Any) -> int | str | None:
    if value is None or value == "all":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a fold number (0, 1, ...) or 'all', got {value!r}.")
    return value


_TRAIN_CHECKS: dict[str, Check] = {
    "data": check_path,
    "output": check_path,
    "model": lambda name, value: check_str(name, value, optional=True),
    "model_options": check_mapping,
    "init_from": lambda name, value: None if value is None else check_path(name, value),
    "freeze_encoder_epochs": _int(0),
    "protocol": _choice(PROTOCOLS, optional=True),
    "img_size": lambda name, value: (
        None if value is None else check_int_list(name, value, length=2, what="[height, width], two positive integers")
    ),
    "context_slices": _int(0, optional=True),
    "epochs": _int(1, optional=True),
    "iterations_per_epoch": _int(0, optional=True, note=" (0: one pass over the training slices)"),
    "batch_size": _int(1, optional=True),
    "base_lr": _number(low=0, low_open=True, optional=True),
    "momentum": _number(low=0, high=1, high_open=True),
    "weight_decay": _number(low=0),
    "lr_power": _number(low=0, low_open=True),
    "lr_after_step": check_bool,
    "optimizer": _choice(OPTIMIZERS, optional=True),
    "foreground_sampling_weight": _number(low=0, low_open=True),
    "ce_weight": _number(low=0),
    "dice_weight": _number(low=0),
    "seed": _int(0),
    "num_workers": _int(0),
    "device": check_str,
    "amp": check_bool,
    "precision": _choice(PRECISIONS),
    "grad_accum_steps": _int(1),
    "compile": check_bool,
    "activation_memory_budget": _number(low=0, high=1, low_open=True, optional=True),
    "val_every": _int(0, note=" (0: never)"),
    "val_split": _check_val_split,
    "fold": _check_fold,
    "num_folds": _int(2),
    "splits": lambda name, value: None if value is None else check_path(name, value),
    "val_batch_size": _int(1),
    "augment": check_bool,
    "augmentation": check_mapping,
    "drop_last_batch": check_bool,
    "max_iterations": _int(1, optional=True),
    "time_limit_minutes": _number(low=0, optional=True),
    "log_every": _int(1),
}
