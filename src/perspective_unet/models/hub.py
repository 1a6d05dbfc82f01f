"""The Hugging Face Hub's conventions for model folders: a model card with the metadata the Hub indexes, loading a
model folder by its Hub id, and uploading one.

- :func:`card_metadata` / :func:`card_front_matter`: the model card's YAML front matter (``license``,
  ``library_name``, ``tags``, ``pipeline_tag``, ``datasets``, ``metrics``, and ``model-index`` with the evaluation's
  Dice when there is one), as the Hub reads it;
- :func:`hub_folder`: a Hub id (``owner/name``) as a local folder, downloaded once into huggingface_hub's cache
  (``snapshot_download``; offline, ``HF_HUB_OFFLINE=1``, from the cache alone);
- :func:`push_folder`: a model folder uploaded with huggingface_hub's ``create_repo`` and ``upload_folder``.

huggingface_hub is imported only when a Hub id is loaded or a folder pushed (``pip install
"perspective-unet[hub]"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.models.inference_info import LABELS_FILE, PREPROCESSING_FILE, InferenceInfo

__all__ = [
    "HUB_FILES",
    "LIBRARY_NAME",
    "card_front_matter",
    "card_metadata",
    "hub_folder",
    "hub_license",
    "is_hub_id",
    "push_folder",
]

LIBRARY_NAME = "perspective-unet"
# A model folder's files as the Hub holds them (the names of models/pretrained.py).
HUB_FILES = ["config.json", "model.safetensors", PREPROCESSING_FILE, LABELS_FILE, "README.md"]
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# The Hub's license identifiers a recorded license text may start with (lower case), and common other spellings.
_HUB_LICENSES = (
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "cc0-1.0",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0",
    "cc-by-3.0",
    "cc-by-nc-sa-3.0",
    "odbl",
    "gpl-3.0",
)
_LICENSE_ALIASES = {"cc0": "cc0-1.0", "apache 2.0": "apache-2.0", "apache-2": "apache-2.0", "cc-by": "cc-by-4.0"}


def is_hub_id(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a Hub model (``owner/name``) rather than an existing local path.

    Example:
        >>> is_hub_id("perspective-unet/synapse-tiny"), is_hub_id("/models/synapse"), is_hub_id("model.onnx")
        (True, False, False)
    """
    return not Path(source).exists() and _HUB_ID.fullmatch(str(source)) is not None


def hub_license(text: str | None) -> str:
    """The Hub's ``license`` identifier for a recorded license text: ``unknown`` when none is recorded, ``other``
    when the text names no license the Hub knows.

    Example:
        >>> hub_license("CC-BY-4.0"), hub_license("Apache-2.0 (TotalSegmentator)"), hub_license(None)
        ('cc-by-4.0', 'apache-2.0', 'unknown')
    """
    if not text:
        return "unknown"
    lowered = str(text).strip().lower()
    for key, value in _LICENSE_ALIASES.items():
        if lowered == key or lowered.startswith(f"{key} "):
            return value
    return next((name for name in _HUB_LICENSES if re.match(rf"{re.escape(name)}\b", lowered)), "other")


def card_metadata(
    info: InferenceInfo, *, num_classes: int, evaluation: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model card's metadata (the Hub's ``ModelCardData`` fields) for a model with ``info``.

    Args:
        info: What the model's training recorded (license, dataset, modality).
        num_classes: The model's classes, background included.
        evaluation: An evaluation's ``summary.json`` (its mean Dice goes into ``model-index``).
    """
    tags = [LIBRARY_NAME, "medical-imaging", "image-segmentation", "pytorch", "safetensors"]
    if info.modality:
        tags.append(str(info.modality).lower())
    metadata: dict[str, Any] = {
        "license": hub_license(info.license),
        "library_name": LIBRARY_NAME,
        "tags": tags,
        "pipeline_tag": "image-segmentation",
    }
    if info.dataset_name:
        metadata["datasets"] = [info.dataset_name]
    metadata["metrics"] = ["dice", "hd95"]
    if evaluation and evaluation.get("mean_dice") is not None:
        name = info.dataset_name or "not recorded"
        dataset = {"name": name, "type": name}
        metadata["model-index"] = [
            {
                "name": f"{LIBRARY_NAME} ({name})",
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": f"{num_classes - 1}-class segmentation"},
                        "dataset": {**dataset, "split": str(evaluation.get("split", "test"))},
                        "metrics": [{"type": "dice", "name": "mean Dice", "value": float(evaluation["mean_dice"])}],
                    }
                ],
            }
        ]
    return metadata


def card_front_matter(info: InferenceInfo, *, num_classes: int, evaluation: Mapping[str, Any] | None = None) -> str:
    """The YAML block (between ``---`` lines) a model card starts with; see :func:`card_metadata`."""
    import yaml

    body = yaml.safe_dump(card_metadata(info, num_classes=num_classes, evaluation=evaluation), sort_keys=False)
    return f"---\n{body}---\n"


def hub_folder(
    source: str | os.PathLike[str], *, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A model folder for ``source``: the path itself, or for a Hub id its snapshot in huggingface_hub's cache
    (downloaded on first use; with ``HF_HUB_OFFLINE=1`` only what the cache holds).

    Raises:
        InputError: ``source`` is a Hub id that cannot be had (not cached while offline, not found, no network), or
            huggingface_hub is not installed.
    """
    if not is_hub_id(source):
        return Path(source)
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise InputError(
            f"{source} is not a local folder; to load it from the Hugging Face Hub install huggingface_hub "
            '(pip install "perspective-unet[hub]").'
        ) from None
    from perspective_unet.version import __version__

    try:
        folder = huggingface_hub.snapshot_download(
            str(source),
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=HUB_FILES,
            library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.HFValidationError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{source} is neither a local folder nor a Hugging Face Hub model that can be had here ({reason}); "
            "check the name, the network, or, offline (HF_HUB_OFFLINE=1), that the model is in the Hub's cache."
        ) from None
    return Path(folder)


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload perspective-unet model",
) -> Any:
    """Upload a model folder to the Hub repository ``repo_id`` (created if needed) in one commit.

    Returns:
        huggingface_hub's ``CommitInfo`` of the upload.

    Raises:
        InputError: huggingface_hub is not installed.
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise InputError(
            'pushing to the Hugging Face Hub needs huggingface_hub (pip install "perspective-unet[hub]").'
        ) from None
    api = HfApi(token=token, library_name=LIBRARY_NAME)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, allow_patterns=HUB_FILES
    )
