"""ModelConfig: everything needed to rebuild a Perspective+ Unet."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from perspective_unet.config.checks import (
    _ENLSA_KERNELS,
    _RATE,
    _SCSI_ATTENTION,
    CHECKPOINTABLE_PARTS,
    SCSI_INITS,
    Check,
    _check_fields,
    _choice,
    _int,
    _number,
    _show,
    check_bool,
    check_int_list,
    dataclass_from_dict,
)

# The model -----------------------------------------------------------------------------------------------------------


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
        scsi_attention: ``"tokens"`` attends across the token sequence as the paper describes; ``"released"`` is
            the released code's function (attention across the samples of a batch at each token position, so a
            sample's output depends on its batch; evaluation and prediction run such a model one slice at a time, as
            the released test does); ``"official"`` is the released code at batch size 1 (attention =
            out_proj(v_proj(s))), applied to every sample on its own.
        scsi_init: Initial weights of the integrator's attention projections. ``"linear"``: ``nn.Linear``'s
            defaults for the joint q/k/v projection and the output projection. ``"released"``: the released code's
            ``nn.MultiheadAttention`` (xavier-uniform q/k/v weight over the stacked (3 dim, dim) matrix, zero biases,
            the output weight as ``nn.Linear``), drawing from the random generator in its order, so the released
            network's configuration built after ``torch.manual_seed(s)`` starts from the weights the released code
            starts from with that seed (except in the settings without the bi-path, whose unused dilated path the
            released code still draws).
        dilation: Dilation of the wide path of every bi-path block.
        enltb_dropout: Dropout after ENLSA and inside the ENLTB feed-forward layer.
        scsi_dropout: Dropout of the integrator's attention and feed-forward layers.
        drop_path_rate: Stochastic-depth rate of the ENLTB residual branches.
        use_bipath: Use the dilated path (ablation switch; without it the fusion sees the local path twice).
        use_enltb: Use the efficient non-local transformer branch (ablation switch).
        use_scsi: Use the spatial cross-scale integrator (ablation switch).
        repeat_gray_to_rgb: Repeat a 1-channel input to ``in_channels`` channels, as the released code does.
        fast_dropout: Training-time speed and memory, no effect in eval mode. On the CPU, dropout masks come from
            16-bit random thresholds (about 4x cheaper to draw; the rate is rounded to a multiple of 2^-16) and
            backward keeps a one-byte mask; the SCSI feed-forward ReLU and its dropout keep only their output; SCSI
            attention dropout runs block by block in memory linear in the tokens instead of SDPA's N x N math path.
            The random stream differs from ``torch.nn.Dropout``'s; ``False`` restores torch's dropout everywhere.
        gradient_checkpointing: Parts whose activations are recomputed in backward instead of kept, any of
            ``"cnn"`` (the two finest bi-path stages), ``"enltb"`` (each ENLTB block) and ``"scsi"`` (each
            integrator layer); empty keeps everything. Outputs, gradients and BatchNorm statistics are unchanged
            (dropout masks are redrawn identically); it trades compute for memory.
            ``PerspectiveUNet.set_gradient_checkpointing`` changes it on a built model. ``"enltb"`` cannot be
            combined with ``enlsa_redraw_interval > 0``.
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
    scsi_init: str = "linear"
    dilation: int = 2
    enltb_dropout: float = 0.1
    scsi_dropout: float = 0.1
    drop_path_rate: float = 0.1
    use_bipath: bool = True
    use_enltb: bool = True
    use_scsi: bool = True
    repeat_gray_to_rgb: bool = False
    fast_dropout: bool = True
    gradient_checkpointing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_fields(self, _MODEL_CHECKS, normalize=True)
        self.validate()

    @property
    def size_divisor(self) -> int:
        """The input sides must be multiples of this number."""
        return 2 ** (len(self.widths) - 1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field: each field's type and range, then their agreement."""
        _check_fields(self, _MODEL_CHECKS, normalize=False)
        for w in self.widths[-3:]:
            if w % self.enlsa_heads:
                raise ValueError(
                    f"enlsa_heads ({self.enlsa_heads}) must divide every transformer-stage width {self.widths[-3:]}."
                )
        if self.scsi_dim % self.scsi_heads:
            raise ValueError(f"scsi_heads ({self.scsi_heads}) must divide scsi_dim ({self.scsi_dim}).")
        if self.enlsa_redraw_interval and "enltb" in self.gradient_checkpointing:
            # A redraw during the recomputation would give backward another projection than forward used.
            raise ValueError("enlsa_redraw_interval > 0 cannot be combined with checkpointing 'enltb'.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``torch.load(weights_only=True)``-safe dict of the fields."""
        out = dataclasses.asdict(self)
        out["widths"] = list(self.widths)
        out["enltb_depths"] = list(self.enltb_depths)
        out["gradient_checkpointing"] = list(self.gradient_checkpointing)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from ``to_dict()`` output; unknown keys raise ``ValueError``.

        Checkpoints of earlier versions carry an ``extra`` entry that nothing ever read; an empty one is ignored.
        """
        if isinstance(data, dict) and "extra" in data and not data["extra"]:
            data = {k: v for k, v in data.items() if k != "extra"}
        return dataclass_from_dict(cls, data, "model config keys")

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"Unknown model options {unknown}; valid options are {sorted(known)}.")
        return dataclasses.replace(self, **overrides)


def _check_checkpointing(name: str, value: Any) -> tuple[str, ...]:
    parts = (value,) if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) and p in CHECKPOINTABLE_PARTS for p in parts):
        raise ValueError(f"{name} takes parts among {CHECKPOINTABLE_PARTS}, got {_show(value)}.")
    return tuple(parts)


_MODEL_CHECKS: dict[str, Check] = {
    "in_channels": _int(1),
    "num_classes": _int(2, note=" (background and at least one class)"),
    "widths": lambda name, value: check_int_list(
        name,
        value,
        min_length=3,
        what="a list of at least 3 positive integers (the transformer branch uses the last 3 stages)",
    ),
    "enltb_depths": lambda name, value: check_int_list(
        name, value, length=3, what="a list of 3 positive integers (one per transformer stage)"
    ),
    "enlsa_features": _int(1, optional=True),
    "enlsa_heads": _int(1),
    "enlsa_kernel": _choice(_ENLSA_KERNELS),
    "enlsa_redraw_interval": _int(0, note=" (0 never redraws)"),
    "mlp_ratio": _number(low=0, low_open=True),
    "scsi_dim": _int(1),
    "scsi_heads": _int(1),
    "scsi_depth": _int(1),
    "scsi_ffn_dim": _int(1),
    "scsi_attention": _choice(_SCSI_ATTENTION),
    "scsi_init": _choice(SCSI_INITS),
    "dilation": _int(1),
    "enltb_dropout": _RATE,
    "scsi_dropout": _RATE,
    "drop_path_rate": _RATE,
    "use_bipath": check_bool,
    "use_enltb": check_bool,
    "use_scsi": check_bool,
    "repeat_gray_to_rgb": check_bool,
    "fast_dropout": check_bool,
    "gradient_checkpointing": _check_checkpointing,
}
