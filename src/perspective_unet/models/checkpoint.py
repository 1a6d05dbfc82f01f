"""The project's own checkpoint: weights plus the full model config, so a file alone rebuilds its model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from perspective_unet.config import ModelConfig
from perspective_unet.errors import InputError
from perspective_unet.models.perspective_unet import PerspectiveUNet

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_torch_save",
    "load_checkpoint_file",
    "load_model",
    "model_from_checkpoint",
    "save_model",
]

CHECKPOINT_FORMAT = "perspective-unet"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(model: PerspectiveUNet, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Save weights and config; ``extra`` entries (epoch, metrics, ...) are stored beside them.

    Example:
        >>> import perspective_unet, tempfile, os
        >>> model = perspective_unet.create_model("perspective_unet_tiny")
        >>> path = save_model(model, os.path.join(tempfile.mkdtemp(), "model.pt"))
        >>> type(perspective_unet.load_model(path)).__name__
        'PerspectiveUNet'
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    return atomic_torch_save(payload, path)


def load_checkpoint_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``.pt``/``.pth`` file with ``weights_only=True``; a missing or unreadable file raises a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth file.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise InputError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "is it a complete PyTorch checkpoint file?"
        ) from exc
    if not isinstance(data, Mapping):
        raise InputError(f"checkpoint {path} holds a {type(data).__name__}, not a dict of tensors.")
    return dict(data)


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, strict: bool = True
) -> PerspectiveUNet:
    """Rebuild a model from a checkpoint written by :func:`save_model` or by training; returns it in eval mode.

    Raises:
        InputError: when the file is not a checkpoint of this project (for a released checkpoint use
            :func:`~perspective_unet.load_official_checkpoint`).
    """
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path, map_location, strict=strict)


def model_from_checkpoint(
    data: Mapping[str, Any], path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
    strict: bool = True
) -> PerspectiveUNet:
    """The model of a checkpoint already read with :func:`load_checkpoint_file` (``path`` names it in errors)."""
    if data.get("format") != CHECKPOINT_FORMAT or "model_config" not in data or "model" not in data:
        raise InputError(
            f"{path} is not a perspective-unet checkpoint (no model config inside). For a checkpoint saved by the "
            "authors' released code use perspective_unet.load_official_checkpoint or "
            "`perspective-unet convert-official`."
        )
    model = PerspectiveUNet(ModelConfig.from_dict(dict(data["model_config"])))
    model.load_state_dict(data["model"], strict=strict)
    return model.to(map_location).eval()
