"""Where a call's time goes: ``torch.profiler`` time per part of the network and the costliest operators."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function

from perspective_unet.bench.machine import synchronize
from perspective_unet.bench.measure import prepare
from perspective_unet.bench.settings import PathSettings, baseline_settings, settings_from
from perspective_unet.engine.summary import model_parts

__all__ = ["profile_parts", "profile_path"]


@contextlib.contextmanager
def _part_ranges(parts: dict[str, nn.Module]) -> Iterator[None]:
    # Each part's forward runs inside a record_function range named after the part, opened and closed by hooks.
    ranges: dict[int, Any] = {}
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module, args):  # noqa: ARG001
            ranges[id(module)] = record_function(name)
            ranges[id(module)].__enter__()

        return hook

    def leave(module, args, output):  # noqa: ARG001
        ranges.pop(id(module)).__exit__(None, None, None)

    for name, module in parts.items():
        for member in module if isinstance(module, nn.ModuleList) else [module]:
            handles.append(member.register_forward_pre_hook(enter(name)))
            handles.append(member.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _profiled_call(model: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    if not train:

        def infer() -> None:
            with torch.inference_mode():
                model(x)

        return infer
    target = torch.randint(0, 2, (x.shape[0], *x.shape[-2:]), device=x.device)

    def step() -> None:
        with record_function("forward"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target.clamp_max(logits.shape[1] - 1))
        with record_function("backward"):
            loss.backward()

    return step


def _summarize(
    averages: Sequence[Any], part_names: Sequence[str], *, total_ms: float, train: bool, on_device: bool, top: int
) -> dict[str, Any]:
    def inclusive_ms(event: Any) -> float:
        return (event.device_time_total if on_device else event.cpu_time_total) / 1e3

    def self_ms(event: Any) -> float:
        return (event.self_device_time_total if on_device else event.self_cpu_time_total) / 1e3

    by_key = {event.key: event for event in averages}
    rows = [{"name": name, "ms": inclusive_ms(by_key[name])} for name in part_names if name in by_key]
    if train and "backward" in by_key:
        rows.append({"name": "backward (all parts)", "ms": inclusive_ms(by_key["backward"])})
    measured = sum(r["ms"] for r in rows)
    # Time outside the parts: input checks, the loss, and the profiler's per-operator overhead.
    rows.append({"name": "other", "ms": max(0.0, total_ms - measured)})
    for r in rows:
        r["percent"] = 100.0 * r["ms"] / total_ms
    operators = sorted(
        (e for e in averages if e.key.startswith("aten::") or e.key.startswith("mkldnn")), key=self_ms, reverse=True
    )[:top]
    total_self = sum(self_ms(e) for e in averages) or 1.0
    return {
        "total_ms": total_ms,
        "parts": rows,
        "operators": [
            {"name": e.key, "self_ms": self_ms(e), "percent": 100 * self_ms(e) / total_self} for e in operators
        ],
    }


def profile_parts(
    model: nn.Module,
    x: torch.Tensor,
    *,
    train: bool = False,
    top_operators: int = 10,
) -> dict[str, Any]:
    """Per-part forward time and the costliest operators of one call, from ``torch.profiler``.

    Each part of :func:`~perspective_unet.engine.summary.model_parts` runs inside a ``record_function`` range. The
    call runs once unprofiled first, so one-time work (allocation, kernel selection) stays out of the profile.

    Args:
        model: A :class:`~perspective_unet.models.perspective_unet.PerspectiveUNet`, eager.
        x: The input batch, on the model's device.
        train: Profile forward, cross-entropy against random labels and backward instead of an inference pass;
            backward time is reported as one row, since autograd does not run inside the parts' ranges.
        top_operators: How many operators to list, by self time.

    Returns:
        ``{"total_ms", "parts": [{"name", "ms", "percent"}], "operators": [{"name", "self_ms", "percent"}]}``.
    """
    device = x.device
    parts = model_parts(model)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    call = _profiled_call(model, x, train)
    with _part_ranges(parts):
        call()  # warm-up
        synchronize(device)
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            call()
            synchronize(device)
            # Before the profiler stops: its teardown is not part of the call.
            total_ms = (time.perf_counter() - start) * 1e3
    return _summarize(
        prof.key_averages(),
        list(parts),
        total_ms=total_ms,
        train=train,
        on_device=device.type == "cuda",
        top=top_operators,
    )


def profile_path(
    model_name: str = "perspective_unet",
    *,
    mode: str = "inference",
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`profile_parts` on a model built for a path, eager even where the path compiles.

    Args:
        mode: ``"inference"`` or ``"train"``.
        settings: The path; ``None`` is the baseline.
        model_overrides: ``ModelConfig`` fields to override.

    Returns:
        What :func:`profile_parts` returns, plus ``mode`` and ``path`` (the path's name).
    """
    # A compiled model runs its parts inside one graph, where the hooks cannot mark them.
    eager = dataclasses.replace(settings_from(settings or baseline_settings()), compile=False)
    train = mode == "train"
    setup = prepare(
        device,
        eager,
        model_name=model_name,
        img_size=img_size,
        batch_size=batch_size,
        train=train,
        model_overrides=model_overrides,
        draw_input=True,
    )
    result = profile_parts(setup.model, setup.x, train=train)
    result.update(mode=mode, path=eager.name)
    return result
