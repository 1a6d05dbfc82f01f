"""Perspective+ Unet (MICCAI 2024) for 2D medical image segmentation.

Example:
    >>> import torch, perspective_unet
    >>> model = perspective_unet.create_model("perspective_unet_tiny", in_channels=1, num_classes=9)
    >>> model(torch.randn(2, 1, 64, 96)).shape
    torch.Size([2, 9, 64, 96])
"""

from __future__ import annotations

__version__ = "0.1.0"

from perspective_unet.config import ModelConfig
from perspective_unet.errors import InputError
from perspective_unet.models import (
    PerspectiveUNet,
    create_model,
    list_models,
    load_model,
    load_official_checkpoint,
    save_model,
)

__all__ = [
    "InputError",
    "ModelConfig",
    "PerspectiveUNet",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
    "load_official_checkpoint",
    "save_model",
]
