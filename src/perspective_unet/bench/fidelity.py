"""Output fidelity: how far a path's eval-mode outputs are from the plain float32 path's, with the same weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from perspective_unet.bench.measure import prepare
from perspective_unet.bench.settings import PathSettings, baseline_settings, optimized_settings, path_autocast
from perspective_unet.engine.summary import model_parts
from perspective_unet.models.perspective_unet import PerspectiveUNet

__all__ = ["output_fidelity"]


@torch.no_grad()
def output_fidelity(
    model_name: str = "perspective_unet",
    *,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Eval-mode logits of a path against the plain float32 path with the same weights, both without autograd.

    A randomly initialized network's logits can be small (a decoder can shrink the signal), which can hide a
    difference inside the encoder, so each part's output is compared too.

    Args:
        settings: The path; ``None`` is the default optimized path.
        model_overrides: ``ModelConfig`` fields to override.

    Returns:
        ``max_abs_diff``, ``max_abs_logit`` and their ratio ``relative``, the fraction of pixels whose argmax label
        agrees (``label_agreement``), and ``parts``: per part of
        :func:`~perspective_unet.engine.summary.model_parts`, the largest difference of its outputs relative to
        their largest value (eager paths only: a compiled model runs its parts inside one graph).
    """
    reference_setup = prepare(
        device,
        baseline_settings(),
        model_name=model_name,
        img_size=img_size,
        batch_size=batch_size,
        model_overrides=model_overrides,
        draw_input=True,
        seed=2,
    )
    x = reference_setup.x
    reference, reference_parts = _outputs_by_part(reference_setup.model, x, contextlib.nullcontext())
    del reference_setup  # frees the reference model before the path's is built
    setup = prepare(
        device, settings or optimized_settings(device), model_name=model_name, model_overrides=model_overrides
    )
    out, parts = _outputs_by_part(setup.model, x, path_autocast(setup.device, setup.settings))
    diff = float((out - reference).abs().max())
    scale = float(reference.abs().max())
    agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
    part_relative = {
        name: max(_relative_difference(a, b) for a, b in zip(got, reference_parts[name]))
        for name, got in parts.items()
        if name in reference_parts
    }
    return {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "relative": diff / scale,
        "label_agreement": agree,
        "parts": part_relative,
    }


def _relative_difference(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def _outputs_by_part(
    model: nn.Module, x: torch.Tensor, context: contextlib.AbstractContextManager
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    captured: dict[str, list[torch.Tensor]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module, args, output):  # noqa: ARG001
            tensors = [output] if isinstance(output, torch.Tensor) else list(output)
            captured[name] = [t.detach().float().clone() for t in tensors]

        return hook

    parts = model_parts(model) if isinstance(model, PerspectiveUNet) else {}
    handles = [module.register_forward_hook(keep(name)) for name, module in parts.items()]
    try:
        with context:
            logits = model(x).float()
    finally:
        for handle in handles:
            handle.remove()
    return logits, captured
