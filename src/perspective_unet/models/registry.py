"""Named variants of Perspective+ Unet and ``create_model``, in the manner of timm's registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from perspective_unet.config import ModelConfig
from perspective_unet.models.perspective_unet import PerspectiveUNet

__all__ = ["create_model", "get_model_config", "list_models", "register_model"]

_REGISTRY: dict[str, Callable[[], dict[str, Any]]] = {}


def register_model(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Register a function returning a variant's ``ModelConfig`` fields under the function's name."""
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def perspective_unet() -> dict[str, Any]:
    """The paper's network: widths 64..1024, SCSI width 256 with 8 heads and 6 layers (112.66 M parameters)."""
    return {}


@register_model
def perspective_unet_small() -> dict[str, Any]:
    """A quarter of the paper's widths (16..256), SCSI width 64 with 4 heads and 6 layers: CPU-sized."""
    return dict(widths=(16, 32, 64, 128, 256), scsi_dim=64, scsi_heads=4, scsi_ffn_dim=512)


@register_model
def perspective_unet_tiny() -> dict[str, Any]:
    """An eighth of the paper's widths (8..128), SCSI width 32 with 4 heads and 2 layers: for quick CPU runs."""
    return dict(widths=(8, 16, 32, 64, 128), scsi_dim=32, scsi_heads=4, scsi_depth=2, scsi_ffn_dim=256)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def get_model_config(name: str = "perspective_unet", **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` of a named variant with some fields overridden.

    Raises:
        ValueError: for an unknown name or option.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available models: {', '.join(list_models())}.")
    return ModelConfig().replace(**{**_REGISTRY[name](), **overrides})


def create_model(
    name: str = "perspective_unet", *, in_channels: int = 1, num_classes: int = 9, **overrides: Any
) -> PerspectiveUNet:
    """Build a named Perspective+ Unet variant.

    Args:
        name: One of :func:`list_models`: ``perspective_unet`` (the paper's), ``perspective_unet_small``,
            ``perspective_unet_tiny``.
        in_channels: Input channels (1 for CT and MR).
        num_classes: Output classes, background included.
        **overrides: Any :class:`~perspective_unet.config.ModelConfig` field, e.g. ``widths``,
            ``enltb_depths``, ``enlsa_features``, ``enlsa_heads``, ``enlsa_kernel``, ``scsi_dim``, ``scsi_heads``,
            ``scsi_depth``, ``scsi_attention``, ``dilation``, ``drop_path_rate``, ``use_bipath``, ``use_enltb``,
            ``use_scsi``.

    Example:
        >>> model = create_model("perspective_unet_tiny", num_classes=4, use_scsi=False)
        >>> sum(p.numel() for p in model.parameters()) > 0
        True
    """
    return PerspectiveUNet(get_model_config(name, in_channels=in_channels, num_classes=num_classes, **overrides))
