"""Data: dataset layouts (``layouts``: the prepared layout, TransUNet-style files, converters of raw datasets),
datasets, augmentation.

Nothing here imports the models or the engine.

Example:
    >>> from perspective_unet.data import SliceDataset, VolumeDataset, prepare_demo  # doctest: +SKIP
    >>> root = prepare_demo("demo_prepared")  # doctest: +SKIP
    >>> SliceDataset(root, "train", img_size=224)[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 224, 224])
"""

from __future__ import annotations

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
