"""Perspective+ Unet (MICCAI 2024) for 2D medical image segmentation.

Example:
    >>> import torch, perspective_unet
    >>> model = perspective_unet.create_model("perspective_unet_tiny", in_channels=1, num_classes=9)
    >>> model(torch.randn(2, 1, 64, 96)).shape
    torch.Size([2, 9, 64, 96])
"""

from __future__ import annotations

__version__ = "0.1.0"

from perspective_unet.config import ModelConfig, TrainConfig
from perspective_unet.errors import InputError
from perspective_unet.models import (
    PerspectiveUNet,
    create_model,
    from_pretrained,
    list_models,
    load_model,
    load_official_checkpoint,
    save_model,
    save_pretrained,
)

# The pipeline's entry points import MONAI, TensorBoard and friends; they load on first use so that building a model
# stays a light import.
_LAZY = {
    "train": "perspective_unet.engine.train",
    "evaluate": "perspective_unet.engine.evaluate",
    "predict_volume": "perspective_unet.engine.inference",
    "predict_path": "perspective_unet.engine.predict",
    "run_demo": "perspective_unet.engine.demo",
    "metrics": "perspective_unet.metrics",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "metrics" else getattr(module, name)
    raise AttributeError(f"module 'perspective_unet' has no attribute {name!r}")


__all__ = [
    "InputError",
    "ModelConfig",
    "PerspectiveUNet",
    "TrainConfig",
    "__version__",
    "create_model",
    "evaluate",
    "from_pretrained",
    "list_models",
    "load_model",
    "load_official_checkpoint",
    "metrics",
    "predict_path",
    "predict_volume",
    "run_demo",
    "save_model",
    "save_pretrained",
    "train",
]
