"""Perspective+ Unet (MICCAI 2024) for 2D medical image segmentation.

Every name below loads on first use, so ``import perspective_unet`` (and the command line's ``--help``) imports
neither PyTorch nor MONAI until a model or a pipeline step is asked for.

Example:
    >>> import perspective_unet, torch
    >>> model = perspective_unet.create_model("perspective_unet_tiny", in_channels=1, num_classes=9)
    >>> model(torch.randn(2, 1, 64, 96)).shape
    torch.Size([2, 9, 64, 96])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from perspective_unet.version import __version__

# Each public name and the module it is read from; "metrics" is the module itself. The model names come from the
# ``models`` package, whose own __init__ says which file defines each.
_EXPORTS = {
    "InputError": "perspective_unet.errors",
    "ModelConfig": "perspective_unet.config",
    "TrainConfig": "perspective_unet.config",
    "PerspectiveUNet": "perspective_unet.models",
    "create_model": "perspective_unet.models",
    "from_pretrained": "perspective_unet.models",
    "list_models": "perspective_unet.models",
    "load_model": "perspective_unet.models",
    "load_official_checkpoint": "perspective_unet.models",
    "save_model": "perspective_unet.models",
    "save_pretrained": "perspective_unet.models",
    "train": "perspective_unet.engine.train",
    "evaluate": "perspective_unet.engine.evaluate",
    "predict_volume": "perspective_unet.engine.inference",
    "predict_path": "perspective_unet.engine.predict",
    "run_demo": "perspective_unet.engine.demo",
    "metrics": "perspective_unet.metrics",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these on first use
    from perspective_unet import metrics
    from perspective_unet.config import ModelConfig, TrainConfig
    from perspective_unet.engine.demo import run_demo
    from perspective_unet.engine.evaluate import evaluate
    from perspective_unet.engine.inference import predict_volume
    from perspective_unet.engine.predict import predict_path
    from perspective_unet.engine.train import train
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perspective_unet' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "metrics" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
