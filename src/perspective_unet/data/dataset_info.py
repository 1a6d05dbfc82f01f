"""What a dataset folder holds: ``dataset.json`` of a prepared folder, or a description inferred for the files that
circulate in this line of work. Three layouts are recognized:

- ``prepared``: this package's layout (``dataset.json`` with ``img_format_version``), see ``layout``;
- ``synapse_files``: TransUNet's Synapse files, ``train_npz/caseXXXX_sliceNNN.npz`` (keys image, label) and
  ``test_vol_h5/caseXXXX.npy.h5`` (datasets image, label); list files in ``lists/`` or ``lists/lists_Synapse/`` are
  used when present;
- ``acdc_files``: MT-UNet's ACDC files, ``train/`` and ``valid/`` with ``case_XXX_slice{ED,ES}_N.npz`` and
  ``test/`` with ``case_XXX_volume_{ED,ES}.npz`` (keys img, label).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perspective_unet.data.acdc import ACDC_CLASS_NAMES
from perspective_unet.data.layout import IMG_FORMAT_VERSION, TEST_DIR, TRAIN_DIR, VOLUME_SUFFIX
from perspective_unet.data.slices import ACDC_FOLDERS, acdc_case, case_of_slice, synapse_list
from perspective_unet.data.synapse import SYNAPSE_CLASS_NAMES
from perspective_unet.errors import InputError
from perspective_unet.intensity import SYNAPSE_HU_WINDOW, IntensitySpec, describe_ct_window

__all__ = ["read_dataset_info"]

_REQUIRED_KEYS = ("name", "num_classes", "class_names", "splits")


def read_dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The dataset's description: ``dataset.json`` of a prepared folder, or one inferred for circulating files.

    Returns:
        ``dataset.json``'s content plus ``layout`` ("prepared", "synapse_files", "acdc_files") and ``root``.
        Inferred descriptions hold ``name``, ``num_classes``, ``class_names``, ``modality``, ``normalization``,
        ``source``, ``license`` and ``splits`` (case names found on disk).

    Raises:
        InputError: The folder is missing or in none of the known layouts, or its dataset.json is invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give a prepared dataset folder (see `perspective-unet prepare`).")
    json_path = root / "dataset.json"
    if json_path.is_file():
        try:
            info = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{json_path} is not valid JSON ({exc}); prepare the dataset again.") from None
        if "img_format_version" not in info:
            if "channel_names" in info:
                raise InputError(
                    f"{root} is an nnU-Net raw dataset; convert it first with "
                    f"`perspective-unet prepare nnunet -i {root} -o OUT`."
                )
            raise InputError(f"{json_path} lacks img_format_version; it was not written by `perspective-unet prepare`.")
        if int(info["img_format_version"]) > IMG_FORMAT_VERSION:
            raise InputError(
                f"{root} has format version {info['img_format_version']}; this version of "
                f"perspective-unet reads up to {IMG_FORMAT_VERSION}. Upgrade the package."
            )
        missing = [k for k in _REQUIRED_KEYS if k not in info]
        if missing:
            raise InputError(f"{json_path} lacks {missing}; prepare the dataset again.")
        # Folders written before the American spelling carry "normalisation" and "licence".
        for old_key, key in (("normalisation", "normalization"), ("licence", "license")):
            if old_key in info and key not in info:
                info[key] = info.pop(old_key)
        return {**info, "layout": "prepared", "root": str(root)}
    if (root / TRAIN_DIR).is_dir() or (root / TEST_DIR).is_dir():
        return _synapse_files_info(root)
    if any((root / folder).is_dir() for folder in ACDC_FOLDERS.values()) and _has_acdc_files(root):
        return _acdc_files_info(root)
    raise InputError(
        f"{root} is in no known layout: expected dataset.json (from `perspective-unet prepare`), the Synapse "
        "files train_npz/ and test_vol_h5/, or the ACDC folders train/, valid/, test/ of case_*.npz files."
    )


def _has_acdc_files(root: Path) -> bool:
    return any(
        next((root / folder).glob("case_*.npz"), None) is not None
        for folder in ACDC_FOLDERS.values()
        if (root / folder).is_dir()
    )


def _synapse_files_info(root: Path) -> dict[str, Any]:
    train_names = synapse_list(root, "train.txt") or sorted(p.stem for p in (root / TRAIN_DIR).glob("*.npz"))
    test_names = synapse_list(root, "test_vol.txt") or sorted(
        p.name[: -len(VOLUME_SUFFIX)] for p in (root / TEST_DIR).glob(f"*{VOLUME_SUFFIX}")
    )
    return {
        "name": "Synapse",
        "num_classes": len(SYNAPSE_CLASS_NAMES),
        "class_names": list(SYNAPSE_CLASS_NAMES),
        "modality": "CT",
        "normalization": describe_ct_window(SYNAPSE_HU_WINDOW, "TransUNet-style files"),
        "intensity": IntensitySpec("ct_window", window=SYNAPSE_HU_WINDOW).stored_range(),
        "source": "Synapse (BTCV) TransUNet-style files, read as they are",
        "license": "BTCV challenge data terms",
        "splits": {"train": sorted({case_of_slice(n) for n in train_names}), "val": [], "test": list(test_names)},
        "layout": "synapse_files",
        "root": str(root),
    }


def _acdc_files_info(root: Path) -> dict[str, Any]:
    splits: dict[str, list[str]] = {}
    for split, folder in ACDC_FOLDERS.items():
        directory = root / folder
        names = sorted(p.stem for p in directory.glob("case_*.npz")) if directory.is_dir() else []
        # Slice files are case_XXX_slice{ED,ES}_N, volumes case_XXX_volume_{ED,ES}: both name the case the same way.
        splits[split] = sorted({acdc_case(n) for n in names})
    return {
        "name": "ACDC",
        "num_classes": len(ACDC_CLASS_NAMES),
        "class_names": list(ACDC_CLASS_NAMES),
        "modality": "MR",
        "normalization": "as baked into the circulating ACDC npz files (not published)",
        "source": "MT-UNet-style ACDC files, read as they are",
        "license": "ACDC data terms",
        "splits": splits,
        "layout": "acdc_files",
        "root": str(root),
    }
