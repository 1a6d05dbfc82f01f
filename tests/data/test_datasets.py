"""SliceDataset / VolumeDataset on the prepared layout and on the circulating TransUNet-style Synapse and ACDC files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from perspective_unet.data import (
    AugmentationConfig,
    SliceDataset,
    VolumeDataset,
    seed_worker,
)
from perspective_unet.data.layouts.acdc import AcdcFiles
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.synapse import SynapseFiles
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec


def _write_synapse_files(root: Path) -> dict[str, np.ndarray]:
    """Circulating Synapse files: train_npz/*.npz (image, label), test_vol_h5/*.npy.h5, no dataset.json."""
    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    arrays = {}
    for z in range(3):
        image = rng.random((40, 40)).astype(np.float32)
        label = rng.integers(0, 9, (40, 40)).astype(np.float32)  # the circulating files store labels as floats
        np.savez(root / "train_npz" / f"case0005_slice{z:03d}.npz", image=image, label=label)
        arrays[f"case0005_slice{z:03d}"] = image
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((4, 40, 40)).astype(np.float32)
        f["label"] = rng.integers(0, 9, (4, 40, 40)).astype(np.float32)
    return arrays


def _write_acdc_files(root: Path) -> None:
    """Circulating ACDC files: train/ and valid/ slices, test/ volumes, key img."""
    rng = np.random.default_rng(1)
    for folder, names in (("train", ["case_001_sliceED_0", "case_001_sliceED_1"]), ("valid", ["case_019_sliceES_0"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            np.savez(root / folder / f"{name}.npz", img=rng.random((30, 26)), label=rng.integers(0, 4, (30, 26)))
    (root / "test").mkdir()
    volume, labels = rng.random((5, 30, 26)), rng.integers(0, 4, (5, 30, 26))
    np.savez(root / "test" / "case_002_volume_ED.npz", img=volume, label=labels)


def test_slice_item_is_zoomed_and_normalized(prepared_synapse) -> None:
    root, _ = prepared_synapse
    dataset = SliceDataset(root, "train", img_size=32)
    assert len(dataset) == 12
    item = dataset[4]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert item["case"] == "case0005_slice004"
    with np.load(root / "train_npz" / "case0005_slice004.npz") as data:
        image, label = data["image"], data["label"]
    factors = (32 / image.shape[0], 32 / image.shape[1])
    expected = (ndimage.zoom(image, factors, order=3) - 0.5) / 0.5
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-5)
    assert np.array_equal(item["label"].numpy(), ndimage.zoom(label, factors, order=0))


def test_test_split_slices_come_from_the_volumes(prepared_synapse) -> None:
    root, _ = prepared_synapse
    dataset = SliceDataset(root, "test", img_size=(16, 24))
    assert len(dataset) == 6 and dataset[5]["case"] == "case0001_slice005"
    assert dataset[0]["image"].shape == (1, 16, 24)
    with pytest.raises(InputError, match="no val slices"):
        SliceDataset(root, "val")


def test_volume_dataset_keeps_geometry(prepared_synapse) -> None:
    root, _ = prepared_synapse
    volumes = VolumeDataset(root, "test")
    item = volumes[0]
    assert item["case"] == "case0001" and item["image"].shape == (6, 20, 16)
    assert item["image"].dtype == np.float32 and item["label"].dtype == np.uint8
    assert item["spacing"] == pytest.approx((2.5, 0.8, 0.8))
    assert item["meta"]["affine"].shape == (4, 4) and item["meta"]["orientation"] == "SLA"
    assert tuple(item["meta"]["original_shape"]) == (20, 16, 6)
    assert len(VolumeDataset(root, "val")) == 0


def test_circulating_synapse_files_are_read_as_they_are(tmp_path: Path) -> None:
    arrays = _write_synapse_files(tmp_path)
    layout = open_dataset(tmp_path)
    info = layout.info
    assert isinstance(layout, SynapseFiles) and info.num_classes == 9
    assert info.class_names[1:] == (
        "aorta",
        "gallbladder",
        "kidney_left",
        "kidney_right",
        "liver",
        "pancreas",
        "spleen",
        "stomach",
    )
    assert info.splits["train"] == ("case0005",) and info.splits["test"] == ("case0001",)
    dataset = SliceDataset(tmp_path, "train", img_size=40)
    np.testing.assert_allclose(dataset[1]["image"][0].numpy(), (arrays["case0005_slice001"] - 0.5) / 0.5, atol=1e-6)
    item = VolumeDataset(tmp_path, "test")[0]
    assert item["image"].shape == (4, 40, 40) and item["label"].dtype == np.uint8
    assert item["spacing"] is None and item["meta"] == {}
    # A TransUNet-style list file restricts and orders the training slices.
    (tmp_path / "lists" / "lists_Synapse").mkdir(parents=True)
    (tmp_path / "lists" / "lists_Synapse" / "train.txt").write_text("case0005_slice002\ncase0005_slice000\n")
    assert [s.name for s in SliceDataset(tmp_path, "train", img_size=40).samples] == [
        "case0005_slice002",
        "case0005_slice000",
    ]


def test_circulating_acdc_files_are_read_as_they_are(tmp_path: Path) -> None:
    _write_acdc_files(tmp_path)
    layout = open_dataset(tmp_path)
    info = layout.info
    assert isinstance(layout, AcdcFiles) and info.class_names == ("background", "RV", "myocardium", "LV")
    assert info.splits == {"train": ("case_001_ED",), "val": ("case_019_ES",), "test": ("case_002_ED",)}
    assert len(SliceDataset(tmp_path, "train", img_size=32)) == 2
    assert len(SliceDataset(tmp_path, "val", img_size=32)) == 1
    assert len(SliceDataset(tmp_path, "test", img_size=32)) == 5
    item = VolumeDataset(tmp_path, "test")[0]
    assert item["case"] == "case_002_ED" and item["image"].shape == (5, 30, 26)


def test_unknown_layout_and_raw_nnunet_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no known layout"):
        open_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {}, "file_ending": ".nii.gz"}')
    with pytest.raises(InputError, match="prepare nnunet"):
        open_dataset(tmp_path)


def _draws(dataset: SliceDataset, indices: list[int]) -> list[torch.Tensor]:
    return [dataset[i]["image"] for i in indices]


def test_same_seed_same_samples_other_seed_other_samples(prepared_synapse) -> None:
    root, _ = prepared_synapse
    config = AugmentationConfig(min_ops=2, max_ops=4)
    first = _draws(SliceDataset(root, "train", img_size=24, augmentation=config, seed=3), [0, 1, 2, 0])
    second = _draws(SliceDataset(root, "train", img_size=24, augmentation=config, seed=3), [0, 1, 2, 0])
    other = _draws(SliceDataset(root, "train", img_size=24, augmentation=config, seed=4), [0, 1, 2, 0])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], first[3]), "a slice drawn twice is augmented differently"


def test_dataloader_workers_are_seeded_apart_and_reproducibly(prepared_synapse) -> None:
    root, _ = prepared_synapse
    config = AugmentationConfig(min_ops=3, max_ops=4, operations=("noise", "rotate", "translate", "contrast"))

    def run() -> list[torch.Tensor]:
        dataset = SliceDataset(root, "train", img_size=24, augmentation=config, seed=5)
        # Every worker gets the same index list, so only the seeding can make their samples differ.
        loader = DataLoader(
            torch.utils.data.Subset(dataset, [0] * 4),
            batch_size=1,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(11),
        )
        return [batch["image"] for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # Batches 0 and 1 come from different workers, each on its first draw.
    assert not torch.equal(first[0], first[1])


def test_descriptions_with_the_earlier_british_keys_are_read(prepared_synapse, tmp_path: Path) -> None:
    """Folders prepared before the American spelling say "normalisation" and "licence"; both are still understood."""
    root = tmp_path / "old"
    shutil.copytree(prepared_synapse[0], root)
    info = json.loads((root / "dataset.json").read_text())
    info["normalisation"], info["licence"] = info.pop("normalization"), info.pop("license")
    intensity = info.pop("intensity", None)
    (root / "dataset.json").write_text(json.dumps(info))
    read = open_dataset(root).info
    assert "normalisation" not in read.extra and "licence" not in read.extra
    assert read.normalization == info["normalisation"] and read.license == info["licence"]
    assert intensity is not None
    recorded = read.replace(intensity=IntensitySpec.from_dict(intensity))
    assert read.stored_intensity().to_dict() == recorded.stored_intensity().to_dict()
