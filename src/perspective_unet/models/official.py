"""Loading checkpoints saved by the authors' released implementation.

The released state dicts use other module names; :func:`convert_official_state_dict` renames every key to this
project's names (and reshapes 1x1-convolution q/k/v weights to linear weights). The loaded model takes three
channels, repeats a one-channel input as the release does, is wired as the release wires its eight ablation settings,
and runs SCSI in ``official`` mode by default, so its logits equal the release's at batch size 1 for every sample of
any batch (``scsi_attention="released"`` gives the release's own batch-mixing function).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from perspective_unet.config import ModelConfig
from perspective_unet.errors import InputError
from perspective_unet.models.checkpoint import load_checkpoint_file, save_model
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.outputs import refuse_own_source

__all__ = [
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "is_official_state_dict",
    "load_official_checkpoint",
]

# Applied in order to every released key; each rule rewrites a prefix or a name inside the key.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.Encoder1\.layers\.(\d+)\.", "encoder.cnn.stages.<half:\\1>."),
    (r"\.resblock\.0\.", ".local_path.proj."),
    (r"\.resblock\.1\.", ".local_path."),
    (r"\.dilated_resblock\.0\.", ".dilated_path.proj."),
    (r"\.dilated_resblock\.1\.", ".dilated_path."),
    (r"\.fusionblock\.conv\.", ".fuse."),
    (r"\.fusionblock\.bn\.", ".fuse_bn."),
    (r"^encoder\.Encoder2\.stages\.", "encoder.transformer.stages."),
    (r"\.conv_match1\.0\.", ".attn.to_q."),
    (r"\.conv_match2\.0\.", ".attn.to_k."),
    (r"\.conv_assembly\.0\.", ".attn.to_v."),
    (r"\.attn\.projection_matrix$", ".attn.projection"),
    (r"^encoder\.Encoder2\.downsample\.", "encoder.transformer.downsamples."),
    (r"^encoder\.Encoder2\.channel_adjuster\.", "encoder.transformer.mergers."),
    (r"^encoder\.scale_integrator\.proj_layers\.", "encoder.integrator.in_proj."),
    (r"^encoder\.scale_integrator\.reproj_layers\.", "encoder.integrator.out_proj."),
    (r"^encoder\.scale_integrator\.transformer\.norm\.", "encoder.integrator.norm."),
    (r"^encoder\.scale_integrator\.transformer\.layers\.", "encoder.integrator.layers."),
    (r"\.self_attn\.in_proj_(weight|bias)$", ".attn.qkv.\\1"),
    (r"\.self_attn\.out_proj\.", ".attn.out."),
    (r"\.linear1\.", ".fc1."),
    (r"\.linear2\.", ".fc2."),
    (r"^encoder\.fuser\.", "encoder.fusers."),
    (r"^decoder\.first_block\.", "decoder.bottleneck."),
    (r"^decoder\.last_block\.", "decoder.final_block."),
    (r"^(decoder\..*)\.bn\.", "\\1.norm."),
    (r"^(encoder\.transformer\.downsamples\.\d+)\.bn\.", "\\1.norm."),
    (r"^segmentation_head\.0\.", "head."),
)
_HALF = re.compile(r"<half:(\d+)>")


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    # Encoder1.layers interleaves max-pool layers with the blocks, so block i sits at index 2 i.
    return _HALF.sub(lambda m: str(int(m.group(1)) // 2), key)


def _unwrap(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model", "model_state_dict", "net"):
        inner = state.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"entry {key!r} of the released checkpoint is a {type(value).__name__}, not a tensor.")
        # Checkpoints saved from nn.DataParallel prefix every key with "module.".
        tensors[key.removeprefix("module.")] = value
    return tensors


def is_official_state_dict(data: Mapping[str, object]) -> bool:
    """Whether a checkpoint's content is a state dict of the released implementation (its module names)."""
    try:
        keys = _unwrap(data)
    except InputError:
        return False
    return any(key.startswith(("encoder.Encoder1.", "segmentation_head.")) for key in keys)


