"""Data: dataset layouts (``layouts``: the prepared layout, TransUNet-style files, converters of raw datasets),
datasets, augmentation.

Nothing here imports the models or the engine. Every name below loads on first use: the readers and the orientation
(``io``, ``dicom``, ``orientation``, ``resample``), which the ONNX runtime uses without PyTorch, import without the
datasets and augmentation (PyTorch, MONAI).

Example:
    >>> from perspective_unet.data import SliceDataset, VolumeDataset, prepare_demo  # doctest: +SKIP
    >>> root = prepare_demo("demo_prepared")  # doctest: +SKIP
    >>> SliceDataset(root, "train", img_size=224)[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 224, 224])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it.
_EXPORTS = {
    "AugmentationConfig": "perspective_unet.config.augmentation",
    "build_augmentation": "perspective_unet.data.augmentation",
    "SliceDataset": "perspective_unet.data.datasets",
    "VolumeDataset": "perspective_unet.data.datasets",
    "seed_worker": "perspective_unet.data.datasets",
    "prepare_demo": "perspective_unet.data.demo",
    "read_image": "perspective_unet.data.io",
    "write_label_map": "perspective_unet.data.io",
    "prepare_acdc": "perspective_unet.data.layouts.acdc",
    "open_dataset": "perspective_unet.data.layouts.detect",
    "DatasetInfo": "perspective_unet.data.layouts.info",
    "prepare_nnunet": "perspective_unet.data.layouts.nnunet",
    "prepare_folder_2d": "perspective_unet.data.layouts.pictures",
    "prepare_synapse": "perspective_unet.data.layouts.synapse",
    "from_canonical": "perspective_unet.data.orientation",
    "to_canonical": "perspective_unet.data.orientation",
    "uncrop_canonical": "perspective_unet.data.orientation",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these on first use
    from perspective_unet.config.augmentation import AugmentationConfig
    from perspective_unet.data.augmentation import build_augmentation
    from perspective_unet.data.datasets import SliceDataset, VolumeDataset, seed_worker
    from perspective_unet.data.demo import prepare_demo
    from perspective_unet.data.io import read_image, write_label_map
    from perspective_unet.data.layouts.acdc import prepare_acdc
    from perspective_unet.data.layouts.detect import open_dataset
    from perspective_unet.data.layouts.info import DatasetInfo
    from perspective_unet.data.layouts.nnunet import prepare_nnunet
    from perspective_unet.data.layouts.pictures import prepare_folder_2d
    from perspective_unet.data.layouts.synapse import prepare_synapse
    from perspective_unet.data.orientation import from_canonical, to_canonical, uncrop_canonical


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perspective_unet.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AugmentationConfig",
    "DatasetInfo",
    "SliceDataset",
    "VolumeDataset",
    "build_augmentation",
    "from_canonical",
    "open_dataset",
    "prepare_acdc",
    "prepare_demo",
    "prepare_folder_2d",
    "prepare_nnunet",
    "prepare_synapse",
    "read_image",
    "seed_worker",
    "to_canonical",
    "uncrop_canonical",
    "write_label_map",
]
