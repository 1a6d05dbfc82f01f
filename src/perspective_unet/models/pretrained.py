"""A self-describing model folder without pickle, in the Hugging Face layout (same file names), read offline.

```
MODEL/
  config.json          format, the full model config, the SHA-256 of the weights file, the versions that wrote it
  model.safetensors    the weights (safetensors: tensors only, nothing that runs on load)
  preprocessing.json   what inference needs to see a new scan as the training data were seen: the plan (protocol,
                       spacing, patch size, intensity, context slices) and the training data's modality, intensity
                       normalization and orientation
  labels.json          class ids -> names and display colors
  README.md            a model card (written by ``perspective-unet export``; optional for loading)
```

:func:`save_pretrained` writes the folder (all files or none); :func:`from_pretrained` rebuilds the model and
:func:`~perspective_unet.models.inference_info.read_inference_info` reads what prediction needs beside it
(:func:`perspective_unet.runs.load` does both for any ``--checkpoint``). The loader never unpickles: config and labels
are JSON, weights are safetensors, checked against the recorded hash before they are read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from perspective_unet.config import ModelConfig
from perspective_unet.errors import InputError
from perspective_unet.models.checkpoint import check_state_dict
from perspective_unet.models.inference_info import (
    DEFAULT_IMG_SIZE,
    LABELS_FILE,
    PREPROCESSING_FILE,
    InferenceInfo,
    inference_file_texts,
)
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.outputs import read_json, text_writer, write_all
from perspective_unet.plan import Plan

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "from_pretrained",
    "is_model_folder",
    "save_pretrained",
    "weights_bytes",
    "weights_sha256",
    "write_model_folder",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FOLDER_FORMAT = "perspective-unet-model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_bytes(model: PerspectiveUNet) -> bytes:
    """The model's weights as ``model.safetensors`` holds them (from the CPU, contiguous)."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": "pt"})


def weights_sha256(model: PerspectiveUNet) -> str:
    """SHA-256 of :func:`weights_bytes`: the hash a model folder's ``config.json`` records, and an exported ONNX
    graph's metadata, for the same weights."""
    return hashlib.sha256(weights_bytes(model)).hexdigest()


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a model's ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def save_pretrained(
    model: PerspectiveUNet,
    folder: str | os.PathLike[str],
    *,
    plan: Plan | None = None,
    img_size: Sequence[int] = DEFAULT_IMG_SIZE,
    dataset: Mapping[str, Any] | None = None,
    colors: Sequence[Sequence[int]] | None = None,
    card: str | None = None,
    overwrite: bool = False,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload perspective-unet model",
) -> Path:
    """Write ``model`` as a model folder (see the module docstring); every file appears, or none. With
    ``push_to_hub`` the folder is then uploaded to the Hugging Face Hub
    (:func:`~perspective_unet.models.hub.push_folder`).

    Args:
        model: The model (its weights are saved from the CPU, contiguous).
        folder: The folder; created if needed.
        plan: The plan it was trained with (None: the paper protocol at ``img_size``).
        img_size: The training size, used when there is no plan.
        dataset: The training data's description (``class_names``, ``modality``, ``normalization``, ``intensity``,
            ``orientation``, ``name``, ``license``, as a checkpoint's ``dataset`` entry holds them).
        colors: A display color (r, g, b) per class id.
        card: The model card's Markdown; None writes none, or, when pushing, a short card with the Hub's metadata.
        overwrite: Replace the files of an earlier model in ``folder``.
        push_to_hub: Upload the folder to the Hub repository ``repo_id`` (created if needed).
        repo_id: ``owner/name`` on the Hub; default the folder's name under the token's user.
        private: Create the repository private (None: the Hub's default).
        token: A Hub token (None: huggingface_hub's stored login).
        commit_message: The upload's commit message.

    Raises:
        FileExistsError: ``folder`` holds a model's files and ``overwrite`` is False.
        InputError: ``plan`` or ``dataset`` is invalid, or pushing without huggingface_hub installed.
    """
    from perspective_unet.models.hub import card_front_matter, push_folder

    info = InferenceInfo.from_record(
        plan, dataset, "the plan or dataset given to save_pretrained", img_size=tuple(img_size)
    )
    if card is None and push_to_hub:
        # The Hub indexes a model by its card's metadata: a pushed folder always gets one.
        card = card_front_matter(info, num_classes=model.config.num_classes) + "\n# Perspective+ Unet model\n"
    folder = write_model_folder(model, folder, info, colors=colors, card=card, overwrite=overwrite)
    if push_to_hub:
        push_folder(
            folder, repo_id or Path(folder).resolve().name, private=private, token=token, commit_message=commit_message
        )
    return folder


