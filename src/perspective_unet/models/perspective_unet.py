"""Perspective+ Unet: Hu et al., "Perspective+ Unet: Enhancing Segmentation with Bi-Path Fusion and Efficient
Non-Local Attention for Superior Receptive Fields", MICCAI 2024 (arXiv 2406.14052)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from perspective_unet.config import CHECKPOINTABLE_PARTS, ModelConfig
from perspective_unet.models.attention import EfficientNonLocalAttention
from perspective_unet.models.decoder import UNetDecoder
from perspective_unet.models.encoder import PerspectiveEncoder

__all__ = ["PerspectiveUNet", "check_input_size", "nearest_valid_sizes"]


def nearest_valid_sizes(size: int, divisor: int) -> tuple[int, int]:
    """The valid side lengths just below and just above ``size`` (multiples of ``divisor``, at least ``divisor``)."""
    below = max(divisor, (size // divisor) * divisor)
    above = max(divisor, -(-size // divisor) * divisor)
    return below, above


def check_input_size(height: int, width: int, divisor: int) -> None:
    """Raise ``ValueError`` unless both sides are positive multiples of ``divisor``, naming the nearest valid sizes."""
    bad = [(name, s) for name, s in (("height", height), ("width", width)) if s < divisor or s % divisor]
    if not bad:
        return
    h_options = nearest_valid_sizes(height, divisor)
    w_options = nearest_valid_sizes(width, divisor)
    raise ValueError(
        f"Input size {height}x{width} is not supported: both sides must be multiples of {divisor}. "
        f"Nearest valid heights: {sorted(set(h_options))}, widths: {sorted(set(w_options))}; "
        f"resize or pad the image (e.g. to {h_options[1]}x{w_options[1]})."
    )


class PerspectiveUNet(nn.Module):
    """Perspective+ Unet: bi-path residual CNN encoder, efficient non-local transformer branch, spatial cross-scale
    integrator and a U-Net decoder.

    Build it with :func:`perspective_unet.create_model`, which names the paper's and smaller variants.

    Args:
        config: The architecture; see :class:`~perspective_unet.config.ModelConfig`.

    Example:
        >>> from perspective_unet import ModelConfig
        >>> model = PerspectiveUNet(ModelConfig(widths=(8, 16, 32, 64, 128), scsi_dim=32, scsi_heads=4))
        >>> model(torch.randn(1, 1, 48, 80)).shape
        torch.Size([1, 9, 48, 80])
    """

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or ModelConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self.encoder = PerspectiveEncoder(config)
        self.decoder = UNetDecoder(self.encoder.out_channels)
        self.head = nn.Conv2d(self.decoder.out_channels, config.num_classes, 3, padding=1)
        self.channels_last = False
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this number."""
        return self.config.size_divisor

    @property
    def batch_dependent(self) -> bool:
        """Whether a sample's output depends on the other samples of its batch (``scsi_attention="released"``).

        Inference runs such a model one slice at a time, as the released test does.
        """
        return self.config.use_scsi and self.config.scsi_attention == "released"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: Images of shape (B, in_channels, H, W), H and W multiples of ``size_divisor``. With
                ``repeat_gray_to_rgb`` a 1-channel input is repeated to ``in_channels``.

        Returns:
            Logits of shape (B, num_classes, H, W).
        """
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D input (batch, channels, height, width), got shape {tuple(x.shape)}.")
        channels = x.shape[1]
        if channels != self.config.in_channels:
            if channels == 1 and self.config.repeat_gray_to_rgb:
                x = x.expand(-1, self.config.in_channels, -1, -1)
            else:
                raise ValueError(
                    f"the model takes {self.config.in_channels} input channel(s), got {channels} "
                    f"(input shape {tuple(x.shape)})."
                )
        check_input_size(x.shape[-2], x.shape[-1], self.size_divisor)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.decoder(self.encoder(x)))

    def set_gradient_checkpointing(self, parts: bool | str | Iterable[str] = True) -> PerspectiveUNet:
        """Recompute the activations of some parts in backward instead of keeping them for it (training only).

        Args:
            parts: ``True`` for every part that supports it (``"cnn"``: the two finest bi-path stages, ``"enltb"``
                blocks, ``"scsi"`` layers), ``False`` for none, or the names of the parts.

        Returns:
            The model itself; ``config.gradient_checkpointing`` is updated to match.

        Example:
            >>> from perspective_unet import create_model
            >>> model = create_model("perspective_unet_tiny").set_gradient_checkpointing(["scsi"])
            >>> model.config.gradient_checkpointing
            ('scsi',)
        """
        if parts is True:
            chosen: tuple[str, ...] = CHECKPOINTABLE_PARTS
        elif parts is False:
            chosen = ()
        else:
            chosen = (parts,) if isinstance(parts, str) else tuple(parts)
        self.config = self.config.replace(gradient_checkpointing=chosen)  # validates the names
        self.encoder.cnn.gradient_checkpointing = "cnn" in chosen
        if self.encoder.transformer is not None:
            for stage in self.encoder.transformer.stages:
                stage.gradient_checkpointing = "enltb" in chosen
        if self.encoder.integrator is not None:
            self.encoder.integrator.gradient_checkpointing = "scsi" in chosen
        return self

    def to_channels_last(self, enabled: bool = True) -> PerspectiveUNet:
        """Store convolution weights and run feature maps in channels-last layout (faster oneDNN convolutions).

        The input is converted on entry; token reshapes then need no copies. Outputs equal the default layout's up
        to float rounding. ``enabled=False`` goes back to the default layout. Returns the model itself.
        """
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = bool(enabled)
        return self

    @torch.no_grad()
    def fuse_for_inference(self, channels_last: bool = True, inplace: bool = False) -> PerspectiveUNet:
        """An eval-mode copy with every BatchNorm folded into the convolution before it, for faster inference.

        Its logits equal the original's in eval mode up to float rounding (folding is done in float64). The copy's
        state dict has no BatchNorm entries and convolution biases instead: save and load the original model, not
        the copy. Its parameters do not require gradients.

        Args:
            channels_last: Also switch the copy to channels-last layout (:meth:`to_channels_last`).
            inplace: Fold this model itself instead of a copy (saves the copy's memory; this model can then no
                longer be trained or saved as a normal checkpoint).

        Example:
            >>> from perspective_unet import create_model
            >>> model = create_model("perspective_unet_tiny").eval()
            >>> fast = model.fuse_for_inference()
            >>> x = torch.randn(1, 1, 32, 32)
            >>> bool((fast(x) - model(x)).abs().max() < 1e-4)
            True
        """
        fused = (self if inplace else copy.deepcopy(self)).eval()
        for module in list(fused.modules()):
            fold = getattr(module, "fold_batchnorm_", None)
            if fold is not None:
                fold()
        for param in fused.parameters():
            param.requires_grad_(False)
        return fused.to_channels_last(channels_last) if channels_last else fused

    def redraw_projections(self) -> None:
        """Draw new random projections in every ENLSA module."""
        for module in self.modules():
            if isinstance(module, EfficientNonLocalAttention):
                module.redraw_projection()
