"""Perspective+ Unet and its parts: layers, attention, blocks, encoder, integrator, decoder, the network.

The CPU backends these parts run through (oneDNN routes, fast dropout, checkpointing, the attention dispatch) are in
:mod:`perspective_unet.models.ops`.

Every name below loads on first use: the light modules of this package (``inference_info``, ``onnx_session``), which
the ONNX runtime reads without PyTorch, can be imported without the network's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it.
_EXPORTS = {
    "EfficientNonLocalAttention": "attention",
    "gaussian_orthogonal_random_matrix": "attention",
    "linear_attention": "attention",
    "random_feature_map": "attention",
    "BiPathResidualBlock": "blocks",
    "EfficientNonLocalTransformerBlock": "blocks",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "UNetDecoder": "decoder",
    "PerspectiveEncoder": "encoder",
    "SpatialCrossScaleIntegrator": "integrator",
    "convert_official_checkpoint": "official",
    "convert_official_state_dict": "official",
    "load_official_checkpoint": "official",
    "PerspectiveUNet": "perspective_unet",
    "from_pretrained": "pretrained",
    "save_pretrained": "pretrained",
    "create_model": "registry",
    "get_model_config": "registry",
    "list_models": "registry",
    "register_model": "registry",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these on first use
    from perspective_unet.models.attention import (
        EfficientNonLocalAttention,
        gaussian_orthogonal_random_matrix,
        linear_attention,
        random_feature_map,
    )
    from perspective_unet.models.blocks import BiPathResidualBlock, EfficientNonLocalTransformerBlock
    from perspective_unet.models.checkpoint import load_model, save_model
    from perspective_unet.models.decoder import UNetDecoder
    from perspective_unet.models.encoder import PerspectiveEncoder
    from perspective_unet.models.integrator import SpatialCrossScaleIntegrator
    from perspective_unet.models.official import (
        convert_official_checkpoint,
        convert_official_state_dict,
        load_official_checkpoint,
    )
    from perspective_unet.models.perspective_unet import PerspectiveUNet
    from perspective_unet.models.pretrained import from_pretrained, save_pretrained
    from perspective_unet.models.registry import create_model, get_model_config, list_models, register_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perspective_unet.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"perspective_unet.models.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BiPathResidualBlock",
    "EfficientNonLocalAttention",
    "EfficientNonLocalTransformerBlock",
    "PerspectiveEncoder",
    "PerspectiveUNet",
    "SpatialCrossScaleIntegrator",
    "UNetDecoder",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "create_model",
    "from_pretrained",
    "gaussian_orthogonal_random_matrix",
    "get_model_config",
    "linear_attention",
    "list_models",
    "load_model",
    "load_official_checkpoint",
    "random_feature_map",
    "register_model",
    "save_model",
    "save_pretrained",
]