def convert_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released state dict to this project's module names.

    Args:
        state: The released state dict (``module.`` prefixes and a ``state_dict``/``model`` wrapper are accepted).

    Returns:
        A new dict; 1x1-convolution weights of ENLSA's q/k/v become linear weights.
    """
    converted = {}
    for key, value in _unwrap(state).items():
        new_key = _rename(key)
        if re.search(r"\.attn\.to_[qkv]\.weight$", new_key) and value.ndim == 4:
            value = value.flatten(1)
        converted[new_key] = value
    return converted


def official_model_config(
    num_classes: int,
    use_bipath: bool = True,
    use_enltb: bool = True,
    use_scsi: bool = True,
    scsi_attention: str = "official",
    **overrides: Any,
) -> ModelConfig:
    """The configuration of the released network: 3 input channels with a gray input repeated, the ablation switches
    of ``PUnet(num_classes, use_enltb, use_scale_integrator, use_dilate_conv)``, and SCSI attention ``official``
    (the release at batch size 1, per sample) or ``released`` (across the batch, as the release trains)."""
    fields = {
        "in_channels": 3,
        "num_classes": num_classes,
        "repeat_gray_to_rgb": True,
        "scsi_attention": scsi_attention,
        "use_bipath": use_bipath,
        "use_enltb": use_enltb,
        "use_scsi": use_scsi,
    }
    return ModelConfig(**{**fields, **overrides})


# Released key prefixes of the parts an ablation switch removes, and the argument that says it is off.
_PART_PREFIXES = {"use_enltb": "encoder.transformer.", "use_scsi": "encoder.integrator."}


def load_official_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    scsi_attention: str = "official",
    use_bipath: bool = True,
    use_enltb: bool = True,
    use_scsi: bool = True,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
    origin: str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> PerspectiveUNet:
    """Load a checkpoint saved by the authors' released implementation into an eval-mode model.

    All eight ablation settings of the release load: pass the switches it was trained with (``use_dilate_conv``,
    ``use_enltb`` and ``use_scale_integrator`` of its ``PUnet``). The release builds the dilated path even when it is
    off; those weights are then unused and dropped.

    Args:
        source: Path of the released ``.pth`` (read with ``weights_only=True``) or its state dict.
        scsi_attention: ``"official"`` (the release at batch size 1, every sample on its own: the logits of its test)
            or ``"released"`` (attention across the batch, as the release trains; see ``ModelConfig``).
        use_bipath: ``False`` for a checkpoint trained without the dilated path.
        use_enltb: ``False`` for a checkpoint trained without the ENLTB branch.
        use_scsi: ``False`` for a checkpoint trained without the cross-scale integrator.
        num_classes: Output classes; by default read from the head's weight.
        map_location: Device for the weights.
        origin: The file a given state dict was read from, named in errors.
        **config_overrides: Any other ``ModelConfig`` field (dropout rates, ``fast_dropout``, ...).

    Returns:
        A :class:`PerspectiveUNet` with ``in_channels=3`` (a 1-channel input is repeated), in eval mode.

    Raises:
        InputError: listing every missing, unexpected or mis-shaped key at once (and the switch that would explain
            missing or unexpected parts).

    Example:
        >>> model = load_official_checkpoint("epoch_599.pth")  # doctest: +SKIP
        >>> no_scsi = load_official_checkpoint("ablation.pth", use_scsi=False)  # doctest: +SKIP
    """
    if origin is None:
        origin = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
    raw = load_checkpoint_file(source, map_location) if isinstance(source, (str, os.PathLike)) else source
    state = convert_official_state_dict(raw)
    if not use_bipath:
        state = {k: v for k, v in state.items() if ".dilated_path." not in k}
    if num_classes is None:
        head = state.get("head.weight")
        if head is None:
            raise InputError(f"{origin} has no 'segmentation_head.0.weight'; is it a Perspective+ Unet checkpoint?")
        num_classes = int(head.shape[0])
    try:
        config = official_model_config(num_classes, use_bipath, use_enltb, use_scsi, scsi_attention, **config_overrides)
    except TypeError as exc:
        raise InputError(f"load_official_checkpoint: {exc}; any ModelConfig field may be overridden.") from None
    model = PerspectiveUNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                parts.append(f"{len(keys)} {title}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
        hints = [
            f"{name}={not on}"
            for name, on in (("use_enltb", use_enltb), ("use_scsi", use_scsi))
            if any(k.startswith(_PART_PREFIXES[name]) for k in (missing if on else unexpected))
        ]
        hint = f" The file looks like an ablation: pass {', '.join(hints)}." if hints else ""
        raise InputError(
            f"{origin} does not match the released Perspective+ Unet for {num_classes} classes "
            f"(keys named after conversion to this project's names): " + "; ".join(parts) + "." + hint
        )
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def convert_official_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    destination: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    use_bipath: bool = True,
    use_enltb: bool = True,
    use_scsi: bool = True,
    scsi_attention: str = "official",
) -> Path:
    """Convert a released checkpoint to this project's format (weights plus config); returns the written path.

    Raises:
        InputError: ``destination`` is ``source`` itself (the released checkpoint would be lost), or ``source`` is
            not a released checkpoint.
    """
    if isinstance(source, (str, os.PathLike)):
        refuse_own_source([destination], [source], "write the conversion to another file")
    model = load_official_checkpoint(
        source,
        num_classes=num_classes,
        use_bipath=use_bipath,
        use_enltb=use_enltb,
        use_scsi=use_scsi,
        scsi_attention=scsi_attention,
    )
    return save_model(model, destination, converted_from="official")