def write_model_folder(
    model: PerspectiveUNet,
    folder: str | os.PathLike[str],
    info: InferenceInfo,
    *,
    colors: Sequence[Sequence[int]] | None = None,
    card: str | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`save_pretrained` with the inference info as a value (what ``perspective-unet export`` writes).

    A failure (a full disk, an interrupt) leaves no file behind, and no folder if this call created it.

    Raises:
        FileExistsError: ``folder`` holds a model's files and ``overwrite`` is False.
        OSError: Writing failed (the error names the file).
    """
    folder = Path(folder)
    names = [CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, LABELS_FILE, *([CARD_FILE] if card is not None else [])]
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder / existing[0]} already exists; pass --overwrite to replace the model folder.")
    inference_texts = inference_file_texts(info, model.config.num_classes, colors)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _write_folder_files(model, folder, inference_texts, card)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty: another process wrote into it meanwhile
                folder.rmdir()
        raise
    return folder


def _save_weights(state: Mapping[str, torch.Tensor], path: Path, target: Path) -> None:
    """``safetensors.torch.save_file``, its I/O errors raised as ``OSError`` naming ``target`` (a full disk is then
    one line, as every other file's)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(dict(state), str(path), metadata={"format": "pt"})
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        raise OSError(int(code.group(1)) if code else errno.EIO, str(exc), str(target)) from None


def _write_folder_files(
    model: PerspectiveUNet, folder: Path, inference_texts: Mapping[str, str], card: str | None
) -> None:
    """The weights (staged first: the config records their hash), then every file of the folder at once."""
    from perspective_unet.version import __version__

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = folder / f".{WEIGHTS_FILE}.staged"
    try:
        _save_weights(state, weights, folder / WEIGHTS_FILE)
        config = {
            "format": FOLDER_FORMAT,
            "format_version": 1,
            "architecture": "PerspectiveUNet",
            "model_config": model.config.to_dict(),
            "weights_sha256": _sha256(weights),
            "perspective_unet_version": __version__,
            "torch_version": torch.__version__,
        }
        texts = {
            CONFIG_FILE: json.dumps(config, indent=2) + "\n",
            **inference_texts,
            **({CARD_FILE: card + "\n"} if card is not None else {}),
        }
        writers: dict[Path, Any] = {folder / name: text_writer(text) for name, text in texts.items()}
        writers[folder / WEIGHTS_FILE] = lambda path: os.replace(weights, path)
        write_all(writers)
    finally:
        weights.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(
            f"{path} is missing; a model folder holds {CONFIG_FILE}, {WEIGHTS_FILE}, "
            f"{PREPROCESSING_FILE} and {LABELS_FILE}. Export the model again."
        )
    return read_json(path, "the file is damaged or was edited; export the model again.")


def from_pretrained(
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PerspectiveUNet:
    """The model of a model folder, or of a Hugging Face Hub id (``owner/name``), in eval mode on ``device``.

    Args:
        folder: A model folder, or the Hub id of one (downloaded once into huggingface_hub's cache; offline, with
            ``HF_HUB_OFFLINE=1``, read from the cache).
        device: Where the weights go.
        revision: For a Hub id: a branch, tag or commit (default the main branch).
        cache_dir: For a Hub id: huggingface_hub's cache folder (default its own, ``HF_HUB_CACHE``).

    Raises:
        InputError: A file is missing or damaged, the weights' hash differs from the recorded one, or the weights
            belong to another architecture than the config describes (each message names the file); a Hub id
            cannot be had.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from perspective_unet.models.hub import hub_folder

    folder = hub_folder(folder, revision=revision, cache_dir=cache_dir)
    config_data = _read_json(folder / CONFIG_FILE)
    if not isinstance(config_data, dict) or config_data.get("format") != FOLDER_FORMAT:
        raise InputError(
            f"{folder / CONFIG_FILE} is not a perspective-unet model config (format "
            f"{FOLDER_FORMAT!r}); export the model with `perspective-unet export --format folder`."
        )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights} is missing; export the model again.")
    recorded = config_data.get("weights_sha256")
    if recorded != _sha256(weights):
        raise InputError(
            f"{weights} differs from the file {folder / CONFIG_FILE} describes (SHA-256 mismatch): it was "
            "edited, damaged or replaced. Export the model again."
        )
    try:
        config = ModelConfig.from_dict(dict(config_data["model_config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder / CONFIG_FILE} holds an invalid model config ({exc}).") from None
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{weights} cannot be read as safetensors ({exc}).") from None
    with torch.device("meta"):
        skeleton = PerspectiveUNet(config)
    check_state_dict(skeleton.state_dict(), state, str(weights))
    model = PerspectiveUNet(config)
    model.load_state_dict(state)
    return model.to(device).eval()
