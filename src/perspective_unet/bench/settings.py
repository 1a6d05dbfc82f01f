"""The *paths* a benchmark compares (the same network with the same weights, run in different ways) and building
the network for one.

- ``baseline``: the straightforward float32 path, as the released code computes: eager mode, default layout,
  BatchNorm as separate layers, ``torch.nn.functional.linear`` (MKL on a CPU), SDPA for attention,
  ``torch.nn.functional.dropout`` (and SDPA's own dropout), the bi-path fusion's concatenation kept for backward, no
  activation checkpointing, default allocator settings.
- ``optimized``: what this package offers that changes no eval-mode output beyond float rounding: BatchNorm folded
  into the convolutions (``fuse_for_inference``), channels-last layout, linear layers (and, without autograd, the
  token attention) through oneDNN on a CPU, fast dropout, optional activation checkpointing, an allocator profile
  (:data:`~perspective_unet.bench.machine.ALLOCATOR_PROFILES`); optionally ``torch.compile`` (with an activation
  memory budget for training) and autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from perspective_unet.bench.machine import ALLOCATOR_PROFILES
from perspective_unet.engine.runtime import compile_model
from perspective_unet.models.blocks import BiPathResidualBlock
from perspective_unet.models.ops import set_onednn_linear
from perspective_unet.models.registry import create_model

__all__ = [
    "PATH_CHOICES",
    "PathSettings",
    "baseline_settings",
    "build_model",
    "optimized_settings",
    "path_autocast",
    "select_paths",
    "settings_from",
    "train_settings",
]

PATH_CHOICES = ("baseline", "optimized", "both", "all")


@dataclass
class PathSettings:
    """How a path runs the network.

    Attributes:
        name: ``"baseline"``, ``"optimized"`` or any label; tables compare every path against ``"baseline"``.
        channels_last: Channels-last layout for weights and feature maps.
        fuse_batchnorm: Fold BatchNorm into convolutions (inference only).
        fast_dropout: ``ModelConfig.fast_dropout`` (training only).
        lean_concatenation: The bi-path blocks' ``lean_concatenation`` (training only; the model's default is on).
        onednn_linear: Linear layers through oneDNN on the CPU (:func:`~perspective_unet.models.ops.linear.linear`),
            and without autograd the token attention
            (:func:`~perspective_unet.models.ops.attend`); ``False`` is ``F.linear`` (MKL)
            and SDPA.
        gradient_checkpointing: Parts recomputed in backward (training only).
        allocator: A key of :data:`~perspective_unet.bench.machine.ALLOCATOR_PROFILES` (CPU), or ``None`` for the
            defaults. Applied to isolated measurements only, through the environment of their process.
        compile: ``torch.compile`` the model.
        activation_memory_budget: With ``compile``, the share of activations a compiled training step keeps for
            backward (:func:`~perspective_unet.engine.runtime.compile_model`); ``None``: torch's default.
        amp: ``"bfloat16"`` or ``"float16"`` autocast, or ``None`` for float32.
    """

    name: str = "baseline"
    channels_last: bool = False
    fuse_batchnorm: bool = False
    fast_dropout: bool = False
    lean_concatenation: bool = False
    onednn_linear: bool = False
    gradient_checkpointing: tuple[str, ...] = ()
    allocator: str | None = None
    compile: bool = False
    activation_memory_budget: float | None = None
    amp: str | None = None

    def __post_init__(self) -> None:
        self.gradient_checkpointing = tuple(self.gradient_checkpointing)
        if self.allocator is not None and self.allocator not in ALLOCATOR_PROFILES:
            raise ValueError(f"allocator must be None or one of {sorted(ALLOCATOR_PROFILES)}, got {self.allocator!r}.")
        if self.amp not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {self.amp!r}.")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for float32."""
        return getattr(torch, self.amp) if self.amp else None


def settings_from(data: PathSettings | dict[str, Any]) -> PathSettings:
    """Settings from themselves or from their ``dataclasses.asdict`` form (what crosses a process boundary)."""
    return data if isinstance(data, PathSettings) else PathSettings(**data)


def baseline_settings() -> PathSettings:
    """The straightforward float32 eager path."""
    return PathSettings(name="baseline")


