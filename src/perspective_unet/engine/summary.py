"""A model's size and cost: parameters and FLOPs per part, output shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.table import format_table

__all__ = ["ModelSummary", "PartSummary", "count_flops_mode", "model_parts", "summarize_model"]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ARG001
    # (B, H, N, d) x (B, H, M, d) -> scores, then (B, H, N, M) x (B, H, M, e): two products of 2 FLOPs per MAC.
    batch, heads, n, d = query_shape
    m, e = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * n * m * (d + e)


def count_flops_mode() -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts PyTorch's CPU attention kernel, which it does not know by default."""
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    )


@dataclass
class PartSummary:
    """Parameters and forward FLOPs of one part of the network."""

    name: str
    parameters: int
    flops: int


@dataclass
class ModelSummary:
    """What ``perspective-unet info`` prints."""

    model_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parts: list[PartSummary] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(p.parameters for p in self.parts)

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.parts)

    def table(self) -> str:
        """A plain-text table, one row per part and a total."""
        rows = [(p.name, f"{p.parameters / 1e6:.3f}", f"{p.flops / 1e9:.2f}") for p in self.parts]
        total = ("total", f"{self.parameters / 1e6:.3f}", f"{self.flops / 1e9:.2f}")
        title = f"model {self.model_name}: input {tuple(self.input_shape)} -> output {tuple(self.output_shape)}"
        return title + "\n" + format_table(("part", "params (M)", "GFLOPs"), rows, footer=total)


def model_parts(model: PerspectiveUNet) -> dict[str, nn.Module]:
    """The network's parts in data-flow order; parts an ablation leaves out are omitted."""
    encoder = model.encoder
    candidates = {
        "bi-path CNN encoder": encoder.cnn,
        "ENLTB encoder": encoder.transformer,
        "SCSI integrator": encoder.integrator,
        "fusion": encoder.fusers,
        "decoder": model.decoder,
        "head": model.head,
    }
    return {name: module for name, module in candidates.items() if module is not None}


@torch.no_grad()
def summarize_model(
    model: PerspectiveUNet, img_size: tuple[int, int] = (224, 224), batch_size: int = 1, model_name: str = ""
) -> ModelSummary:
    """Count parameters per part and FLOPs per part of one forward pass (``torch.utils.flop_counter``).

    FLOPs count a multiply-add as two operations; element-wise work (activations, norms) is not counted.

    Example:
        >>> import perspective_unet
        >>> s = summarize_model(perspective_unet.create_model("perspective_unet_tiny"), (64, 64))
        >>> s.output_shape
        (1, 9, 64, 64)
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, model.config.in_channels, *img_size, device=device)
    parts = model_parts(model)
    counter = count_flops_mode()
    handles = []
    flops: dict[str, int] = {}

    # Each part's FLOPs are the counter's total taken before and after the part runs.
    def _before(name: str):
        def hook(module, args):  # noqa: ARG001
            flops[name] = flops.get(name, 0) - counter.get_total_flops()

        return hook

    def _after(name: str):
        def hook(module, args, output):  # noqa: ARG001
            flops[name] += counter.get_total_flops()

        return hook

    for name, module in parts.items():
        # A ModuleList never runs itself, so its members are hooked one by one and their FLOPs add up.
        for member in module if isinstance(module, nn.ModuleList) else [module]:
            handles.append(member.register_forward_pre_hook(_before(name)))
            handles.append(member.register_forward_hook(_after(name)))
    try:
        with counter:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    summary = ModelSummary(model_name or "custom", tuple(x.shape), tuple(out.shape))
    for name, module in parts.items():
        summary.parts.append(PartSummary(name, sum(p.numel() for p in module.parameters()), flops.get(name, 0)))
    return summary
