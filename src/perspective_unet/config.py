"""Configuration dataclasses. Standard library only, so every layer of the package can import them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelConfig"]

_ENLSA_KERNELS = ("softmax", "relu")
_SCSI_ATTENTION = ("tokens", "official")


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
        scsi_attention: ``"tokens"`` attends across the token sequence as the paper describes; ``"official"``
            reproduces the released code at batch size 1 (attention = out_proj(v_proj(s))), per sample.
        dilation: Dilation of the wide path of every bi-path block.
        enltb_dropout: Dropout after ENLSA and inside the ENLTB feed-forward layer.
        scsi_dropout: Dropout of the integrator's attention and feed-forward layers.
        drop_path_rate: Stochastic-depth rate of the ENLTB residual branches.
        use_bipath: Use the dilated path (ablation switch; without it the fusion sees the local path twice).
        use_enltb: Use the efficient non-local transformer branch (ablation switch).
        use_scsi: Use the spatial cross-scale integrator (ablation switch).
        repeat_gray_to_rgb: Repeat a 1-channel input to ``in_channels`` channels, as the released code does.
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.enltb_depths = tuple(int(d) for d in self.enltb_depths)  # type: ignore[assignment]
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
        for name in ("enltb_dropout", "scsi_dropout", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``torch.load(weights_only=True)``-safe dict of the fields."""
        out = dataclasses.asdict(self)
        out["widths"] = list(self.widths)
        out["enltb_depths"] = list(self.enltb_depths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from ``to_dict()`` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown model config keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown model options {unknown}; valid options are {sorted(known - {'extra'})}.")
        return dataclasses.replace(self, **overrides)


def _positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
