"""Devices, seeding, random-number states and the distributed (torchrun) context of a run."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from perspective_unet.runtime.memory import host_available_memory, refuse_beyond

__all__ = [
    "DistributedContext",
    "available_memory",
    "check_memory",
    "compile_model",
    "estimate_memory",
    "get_rng_state",
    "require_memory",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA (this process's GPU under torchrun) when present, else CPU; other names are checked.

    Raises:
        ValueError: for a device this machine does not have.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but this machine has no CUDA GPU; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS is not available here; use --device cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def compile_model(model: torch.nn.Module, *, activation_memory_budget: float | None = None) -> torch.nn.Module:
    """``torch.compile(model)``, optionally keeping only part of the activations for backward.

    Args:
        model: The module to compile.
        activation_memory_budget: In (0, 1]: the share of the activations that the compiled training graph may keep
            for backward; the compiler recomputes the cheapest of the rest (element-wise chains such as BatchNorm,
            ReLU, dropout from its saved mask) instead of storing them. ``None`` or 1 keeps torch's default. This
            is a process-wide compiler setting, read when a graph is first compiled.

    Raises:
        ValueError: a budget outside (0, 1], or a budget with a torch that has no such setting.

    Example:
        >>> model = compile_model(torch.nn.Linear(4, 4), activation_memory_budget=0.4)
    """
    if activation_memory_budget is not None:
        if not 0.0 < activation_memory_budget <= 1.0:
            raise ValueError(f"activation_memory_budget must lie in (0, 1], got {activation_memory_budget}.")
        import torch._functorch.config as functorch_config

        if not hasattr(functorch_config, "activation_memory_budget"):
            raise ValueError(f"torch {torch.__version__} has no activation memory budget; upgrade torch or drop it.")
        functorch_config.activation_memory_budget = float(activation_memory_budget)
    return torch.compile(model)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every generator's state in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["position"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class DistributedContext:
    """This process's place in a ``torchrun`` job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_name: str = "auto") -> DistributedContext:
        """Join the process group that ``torchrun`` describes in the environment (NCCL on CUDA, gloo on CPU)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            use_nccl = device_name != "cpu" and torch.cuda.is_available()
            if use_nccl:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        return cls(rank, world_size, local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a number over all processes."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in rank order."""
        if not self.enabled:
            return items
        gathered: list[list[Any]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# Bytes of activations per input pixel of one forward pass without autograd: a linear fit to the measured peaks of
# the tiny and the paper variants (CPU, float32), in the widths weighted by the share of pixels each stage keeps.
# Training keeps about three times as much for backward. Deliberately on the low side: it refuses only sizes that
# cannot fit, and never one that would.
_BYTES_PER_EFFECTIVE_WIDTH = 20.0
_BYTES_PER_PIXEL_BASE = 300.0
_TRAINING_FACTOR = 3.0


def estimate_memory(model: torch.nn.Module, pixels: int, *, training: bool) -> int | None:
    """Bytes a forward pass over ``pixels`` input pixels (all samples of a batch) needs, weights included.

    Returns None for models other than :class:`~perspective_unet.PerspectiveUNet` (no estimate).
    """
    config = getattr(model, "config", None)
    widths = getattr(config, "widths", None)
    if widths is None:
        return None
    effective = sum(w / 4**i for i, w in enumerate(widths))
    activations = pixels * (_BYTES_PER_EFFECTIVE_WIDTH * effective + _BYTES_PER_PIXEL_BASE)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Training also holds gradients and the optimizer's state (two more copies for SGD with momentum or AdamW).
    return int(activations * _TRAINING_FACTOR + 3 * weights) if training else int(activations + weights)


def available_memory(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or the system's available memory for the CPU (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_memory()


def check_memory(model: torch.nn.Module, pixels: int, device: torch.device, *, training: bool, what: str) -> None:
    """Raise ``InputError`` before allocating when a pass over ``pixels`` cannot fit in the device's memory.

    Args:
        model: The model that will run.
        pixels: Input pixels of one forward pass (batch size x height x width).
        device: Where it runs.
        training: Whether activations are kept for backward.
        what: What runs, named in the message (e.g. "predict with 16 slices of 8192 x 8192").
    """
    need = estimate_memory(model, pixels, training=training)
    if need is not None:
        require_memory(need, device, what=what, fix="use a smaller --img-size or --batch-size")


def require_memory(need: int, device: torch.device, *, what: str, fix: str) -> None:
    """Raise ``InputError`` before allocating ``need`` bytes on ``device`` when they are not available.

    Args:
        need: Bytes about to be allocated.
        device: Where.
        what: What needs them, named in the message (e.g. "predict with 16 slices of 8192 x 8192").
        fix: What the user should do (e.g. "use a smaller --batch-size").
    """
    refuse_beyond(need, available_memory(device), str(device), what=what, fix=fix)
