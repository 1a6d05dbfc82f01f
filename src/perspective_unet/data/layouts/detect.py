"""Which layout a dataset folder is in, decided in one place: :func:`open_dataset`.

Readable layouts, tried in this order:

- :class:`~perspective_unet.data.layouts.prepared.PreparedDataset`: this package's layout (``dataset.json`` with
  ``img_format_version``);
- :class:`~perspective_unet.data.layouts.synapse.SynapseFiles`: TransUNet's Synapse files (``train_npz/``,
  ``test_vol_h5/``);
- :class:`~perspective_unet.data.layouts.acdc.AcdcFiles`: MT-UNet's ACDC files (``train/``, ``valid/``, ``test/`` of
  ``case_*.npz``).

A raw dataset (nnU-Net raw, raw Synapse or ACDC, folders of pictures) is refused with the ``prepare`` command that
converts it. A folder ``prepare`` wrote that lost its ``dataset.json`` (it still holds ``fingerprint.json`` or
``geometry.json``, which only ``prepare`` writes) is refused naming the missing file, rather than read as TransUNet's
Synapse files, whose class list (nine classes) it would silently take.
"""

from __future__ import annotations

import os
from pathlib import Path

from perspective_unet.data.layouts.acdc import AcdcFiles, AcdcRaw
from perspective_unet.data.layouts.base import GEOMETRY_FILE, DatasetLayout
from perspective_unet.data.layouts.nnunet import NnUNetRaw
from perspective_unet.data.layouts.pictures import PictureFolders
from perspective_unet.data.layouts.prepared import DATASET_FILE, PreparedDataset
from perspective_unet.data.layouts.raw import RawDataset
from perspective_unet.data.layouts.synapse import SynapseFiles, SynapseRaw
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import FINGERPRINT_FILE

__all__ = ["LAYOUTS", "RAW_FORMATS", "open_dataset"]

LAYOUTS: tuple[type[DatasetLayout], ...] = (PreparedDataset, SynapseFiles, AcdcFiles)
RAW_FORMATS: tuple[type[RawDataset], ...] = (NnUNetRaw, SynapseRaw, AcdcRaw, PictureFolders)


def open_dataset(root: str | os.PathLike[str]) -> DatasetLayout:
    """The layout of a dataset folder, with its description.

    Raises:
        InputError: The folder is missing, raw (the message names the ``prepare`` command that converts it), in no
            known layout, or its description is invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give a prepared dataset folder (see `perspective-unet prepare`).")
    if not PreparedDataset.recognizes(root):
        written_by_prepare = [name for name in (FINGERPRINT_FILE, GEOMETRY_FILE) if (root / name).is_file()]
        if written_by_prepare:
            raise InputError(
                f"{root / DATASET_FILE} is missing, but the folder holds {written_by_prepare[0]}, which only "
                "`perspective-unet prepare` writes: restore dataset.json (its classes, modality and intensities), or "
                "prepare the dataset again."
            )
    for layout in LAYOUTS:
        if layout.recognizes(root):
            return layout.open(root)
    for raw in RAW_FORMATS:
        if raw.recognizes(root):
            raise InputError(
                f"{root} holds {raw.description}; convert it first with "
                f"`perspective-unet prepare {raw.command} -i {root} -o OUT`."
            )
    raise InputError(
        f"{root} is in no known layout: expected dataset.json (from `perspective-unet prepare`), the Synapse "
        "files train_npz/ and test_vol_h5/, or the ACDC folders train/, valid/, test/ of case_*.npz files."
    )
