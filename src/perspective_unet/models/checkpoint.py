"""The project's own checkpoint: weights plus the full model config, so a file alone rebuilds its model.

:func:`load_checkpoint_file` is the one reader of ``.pt`` files (``weights_only=True``); :func:`model_from_checkpoint`
rebuilds the model of what it read. :func:`perspective_unet.runs.load` uses both for every kind of model source and
reads what inference needs beside the weights (:class:`~perspective_unet.models.inference_info.InferenceInfo`) from the
same content, so a command reads each file once.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from perspective_unet.config import ModelConfig
from perspective_unet.errors import InputError
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.outputs import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_torch_save",
    "check_state_dict",
    "load_checkpoint_file",
    "load_model",
    "model_from_checkpoint",
    "save_model",
]

CHECKPOINT_FORMAT = "perspective-unet"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename, so a crash never leaves half a file.

    The file gets the mode the umask gives new files; a temporary file a killed run left behind is removed by the
    next run in the folder (``outputs.remove_stale_temporaries``).
    """
    return atomic_write(path, lambda tmp: _save(obj, tmp))


def _save(obj: Any, path: Path) -> None:
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        # torch's writer reports a failed write (a full disk, a vanished mount) as a RuntimeError of its own.
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        code, reason = (errno.ENOSPC, "No space left on device") if free < 2**20 else (errno.EIO, str(exc))
        raise OSError(code, reason, str(path)) from exc


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
    """Read a ``.pt``/``.pth`` file with ``weights_only=True``; a missing or unreadable file raises a clear error.

    Raises:
        FileNotFoundError: The file does not exist.
        InputError: The file is empty, truncated, not a PyTorch checkpoint, or holds Python objects that a safe load
            refuses (the file is then not loaded at all).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth file.")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes); copy or download it again.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise InputError(
                f"checkpoint {path} holds Python objects besides tensors, which could run code when loaded; it was "
                "refused and nothing of it was run. Checkpoints of perspective-unet and released state dicts hold "
                "tensors only: use one of those."
            ) from None
        raise InputError(f"checkpoint {path} is not a readable PyTorch checkpoint ({exc}); copy it again.") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {first_line}); is it a complete PyTorch "
            "checkpoint file? Copy or download it again."
        ) from None
    if not isinstance(data, Mapping):
        raise InputError(f"checkpoint {path} holds a {type(data).__name__}, not a dict of tensors.")
    return dict(data)


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, strict: bool = True
) -> PerspectiveUNet:
    """Rebuild a model from a checkpoint written by :func:`save_model` or by training; returns it in eval mode.

    Raises:
        InputError: when the file is not a checkpoint of this project (for a released checkpoint use
            :func:`~perspective_unet.load_official_checkpoint`), or its config and weights disagree.
    """
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path, map_location, strict=strict)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], origin: str, strict: bool = True
) -> None:
    """Raise ``InputError`` listing missing, unexpected and mis-shaped tensors, and tensors that are not finite."""
    missing = sorted(set(expected) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(expected)) if strict else []
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    )
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            parts.append(f"{len(keys)} {title}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
    if parts:
        raise InputError(
            f"{origin}: its weights do not match its model config ({'; '.join(parts)}); the file is "
            "damaged or was edited."
        )
    broken = sorted(
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    )
    if broken:
        raise InputError(
            f"{origin} holds NaN or infinite weights in {len(broken)} tensor(s) ({', '.join(broken[:4])}"
            f"{' ...' if len(broken) > 4 else ''}); the training diverged or the file is damaged. Use "
            "an earlier checkpoint."
        )


def model_from_checkpoint(
    data: Mapping[str, Any],
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    strict: bool = True,
) -> PerspectiveUNet:
    """The model of a checkpoint already read with :func:`load_checkpoint_file` (``path`` names it in errors).

    The config is checked against the weights on the ``meta`` device before any memory is allocated, so a damaged
    config (widths of 200,000, say) is reported instead of exhausting the memory.
    """
    if data.get("format") != CHECKPOINT_FORMAT or "model_config" not in data or "model" not in data:
        raise InputError(
            f"{path} is not a perspective-unet checkpoint (no model config inside). For a checkpoint saved by the "
            "authors' released code use perspective_unet.load_official_checkpoint or "
            "`perspective-unet convert-official`."
        )
    try:
        config = ModelConfig.from_dict(dict(data["model_config"]))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path} holds an invalid model config ({exc}); the file is damaged or was edited.") from None
    state = data["model"]
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: its 'model' entry is a {type(state).__name__}, not a state dict.")
    with torch.device("meta"):
        skeleton = PerspectiveUNet(config)
    check_state_dict(skeleton.state_dict(), state, str(path), strict=strict)
    model = PerspectiveUNet(config)
    model.load_state_dict(state, strict=strict)
    return model.to(map_location).eval()
