"""Activation checkpointing: recompute a segment's activations in backward instead of keeping them.

Not to be confused with :mod:`perspective_unet.models.checkpoint`, which saves and loads weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from perspective_unet.models.ops._torch_private import is_batchnorm

__all__ = ["frozen_batchnorm_statistics", "maybe_checkpoint"]


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` in training mode leave their running statistics unchanged.

    Used while a checkpointed segment is recomputed, so its BatchNorms update their statistics once per step, not
    twice. Outputs are unaffected: in training mode BatchNorm normalizes with the batch's own statistics.
    """
    norms = [m for m in module.modules() if is_batchnorm(m) and m.training]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistic, exactly
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool, module: nn.Module | None = None) -> Any:
    """``fn(*args)``, through non-reentrant activation checkpointing when ``enabled`` and a graph is being recorded.

    The random-number state is restored before recomputing, so dropout draws the same masks twice.

    Args:
        fn: The segment to run.
        *args: Its arguments.
        enabled: Checkpoint at all; without autograd ``fn`` simply runs.
        module: The module that ``fn`` runs, when it holds BatchNorm layers: their running statistics are then not
            updated again by the recomputation.

    Returns:
        What ``fn(*args)`` returns.
    """
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    if module is None:
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), frozen_batchnorm_statistics(module)),
    )
