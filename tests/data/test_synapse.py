"""Synapse conversion: slices and volumes equal the TransUNet-style transform of the raw files; bad input fails."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from perspective_unet.data import prepare_synapse
from perspective_unet.data.io import read_image
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.prepared import PreparedDataset
from perspective_unet.data.layouts.synapse import SYNAPSE_LABEL_MAP, transunet_orientation
from perspective_unet.data.orientation import from_canonical
from perspective_unet.errors import InputError
from tests.data.conftest import LPS_AFFINE, leftovers, save_nifti, write_synapse_raw


def transunet_transform(volume: np.ndarray) -> np.ndarray:
    """The circulating files' rule: (i, j, k) -> (k, i, j) with the last axis reversed."""
    return np.flip(np.transpose(volume, (2, 0, 1)), 2)


def expected_image(raw: np.ndarray) -> np.ndarray:
    return ((np.clip(raw.astype(np.float64), -125, 275) + 125) / 400).astype(np.float32)


def expected_label(raw: np.ndarray) -> np.ndarray:
    mapped = np.zeros_like(raw)
    for btcv, ours in SYNAPSE_LABEL_MAP.items():
        mapped[raw == btcv] = ours
    return mapped


def test_train_slices_equal_the_transunet_transform(prepared_synapse) -> None:
    root, arrays = prepared_synapse
    for number in (5, 6):
        image, label = arrays[number]
        images, labels = transunet_transform(expected_image(image)), transunet_transform(expected_label(label))
        for z in range(images.shape[0]):
            with np.load(root / "train_npz" / f"case{number:04d}_slice{z:03d}.npz") as data:
                assert data["image"].dtype == np.float32 and data["label"].dtype == np.uint8
                np.testing.assert_allclose(data["image"], images[z], atol=1e-6)
                assert np.array_equal(data["label"], labels[z])


def test_test_volume_keeps_geometry_and_maps_back(prepared_synapse) -> None:
    root, arrays = prepared_synapse
    image, label = arrays[1]
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "r") as f:
        np.testing.assert_allclose(f["image"][:], transunet_transform(expected_image(image)), atol=1e-6)
        assert np.array_equal(f["label"][:], transunet_transform(expected_label(label)))
        assert tuple(f.attrs["spacing"]) == pytest.approx((2.5, 0.8, 0.8))
        np.testing.assert_allclose(f.attrs["affine"], LPS_AFFINE)
        meta = dict(f.attrs)
        back = from_canonical(f["label"][:], meta)
    assert np.array_equal(back, expected_label(label))


def test_dataset_json_lists_and_split(prepared_synapse) -> None:
    root, _ = prepared_synapse
    info = json.loads((root / "dataset.json").read_text())
    assert info["num_classes"] == 9 and info["class_names"][3] == "kidney_left"
    assert info["splits"] == {"train": ["case0005", "case0006"], "val": [], "test": ["case0001"]}
    assert info["orientation"] == transunet_orientation(LPS_AFFINE) == "SLA"
    assert info["intensity"] == {"kind": "ct_window", "window": [-125.0, 275.0]}
    train_list = (root / "lists" / "train.txt").read_text().split()
    assert len(train_list) == 12 and train_list[0] == "case0005_slice000"
    assert (root / "lists" / "test_vol.txt").read_text().split() == ["case0001"]
    assert isinstance(open_dataset(root), PreparedDataset)
    geometry = json.loads((root / "geometry.json").read_text())
    assert sorted(geometry) == ["case0001", "case0005", "case0006"]  # training cases keep their geometry too
    assert geometry["case0005"]["spacing"] == pytest.approx([2.5, 0.8, 0.8])
    np.testing.assert_allclose(geometry["case0005"]["affine"], LPS_AFFINE)
    assert geometry["case0005"]["original_shape"] == [20, 16, 6]


def test_a_case_stored_in_another_orientation_is_reoriented(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    arrays = write_synapse_raw(raw, cases=(5, 7, 1))
    image, label = arrays[7]
    # Case 7 stored with its first axis reversed (RPS instead of LPS): same anatomy, other index order.
    flipped = LPS_AFFINE.copy()
    flipped[0, 0], flipped[0, 3] = 0.8, 100.0 - 0.8 * (image.shape[0] - 1)
    save_nifti(raw / "img" / "img0007.nii.gz", image[::-1], flipped)
    save_nifti(raw / "label" / "label0007.nii.gz", label[::-1], flipped)
    out = prepare_synapse(raw, tmp_path / "out")
    with np.load(out / "train_npz" / "case0007_slice002.npz") as data:
        np.testing.assert_allclose(data["image"], transunet_transform(expected_image(image))[2], atol=1e-6)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("label_value", "label0006.nii.gz holds label values \\[14\\]"),
        ("shape", "label0006.nii.gz has shape"),
        ("nan", "img0006.nii.gz holds .* NaN"),
        ("truncated", "Cannot read .*img0006.nii.gz"),
        ("geometry", "label0006.nii.gz and its image .* different geometry"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path: Path, damage: str, message: str) -> None:
    raw = tmp_path / "raw"
    arrays = write_synapse_raw(raw)
    image, label = arrays[6]
    if damage == "label_value":
        label = label.copy()
        label[0, 0, 0] = 14
        save_nifti(raw / "label" / "label0006.nii.gz", label)
    elif damage == "shape":
        save_nifti(raw / "label" / "label0006.nii.gz", label[:, :, :-1])
    elif damage == "nan":
        bad = image.astype(np.float32)
        bad[1, 2, 3] = np.nan
        save_nifti(raw / "img" / "img0006.nii.gz", bad)
    elif damage == "truncated":
        path = raw / "img" / "img0006.nii.gz"
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "geometry":
        shifted = LPS_AFFINE.copy()
        shifted[2, 3] += 5.0
        save_nifti(raw / "label" / "label0006.nii.gz", label, shifted)
    with pytest.raises(InputError, match=message):
        prepare_synapse(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_missing_folders_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no img/ and label/"):
        prepare_synapse(tmp_path, tmp_path / "out")
    (tmp_path / "img").mkdir()
    (tmp_path / "label").mkdir()
    with pytest.raises(InputError, match="holds no img00XX"):
        prepare_synapse(tmp_path, tmp_path / "out")


def test_needs_both_a_train_and_a_test_case(tmp_path: Path) -> None:
    write_synapse_raw(tmp_path / "raw", cases=(5,))
    with pytest.raises(InputError, match="none of the standard Synapse test cases"):
        prepare_synapse(tmp_path / "raw", tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    write_synapse_raw(tmp_path / "raw", cases=(5, 1), shape=(8, 8, 3))
    out = prepare_synapse(tmp_path / "raw", tmp_path / "out")
    (out / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_synapse(tmp_path / "raw", out)
    prepare_synapse(tmp_path / "raw", out, overwrite=True)
    assert not (out / "marker").exists() and (out / "dataset.json").exists()
    assert leftovers(tmp_path) == []


def test_raw_label_file_is_read_as_written(synapse_raw) -> None:
    root, arrays = synapse_raw
    label, _ = read_image(root / "label" / "label0005.nii.gz", as_label=True)
    assert np.array_equal(label, arrays[5][1])