def optimized_settings(
    device: torch.device | str = "cpu",
    *,
    gradient_checkpointing: Sequence[str] = (),
    allocator: str | None = "reuse",
    compile: bool = False,
    activation_memory_budget: float | None = None,
    amp: str | None = None,
    channels_last: bool = True,
) -> PathSettings:
    """Every same-output change: folded BatchNorm, channels-last, fast dropout, the lean bi-path concatenation, the
    oneDNN route, and as asked checkpointing and an allocator profile.

    The defaults favor speed in eager mode. For a training step both faster and leaner on a CPU, compile with an
    ``activation_memory_budget`` (:func:`train_settings`); without compile, checkpoint ``("cnn", "enltb")`` and use
    the ``"release"`` allocator for memory.

    Args:
        device: The allocator profile is kept on the CPU only; it does not act on CUDA memory.
        gradient_checkpointing: Parts recomputed in backward: ``"cnn"``, ``"enltb"``, ``"scsi"``.
        allocator: A key of :data:`~perspective_unet.bench.machine.ALLOCATOR_PROFILES`, or ``None``.
        compile: ``torch.compile`` the model.
        activation_memory_budget: See :class:`PathSettings`.
        amp: ``"bfloat16"``, ``"float16"`` or ``None``.
        channels_last: ``False`` keeps the default layout.
    """
    return PathSettings(
        name="optimized",
        channels_last=channels_last,
        fuse_batchnorm=True,
        fast_dropout=True,
        lean_concatenation=True,
        onednn_linear=True,
        gradient_checkpointing=tuple(gradient_checkpointing),
        allocator=allocator if torch.device(device).type == "cpu" else None,
        compile=compile,
        activation_memory_budget=activation_memory_budget,
        amp=amp,
    )


def train_settings(device: torch.device | str = "cpu", *, activation_memory_budget: float = 0.4) -> PathSettings:
    """The optimized training path: compiled with an activation memory budget, fast dropout, channels-last and,
    on the CPU, the ``reuse`` allocator profile (measured: docs/performance.md).

    Args:
        activation_memory_budget: Share (0, 1] of the activations kept for backward; the rest is recomputed.
    """
    return dataclasses.replace(
        optimized_settings(device, compile=True, activation_memory_budget=activation_memory_budget),
        name="optimized (compiled)",
    )


def select_paths(which: str = "both", device: torch.device | str = "cpu", **optimized: Any) -> list[PathSettings]:
    """The paths the ``benchmark`` command measures.

    Args:
        which: ``"baseline"``, ``"optimized"``, ``"both"`` (baseline first) or ``"all"``: both, then the optimized
            path under bfloat16 autocast (``"optimized + bf16"``; what ``--precision bf16`` runs), unless the
            optimized path already has an autocast type.
        device: Passed to :func:`optimized_settings`.
        **optimized: Keyword arguments of :func:`optimized_settings`.

    Raises:
        ValueError: For another ``which``.
    """
    if which not in PATH_CHOICES:
        raise ValueError(f"paths must be one of {PATH_CHOICES}, got {which!r}.")
    paths = []
    if which in ("baseline", "both", "all"):
        paths.append(baseline_settings())
    if which in ("optimized", "both", "all"):
        paths.append(optimized_settings(device, **optimized))
    if which == "all" and paths[-1].amp is None:
        paths.append(dataclasses.replace(paths[-1], name="optimized + bf16", amp="bfloat16"))
    return paths


def build_model(
    model_name: str, settings: PathSettings, *, train: bool, device: torch.device, overrides: dict[str, Any]
) -> nn.Module:
    """Build a registered model for a path, seeded so that every path gets the same weights.

    Args:
        train: Train mode (checkpointing applies, BatchNorm stays) rather than eval mode (BatchNorm may be folded).
        overrides: ``ModelConfig`` fields to override; the path's own fields win.
    """
    # Process-wide: the path being built decides (each measurement builds its model before it runs anything).
    set_onednn_linear("always" if settings.onednn_linear else "off")
    torch.manual_seed(0)
    model = create_model(
        model_name,
        **{
            **overrides,
            "fast_dropout": settings.fast_dropout,
            "gradient_checkpointing": settings.gradient_checkpointing if train else (),
        },
    ).to(device)
    if train:
        model.train()
        for module in model.modules():
            if isinstance(module, BiPathResidualBlock):
                module.lean_concatenation = settings.lean_concatenation
        if settings.channels_last:
            model.to_channels_last()
    else:
        model.eval()
        if settings.fuse_batchnorm:
            model = model.fuse_for_inference(channels_last=settings.channels_last, inplace=True)
        elif settings.channels_last:
            model.to_channels_last()
    if settings.compile:
        if not train:
            import torch._inductor.config as inductor_config

            # Weights become constants of the inference graph (folded, pre-packed); only graphs without autograd.
            inductor_config.freezing = True
        model = compile_model(model, activation_memory_budget=settings.activation_memory_budget if train else None)
    return model


def path_autocast(device: torch.device, settings: PathSettings) -> contextlib.AbstractContextManager:
    """The path's autocast context, or a no-op for float32."""
    dtype = settings.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
