"""Fine-tuning: a new training run that starts from a trained model's weights (``train --init-from SOURCE``).

The source is read once by :func:`perspective_unet.runs.load` (a checkpoint, run folder, model folder or released
checkpoint). The run keeps its own data's plan; it builds the source's architecture unless the config names one, in
which case the two must agree. :func:`transfer_weights` then copies every tensor whose name and shape match, adapts
the first convolution where the input channels differ and the head where the classes differ, and returns the table of
what was loaded, adapted and left new (:class:`WeightTransfer`), which the run prints and writes into its folder.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from perspective_unet.config import ModelConfig, TrainConfig
from perspective_unet.errors import InputError
from perspective_unet.models.ensemble import ProbabilityEnsemble
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.registry import get_model_config, list_models
from perspective_unet.outputs import atomic_write
from perspective_unet.plan import Plan
from perspective_unet.runs import load
from perspective_unet.table import format_table

__all__ = [
    "ARCHITECTURE_FIELDS",
    "InitSource",
    "TransferRow",
    "WeightTransfer",
    "adapt_input_weight",
    "normalization_differences",
    "set_encoder_frozen",
    "transfer_weights",
    "with_source_architecture",
]

# The ModelConfig fields that make a network what it is: weights of one such network fit only the same.
ARCHITECTURE_FIELDS = (
    "widths",
    "enltb_depths",
    "enlsa_features",
    "enlsa_heads",
    "enlsa_kernel",
    "mlp_ratio",
    "scsi_dim",
    "scsi_heads",
    "scsi_depth",
    "scsi_ffn_dim",
    "scsi_attention",
    "dilation",
    "use_bipath",
    "use_enltb",
    "use_scsi",
)
# What the run's data decide (channels, classes, how gray input is fed), never taken from the source.
_DATA_FIELDS = ("in_channels", "num_classes", "repeat_gray_to_rgb")
LOADED, ADAPTED, NEW, UNUSED = "loaded", "adapted", "new", "unused"


@dataclass(frozen=True)
class InitSource:
    """The trained model a fine-tuning run starts from.

    Attributes:
        path: The file the weights were read from.
        config: Its model config.
        state: Its weights and buffers (on the CPU).
        info: What it records of its training data (plan, class names).
    """

    path: Path
    config: ModelConfig
    state: Mapping[str, torch.Tensor]
    info: InferenceInfo

    @classmethod
    def read(cls, source: str | os.PathLike[str]) -> InitSource:
        """Read one trained Perspective+ Unet.

        Raises:
            InputError: The source is missing or unreadable, stands for several models (an ensemble), or is an ONNX
                graph (no trainable weights).
        """
        loaded = load(source, "cpu")
        model = loaded.model
        if isinstance(model, ProbabilityEnsemble):
            raise InputError(
                f"{source} stands for {len(loaded.sources)} models (an ensemble: {_first(loaded.sources)}); "
                "--init-from starts from one: give one of them."
            )
        if not isinstance(model, PerspectiveUNet):
            raise InputError(
                f"{loaded.sources[0]} is an ONNX graph, which holds no trainable weights; give the checkpoint or model "
                "folder it was exported from."
            )
        state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        return cls(loaded.sources[0], model.config, state, loaded.info)


def _nearest_variant(fields: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """The registered variant closest to ``fields`` (a ModelConfig's, data fields left out) and the overrides that
    make it equal."""
    best: tuple[str, dict[str, object]] | None = None
    for name in list_models():
        base = get_model_config(name).to_dict()
        differences = {key: value for key, value in fields.items() if base[key] != value}
        if best is None or len(differences) < len(best[1]):
            best = (name, differences)
    assert best is not None
    return best


def with_source_architecture(config: TrainConfig, source: InitSource) -> TrainConfig:
    """``config`` building the source's architecture.

    Without ``model`` (and architecture fields among ``model_options``) the run takes the source's whole model config
    but for channels and classes (named as the nearest registered variant with overrides); the config's
    ``model_options`` still apply on top. With them, the named architecture must be the source's.

    Raises:
        InputError: The config names another architecture than the source's (the message names the file and the
            fields that differ).
    """
    options = {k: v for k, v in config.model_options.items() if k not in _DATA_FIELDS}
    if config.model is not None or any(key in ARCHITECTURE_FIELDS for key in options):
        try:
            wanted = get_model_config(config.model, **options) if config.model else source.config.replace(**options)
        except ValueError as exc:
            raise InputError(f"training config, model {config.model!r}: {exc}") from None
        differing = [f for f in ARCHITECTURE_FIELDS if getattr(wanted, f) != getattr(source.config, f)]
        if differing:
            shown = ", ".join(f"{f} {getattr(source.config, f)!r} vs {getattr(wanted, f)!r}" for f in differing[:4])
            what = f"{config.model}" if config.model else "model options"
            raise InputError(
                f"{source.path} is a network of another architecture than this run's {what} ({shown}); its weights "
                "cannot start it. Leave out --model and the architecture's --model-option to fine-tune the source's "
                "own architecture, or train from scratch."
            )
        if config.model is not None:
            return config
    name, inherited = _nearest_variant(_inherited(source.config))
    return dataclasses.replace(config, model=name, model_options={**inherited, **config.model_options})


def _inherited(config: ModelConfig) -> dict[str, object]:
    return {key: value for key, value in config.to_dict().items() if key not in _DATA_FIELDS}


def normalization_differences(info: InferenceInfo, plan: Plan) -> list[str]:
    """How the source's training data were seen otherwise than the run's plan sees its data (empty when alike)."""
    source = info.plan
    if source is None:
        return ["it records no plan, so how its training data were normalized is unknown"]
    found = []
    mine, theirs = plan.intensity, source.intensity
    stage1 = ("kind", "window", "percentiles")
    if (
        any(getattr(mine, f) != getattr(theirs, f) for f in stage1)
        or mine.scaling != theirs.scaling
        or not all(
            a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-3))
            for a, b in ((mine.mean, theirs.mean), (mine.std, theirs.std))
        )
    ):
        found.append(f"intensity {theirs.describe()} (this run: {mine.describe()})")
    if source.protocol != plan.protocol:
        found.append(f"the {source.protocol} protocol (this run: {plan.protocol})")
    if (
        source.spacing
        and plan.spacing
        and any(not math.isclose(a, b, rel_tol=0.05) for a, b in zip(source.spacing, plan.spacing))
    ):
        found.append(
            f"pixels of {source.spacing[0]:g} x {source.spacing[1]:g} mm (this run: {plan.spacing[0]:g} x "
            f"{plan.spacing[1]:g} mm)"
        )
    return found


@dataclass(frozen=True)
class TransferRow:
    """What became of one tensor: ``loaded``, ``adapted``, ``new`` (the run's own initialization) or ``unused`` (a
    source tensor the run's model does not have)."""

    name: str
    status: str
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    note: str = ""


@dataclass(frozen=True)
class WeightTransfer:
    """The table of a fine-tuning run's start: every tensor of the model (and the source's unused ones)."""

    source: Path
    rows: tuple[TransferRow, ...]

    def of(self, status: str) -> list[TransferRow]:
        return [row for row in self.rows if row.status == status]

    def summary(self) -> str:
        """The model's parts with the tensors (and values) loaded, adapted and new, then the adapted and new ones."""
        parts: dict[str, dict[str, list[int]]] = {}
        for row in self.rows:
            if row.status == UNUSED:
                continue
            counts = parts.setdefault(_part(row.name), {LOADED: [0, 0], ADAPTED: [0, 0], NEW: [0, 0]})
            counts[row.status][0] += 1
            counts[row.status][1] += math.prod(row.target_shape or ())
        cells = [
            [part, *(f"{n} ({_values(v)})" if n else "-" for n, v in (c[LOADED], c[ADAPTED], c[NEW]))]
            for part, c in parts.items()
        ]
        lines = [format_table(["part", "loaded tensors", "adapted", "new"], cells)]
        lines += [
            f"  {row.status} {row.name} {list(row.target_shape or ())}: {row.note}"
            for row in self.rows
            if row.status in (ADAPTED, NEW)
        ]
        unused = self.of(UNUSED)
        if unused:
            lines.append(f"  unused: {len(unused)} tensor(s) of the source ({_first([r.name for r in unused])})")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per tensor (name, status, shapes, note), written atomically."""

        def write(target: Path) -> None:
            with target.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["tensor", "status", "source_shape", "target_shape", "note"])
                for row in self.rows:
                    writer.writerow(
                        [row.name, row.status, _shape(row.source_shape), _shape(row.target_shape), row.note]
                    )

        return atomic_write(path, write)


def _first(items: Sequence[object], count: int = 3) -> str:
    return ", ".join(map(str, items[:count])) + (" ..." if len(items) > count else "")


def _part(name: str) -> str:
    pieces = name.split(".")
    return ".".join(pieces[:2]) if pieces[0] == "encoder" else pieces[0]


def _values(count: int) -> str:
    return f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count / 1e3:.1f} k" if count >= 1e3 else str(count)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "x".join(map(str, shape))


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-layer weight (out, C, ...) for ``in_channels`` inputs: the sum over its C channels, spread evenly.

    An input whose channels are all equal gives the same response as before: a source trained on a gray slice
    repeated to 3 channels (the released network) becomes its exact 1-channel equivalent, and a 1-channel source
    starts a 2.5D model (the slice and its neighbors) as if all were the slice.
    """
    summed = weight.sum(dim=1, keepdim=True) / in_channels
    return summed.expand(-1, in_channels, *weight.shape[2:]).clone()


def _head_rows(source: Sequence[str], target: Sequence[str], counts: tuple[int, int]) -> list[int | None]:
    """For each class of the run, the source's class of the same name (by position when names are not recorded and
    the counts agree), or None."""
    if len(source) == counts[0] and len(target) == counts[1]:
        index = {name: i for i, name in enumerate(source)}
        return [index.get(name) for name in target]
    return list(range(counts[1])) if counts[0] == counts[1] else [None] * counts[1]


def _transfer_head(
    name: str, fresh: torch.Tensor, weights: torch.Tensor, rows: list[int | None], target_names: Sequence[str]
) -> tuple[torch.Tensor, TransferRow]:
    kept = [j for j, i in enumerate(rows) if i is not None]
    shapes = (tuple(weights.shape), tuple(fresh.shape))
    if rows == list(range(weights.shape[0])) and weights.shape == fresh.shape:
        return weights, TransferRow(name, LOADED, *shapes)
    if not kept:
        return fresh, TransferRow(name, NEW, *shapes, f"re-initialized: classes {weights.shape[0]} -> {fresh.shape[0]}")
    tensor = fresh.clone()
    for j in kept:
        tensor[j] = weights[rows[j]]
    named = [target_names[j] if j < len(target_names) else str(j) for j in range(len(rows))]
    new = [named[j] for j, i in enumerate(rows) if i is None]
    note = f"rows of {len(kept)} class(es) kept by name, new: {', '.join(new) or '-'}"
    return tensor, TransferRow(name, ADAPTED, *shapes, note)


def transfer_weights(model: PerspectiveUNet, source: InitSource, class_names: Sequence[str]) -> WeightTransfer:
    """Load the source's weights into ``model`` where they fit and say what became of each tensor.

    Tensors whose name and shape match are loaded; the first convolution's weights are adapted where the input
    channels differ (:func:`adapt_input_weight`); the head keeps the rows of the classes whose names the source shares
    and draws the others anew (all of them when neither records names and the counts differ); every other tensor
    keeps the model's own initialization.

    Args:
        model: The run's freshly built model.
        source: The trained model.
        class_names: The run's class names, background first.

    Raises:
        InputError: No tensor of the source fits the model (the message names the file).
    """
    target = model.state_dict()
    head = _head_rows(source.info.class_names, class_names, (source.config.num_classes, model.config.num_classes))
    channels = (source.config.in_channels, model.config.in_channels)
    rows, state = [], {}
    for name, fresh in target.items():
        weights = source.state.get(name)
        shapes = (None if weights is None else tuple(weights.shape), tuple(fresh.shape))
        if weights is None:
            rows.append(TransferRow(name, NEW, *shapes, "not in the source"))
        elif name.startswith("head.") and weights.shape[1:] == fresh.shape[1:]:
            state[name], row = _transfer_head(name, fresh, weights, head, class_names)
            rows.append(row)
        elif weights.shape == fresh.shape:
            state[name] = weights
            rows.append(TransferRow(name, LOADED, *shapes))
        elif (
            weights.ndim > 1 and (weights.shape[1], fresh.shape[1]) == channels and weights.shape[2:] == fresh.shape[2:]
        ):
            state[name] = adapt_input_weight(weights, channels[1])
            rows.append(
                TransferRow(
                    name, ADAPTED, *shapes, f"input channels {channels[0]} -> {channels[1]}: summed, spread evenly"
                )
            )
        else:
            rows.append(TransferRow(name, NEW, *shapes, "shape differs"))
    rows += [TransferRow(n, UNUSED, tuple(t.shape), None) for n, t in source.state.items() if n not in target]
    if not any(
        row.status in (LOADED, ADAPTED) and row.source_shape for row in rows if not row.name.startswith("head.")
    ):
        raise InputError(
            f"{source.path}: none of its weights fit this run's model ({model.config.in_channels} channel(s), "
            f"{model.config.num_classes} classes); it is not a Perspective+ Unet of this architecture."
        )
    model.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in state.items()}})
    return WeightTransfer(source.path, tuple(rows))


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Keep the encoder's weights (bi-path CNN, ENLTB branch and SCSI) as they are, or train them again.

    Frozen weights get no gradient, so the optimizer leaves them alone (SGD and AdamW skip parameters without one)
    and backward stops at the decoder; BatchNorm statistics still follow the data.
    """
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(not frozen)
