"""Configuration dataclasses. Standard library only, so every layer of the package can import them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ModelConfig", "TrainConfig", "dataclass_from_dict"]

T = TypeVar("T")

_ENLSA_KERNELS = ("softmax", "relu")
_SCSI_ATTENTION = ("tokens", "released", "official")
CHECKPOINTABLE_PARTS = ("cnn", "enltb", "scsi")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Perspective+ Unet.

    The defaults are the paper's network (112.66 M parameters for 9 classes). A checkpoint stores
    ``to_dict()`` beside the weights, so ``ModelConfig.from_dict`` rebuilds the model from the file alone.

    Attributes:
        in_channels: Channels of the input image (1 for CT and MR).
        num_classes: Output classes, background included.
        widths: Channels of the five bi-path encoder stages; the image sides must be multiples of
            ``2 ** (len(widths) - 1)``. The last three stages also carry the transformer branch.
        enltb_depths: Efficient non-local transformer blocks in each of the three transformer stages.
        enlsa_features: Random features of the ENLSA kernel estimate; ``None`` uses the stage width (as released).
        enlsa_heads: Attention heads of ENLSA (1 as released); must divide every transformer-stage width.
        enlsa_kernel: ``"softmax"`` (the Performer estimate of exp(q.k), as released) or ``"relu"``.
        enlsa_redraw_interval: Redraw the random projection every this many training steps; 0 never (as released).
        mlp_ratio: Hidden width of the ENLTB feed-forward layer relative to the stage width.
        scsi_dim: Token width of the spatial cross-scale integrator.
        scsi_heads: Attention heads of the integrator; must divide ``scsi_dim``.
        scsi_depth: Transformer layers of the integrator.
        scsi_ffn_dim: Hidden width of the integrator's feed-forward layers.
        scsi_attention: ``"tokens"`` attends across the token sequence as the paper describes; ``"released"`` is
            the released code's function (attention across the samples of a batch at each token position, so a
            sample's output depends on its batch; evaluation and prediction run such a model one slice at a time, as
            the released test does); ``"official"`` is the released code at batch size 1 (attention =
            out_proj(v_proj(s))), applied to every sample on its own.
        dilation: Dilation of the wide path of every bi-path block.
        enltb_dropout: Dropout after ENLSA and inside the ENLTB feed-forward layer.
        scsi_dropout: Dropout of the integrator's attention and feed-forward layers.
        drop_path_rate: Stochastic-depth rate of the ENLTB residual branches.
        use_bipath: Use the dilated path (ablation switch; without it the fusion sees the local path twice).
        use_enltb: Use the efficient non-local transformer branch (ablation switch).
        use_scsi: Use the spatial cross-scale integrator (ablation switch).
        repeat_gray_to_rgb: Repeat a 1-channel input to ``in_channels`` channels, as the released code does.
        fast_dropout: Training-time speed and memory, no effect in eval mode. On the CPU, dropout masks come from
            16-bit random thresholds (about 4x cheaper to draw; the rate is rounded to a multiple of 2^-16) and
            backward keeps a one-byte mask; the SCSI feed-forward ReLU and its dropout keep only their output; SCSI
            attention dropout runs block by block in memory linear in the tokens instead of SDPA's N x N math path.
            The random stream differs from ``torch.nn.Dropout``'s; ``False`` restores torch's dropout everywhere.
        gradient_checkpointing: Parts whose activations are recomputed in backward instead of kept, any of
            ``"cnn"`` (the two finest bi-path stages), ``"enltb"`` (each ENLTB block) and ``"scsi"`` (each
            integrator layer); empty keeps everything. Outputs, gradients and BatchNorm statistics are unchanged
            (dropout masks are redrawn identically); it trades compute for memory.
            ``PerspectiveUNet.set_gradient_checkpointing`` changes it on a built model. ``"enltb"`` cannot be
            combined with ``enlsa_redraw_interval > 0``.
    """

    in_channels: int = 1
    num_classes: int = 9
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    enltb_depths: tuple[int, int, int] = (2, 2, 2)
    enlsa_features: int | None = None
    enlsa_heads: int = 1
    enlsa_kernel: str = "softmax"
    enlsa_redraw_interval: int = 0
    mlp_ratio: float = 4.0
    scsi_dim: int = 256
    scsi_heads: int = 8
    scsi_depth: int = 6
    scsi_ffn_dim: int = 2048
    scsi_attention: str = "tokens"
    dilation: int = 2
    enltb_dropout: float = 0.1
    scsi_dropout: float = 0.1
    drop_path_rate: float = 0.1
    use_bipath: bool = True
    use_enltb: bool = True
    use_scsi: bool = True
    repeat_gray_to_rgb: bool = False
    fast_dropout: bool = True
    gradient_checkpointing: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.enltb_depths = tuple(int(d) for d in self.enltb_depths)  # type: ignore[assignment]
        if isinstance(self.gradient_checkpointing, str):
            self.gradient_checkpointing = (self.gradient_checkpointing,)
        self.gradient_checkpointing = tuple(self.gradient_checkpointing)
        self.validate()

    @property
    def size_divisor(self) -> int:
        """The input sides must be multiples of this number."""
        return 2 ** (len(self.widths) - 1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        _positive("in_channels", self.in_channels)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {self.num_classes}.")
        if len(self.widths) < 3:
            raise ValueError(
                f"widths needs at least 3 stages (the transformer branch uses the last 3), got {self.widths}."
            )
        for w in self.widths:
            _positive("every entry of widths", w)
        if len(self.enltb_depths) != 3:
            raise ValueError(f"enltb_depths needs one entry per transformer stage (3), got {self.enltb_depths}.")
        for d in self.enltb_depths:
            _positive("every entry of enltb_depths", d)
        if self.enlsa_features is not None:
            _positive("enlsa_features", self.enlsa_features)
        _positive("enlsa_heads", self.enlsa_heads)
        for w in self.widths[-3:]:
            if w % self.enlsa_heads:
                raise ValueError(
                    f"enlsa_heads ({self.enlsa_heads}) must divide every transformer-stage width {self.widths[-3:]}."
                )
        if self.enlsa_kernel not in _ENLSA_KERNELS:
            raise ValueError(f"enlsa_kernel must be one of {_ENLSA_KERNELS}, got {self.enlsa_kernel!r}.")
        if self.enlsa_redraw_interval < 0:
            raise ValueError(f"enlsa_redraw_interval must be >= 0 (0 never redraws), got {self.enlsa_redraw_interval}.")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}.")
        _positive("scsi_dim", self.scsi_dim)
        _positive("scsi_heads", self.scsi_heads)
        _positive("scsi_depth", self.scsi_depth)
        _positive("scsi_ffn_dim", self.scsi_ffn_dim)
        if self.scsi_dim % self.scsi_heads:
            raise ValueError(f"scsi_heads ({self.scsi_heads}) must divide scsi_dim ({self.scsi_dim}).")
        if self.scsi_attention not in _SCSI_ATTENTION:
            raise ValueError(f"scsi_attention must be one of {_SCSI_ATTENTION}, got {self.scsi_attention!r}.")
        _positive("dilation", self.dilation)
        unknown_parts = [p for p in self.gradient_checkpointing if p not in CHECKPOINTABLE_PARTS]
        if unknown_parts:
            raise ValueError(
                f"gradient_checkpointing takes parts among {CHECKPOINTABLE_PARTS}, got {self.gradient_checkpointing!r}."
            )
        if self.enlsa_redraw_interval and "enltb" in self.gradient_checkpointing:
            # A redraw during the recomputation would give backward another projection than forward used.
            raise ValueError("enlsa_redraw_interval > 0 cannot be combined with checkpointing 'enltb'.")
        for name in ("enltb_dropout", "scsi_dropout", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``torch.load(weights_only=True)``-safe dict of the fields."""
        out = dataclasses.asdict(self)
        out["widths"] = list(self.widths)
        out["enltb_depths"] = list(self.enltb_depths)
        out["gradient_checkpointing"] = list(self.gradient_checkpointing)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from ``to_dict()`` output; unknown keys raise ``ValueError``."""
        return dataclass_from_dict(cls, data, "model config keys")

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown model options {unknown}; valid options are {sorted(known - {'extra'})}.")
        return dataclasses.replace(self, **overrides)


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str = "keys") -> T:
    """``cls(**data)``, with unknown keys named in one ``ValueError`` beside the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; known keys are {sorted(known)}.")
    return cls(**data)


def _positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass
class TrainConfig:
    """A training run: data, model, the paper's optimisation recipe and the run's mechanics.

    The defaults are the paper's recipe for Synapse (SGD 0.05 / momentum 0.9 / weight decay 1e-4, poly 0.9 per
    iteration, 600 epochs, 0.4 CE + 0.6 Dice, seed 1234); protocol, slice or patch size, batch size and context
    slices come from the dataset's plan (``plan.json``: for Synapse and ACDC the paper's 224x224 and batch 12)
    unless set here. ``configs/*.yaml`` hold the recipe per dataset; the command line overrides single fields.

    Attributes:
        data: Prepared dataset folder (``perspective-unet prepare``), or a folder in the lineage's Synapse/ACDC format.
        output: Run folder for checkpoints, logs and TensorBoard events.
        model: Registered model variant.
        model_options: ``ModelConfig`` overrides (e.g. ``{"use_scsi": False}``).
        protocol: ``paper`` (each slice zoomed to ``img_size``) or ``spacing`` (slices resampled to the plan's pixel
            spacing, random patches of ``img_size``); None takes the dataset plan's (``plan.json``).
        img_size: (height, width) slices are zoomed to (paper protocol) or of the training patches and inference
            window (spacing protocol); None takes the plan's.
        context_slices: Neighbouring slices on each side fed as extra input channels (2.5D); None takes the plan's.
        epochs: Passes over the training slices (one patch per slice and pass in the spacing protocol).
        batch_size: Slices or patches per optimiser step (per process under DDP), before gradient accumulation;
            None takes the plan's.
        base_lr: Initial learning rate; decays as base_lr * (1 - iter / max_iter) ** lr_power every iteration.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_power: Exponent of the poly schedule.
        optimizer: ``sgd`` (the paper's, with ``momentum``) or ``adamw`` (``weight_decay`` decoupled; converges in
            fewer steps, which suits short CPU runs such as the demo).
        foreground_sampling_weight: How much more often a training slice that holds any foreground is drawn than
            an empty one (1: uniform, as the paper). Abdominal volumes are mostly organ-free slices; a weight > 1
            spends the steps of short runs where the organs are.
        ce_weight: Weight of cross-entropy in the loss.
        dice_weight: Weight of the Dice loss.
        seed: Seed of every random number generator.
        num_workers: DataLoader worker processes.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: Mixed precision (bfloat16 where supported, else float16 with loss scaling) on CUDA; ignored on CPU.
        grad_accum_steps: Batches whose gradients add up before each optimiser step.
        compile: Wrap the model in ``torch.compile``.
        activation_memory_budget: With ``compile``, the share (0, 1] of the activations kept for backward; the
            compiler recomputes the cheapest rest. 0.4 with the paper model at batch 2 on a CPU: 0.55x the plain
            path's peak memory at 1.48x its speed (docs/performance.md). None: torch's default (keep what is cheapest
            to keep).
        val_every: Validate every this many epochs on the validation volumes (0: never).
        val_split: Split of the prepared data used for validation.
        val_batch_size: Slices per forward pass during validation.
        augment: Augment the training data: the paper's augmentation (paper protocol) or nnU-Net's (spacing
            protocol).
        augmentation: Overrides of the protocol's augmentation settings (``AugmentationConfig`` for the paper
            protocol, ``SpacingAugmentationConfig`` for the spacing protocol): probabilities and ranges.
        drop_last_batch: Skip the last, incomplete batch of each epoch; the released code keeps it (185 iterations
            per epoch on Synapse at batch 12 instead of 184).
        max_iterations: Stop after this many optimiser steps (the schedule still spans all epochs); None: no cap.
        time_limit_minutes: Stop at the end of the epoch that passes this wall-clock budget; None: no limit.
        log_every: Iterations between TensorBoard scalar writes.
    """

    data: str = ""
    output: str = "runs/perspective_unet"
    model: str = "perspective_unet"
    model_options: dict[str, Any] = field(default_factory=dict)
    protocol: str | None = None
    img_size: tuple[int, int] | None = None
    context_slices: int | None = None
    epochs: int = 600
    batch_size: int | None = None
    base_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_power: float = 0.9
    optimizer: str = "sgd"
    foreground_sampling_weight: float = 1.0
    ce_weight: float = 0.4
    dice_weight: float = 0.6
    seed: int = 1234
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True
    grad_accum_steps: int = 1
    compile: bool = False
    activation_memory_budget: float | None = None
    val_every: int = 10
    val_split: str = "val"
    val_batch_size: int = 16
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)
    drop_last_batch: bool = True
    max_iterations: int | None = None
    time_limit_minutes: float | None = None
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.img_size is not None:
            self.img_size = tuple(int(s) for s in self.img_size)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.img_size is not None and len(self.img_size) != 2:
            raise ValueError(f"img_size needs (height, width), got {self.img_size}.")
        if self.protocol is not None and self.protocol not in ("paper", "spacing"):
            raise ValueError(f"protocol must be 'paper' or 'spacing', got {self.protocol!r}.")
        if self.context_slices is not None and (int(self.context_slices) != self.context_slices
                                                or self.context_slices < 0):
            raise ValueError(f"context_slices must be an integer >= 0, got {self.context_slices!r}.")
        for name in ("epochs", "grad_accum_steps", "val_batch_size", "log_every"):
            _positive(name, getattr(self, name))
        if self.batch_size is not None:
            _positive("batch_size", self.batch_size)
        for name in ("num_workers", "val_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be positive, got {self.base_lr}.")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}.")
        if self.foreground_sampling_weight <= 0:
            raise ValueError(f"foreground_sampling_weight must be positive, got {self.foreground_sampling_weight}.")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight must be >= 0 and not both 0.")
        if self.max_iterations is not None:
            _positive("max_iterations", self.max_iterations)
        if self.activation_memory_budget is not None:
            if not 0.0 < self.activation_memory_budget <= 1.0:
                raise ValueError(f"activation_memory_budget must lie in (0, 1], got {self.activation_memory_budget}.")
            if not self.compile:
                raise ValueError("activation_memory_budget acts on the compiled model only; set compile too.")

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
        """Read a YAML file of fields; ``overrides`` that are not None win over the file (dicts are merged)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see the configs/ folder for examples.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of fields, not a {type(data).__name__}.")
        for key, value in overrides.items():
            if value is None:
                continue
            # Dict fields (model_options, augmentation) are merged, so one override keeps the file's other entries.
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return cls.from_dict(data)
