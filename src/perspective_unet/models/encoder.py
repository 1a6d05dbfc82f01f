"""The encoder: bi-path CNN stages, the efficient non-local transformer branch, the cross-scale integrator and the
fusion of both branches into the decoder's skip connections."""

from __future__ import annotations

import torch
from torch import nn

from perspective_unet.config import ModelConfig
from perspective_unet.models.blocks import BiPathResidualBlock, EfficientNonLocalTransformerBlock
from perspective_unet.models.integrator import SpatialCrossScaleIntegrator
from perspective_unet.models.layers import ConvNormAct, to_feature_map, to_tokens
from perspective_unet.models.ops import maybe_checkpoint

__all__ = ["BiPathEncoder", "NonLocalEncoder", "NonLocalStage", "PerspectiveEncoder"]


class BiPathEncoder(nn.Module):
    """Bi-path residual stages with 2x2 max pooling between them.

    Args:
        in_channels: Input channels.
        widths: Output channels of each stage; stage ``i`` works at 1 / 2**i of the input size.
        dilation: Dilation of the wide path.
        use_bipath: Build and use the dilated paths.

    Attributes:
        gradient_checkpointing: Recompute the two finest stages in backward instead of keeping their activations;
            they hold about three quarters of the CNN's saved activations for two fifths of its FLOPs.
    """

    checkpointed_stages = 2

    def __init__(self, in_channels: int, widths: tuple[int, ...], dilation: int = 2, use_bipath: bool = True) -> None:
        super().__init__()
        ins = (in_channels, *widths[:-1])
        self.gradient_checkpointing = False
        self.stages = nn.ModuleList(BiPathResidualBlock(i, o, dilation, use_bipath) for i, o in zip(ins, widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = x if i == 0 else self.pool(x)
            enabled = self.gradient_checkpointing and self.training and i < self.checkpointed_stages
            x = maybe_checkpoint(stage, x, enabled=enabled, module=stage)
            features.append(x)
        return features


class NonLocalStage(nn.Sequential):
    """Consecutive ENLTBs that stay in token layout between blocks.

    Attributes:
        gradient_checkpointing: Recompute each block's activations in backward instead of keeping them.
    """

    gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = to_tokens(x)
        enabled = self.gradient_checkpointing and self.training
        for block in self:
            tokens = maybe_checkpoint(block.forward_tokens, tokens, enabled=enabled)
        return to_feature_map(tokens, height, width)


class NonLocalEncoder(nn.Module):
    """Three ENLTB stages on the three coarsest CNN features, each stage also fed by the previous one.

    Stage 0 takes the CNN feature itself; stage s > 0 takes a 1x1 merge of the CNN feature and the previous stage's
    output, brought down by a stride-2 2x2 ConvBNReLU.

    Args:
        widths: Channels of the three CNN features it reads, finest first.
        config: Supplies the ENLTB options.
    """

    def __init__(self, widths: tuple[int, ...], config: ModelConfig) -> None:
        super().__init__()
        rate = config.drop_path_rate
        self.stages = nn.ModuleList(
            NonLocalStage(
                *(
                    EfficientNonLocalTransformerBlock(
                        width,
                        heads=config.enlsa_heads,
                        num_features=config.enlsa_features,
                        kernel=config.enlsa_kernel,
                        redraw_interval=config.enlsa_redraw_interval,
                        mlp_ratio=config.mlp_ratio,
                        dropout=config.enltb_dropout,
                        drop_path=rate,
                        fast_dropout=config.fast_dropout,
                    )
                    for _ in range(depth)
                )
            )
            for width, depth in zip(widths, config.enltb_depths)
        )
        self.downsamples = nn.ModuleList(
            ConvNormAct(widths[i], widths[i + 1], kernel_size=2, stride=2, padding=0) for i in range(len(widths) - 1)
        )
        self.mergers = nn.ModuleList(nn.Conv2d(2 * w, w, 1) for w in widths[1:])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for i, (stage, feature) in enumerate(zip(self.stages, features)):
            if i > 0:
                feature = self.mergers[i - 1](torch.cat([feature, self.downsamples[i - 1](outputs[-1])], dim=1))
            outputs.append(stage(feature))
        return outputs


class PerspectiveEncoder(nn.Module):
    """The whole encoder of Perspective+ Unet; returns one skip feature per CNN stage, finest first.

    The three coarsest skips are ``fuse(concat(context, cnn_feature))``, where the context is the SCSI output of
    the ENLTB features; as the released code wires its ablations, without ENLTB the three coarsest CNN features take
    the place of the ENLTB features (in SCSI when it is on, in the fusion otherwise), and the fusion is applied in
    every setting (with both switches off it fuses each CNN feature with itself).

    Attributes:
        out_channels: Channels of each returned skip, finest first (the decoder is built from it).
        strides: Down-sampling factor of each skip.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.widths
        deep = widths[-3:]
        self.out_channels = list(widths)
        self.strides = [2**i for i in range(len(widths))]
        self.cnn = BiPathEncoder(config.in_channels, widths, config.dilation, config.use_bipath)
        self.transformer = NonLocalEncoder(deep, config) if config.use_enltb else None
        self.integrator = (
            SpatialCrossScaleIntegrator(
                deep,
                dim=config.scsi_dim,
                heads=config.scsi_heads,
                depth=config.scsi_depth,
                ffn_dim=config.scsi_ffn_dim,
                dropout=config.scsi_dropout,
                attention=config.scsi_attention,
                fast_dropout=config.fast_dropout,
                init=config.scsi_init,
            )
            if config.use_scsi
            else None
        )
        self.fusers = nn.ModuleList(nn.Conv2d(2 * w, w, 1) for w in deep)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.cnn(x)
        shallow, deep = features[:-3], features[-3:]
        context = self.transformer(deep) if self.transformer is not None else deep
        if self.integrator is not None:
            context = self.integrator(context)
        fused = [fuse(torch.cat([c, f], dim=1)) for fuse, c, f in zip(self.fusers, context, deep)]
        return shallow + fused
