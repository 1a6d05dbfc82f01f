"""Perspective+ Unet and its parts: layers, attention, blocks, encoder, integrator, decoder, the network.

The CPU backends these parts run through (oneDNN routes, fast dropout, checkpointing, the attention dispatch) are in
:mod:`perspective_unet.models.ops`."""

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
