"""ACDC, nnU-Net raw and plain 2D folders: read-back equals the documented transform; splits; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from perspective_unet.data import prepare_acdc, prepare_folder_2d, prepare_nnunet
from perspective_unet.data.io import read_image
from perspective_unet.data.orientation import to_canonical
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, ct_window, percentile_minmax, percentile_window
from tests.data.conftest import leftovers, save_nifti, write_acdc_raw, write_nnunet_raw, write_pictures

# ---------------------------------------------------------------- ACDC


def test_acdc_split_and_slices(tmp_path: Path) -> None:
    arrays = write_acdc_raw(tmp_path / "raw")
    out = prepare_acdc(tmp_path / "raw", tmp_path / "out")
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"] == {
        "train": ["case_001_ED", "case_001_ES"],
        "val": ["case_019_ED", "case_019_ES"],
        "test": ["case_002_ED", "case_002_ES"],
    }
    assert info["class_names"] == ["background", "RV", "myocardium", "LV"]
    assert info["intensity"]["kind"] == "percentile_minmax"
    image, label = arrays[(1, "ES")]
    expected = np.transpose(percentile_minmax(image), (2, 0, 1))  # stored slice axis first, per-volume percentiles
    with np.load(out / "train_npz" / "case_001_ES_slice002.npz") as data:
        np.testing.assert_allclose(data["image"], expected[2], atol=1e-6)
        assert np.array_equal(data["label"], label[:, :, 2])
    assert expected.max() == 1.0 and expected.min() == 0.0
    with h5py.File(out / "val_vol_h5" / "case_019_ED.npy.h5", "r") as f:
        assert f["image"].shape == (4, 14, 12)
        assert tuple(f.attrs["spacing"]) == pytest.approx((10.0, 1.5, 1.5))
        assert f.attrs["orientation"] == "stored"


def test_acdc_info_cfg_without_es_frame(tmp_path: Path) -> None:
    write_acdc_raw(tmp_path / "raw")
    (tmp_path / "raw" / "training" / "patient019" / "Info.cfg").write_text("ED: 1\nGroup: NOR\n")
    with pytest.raises(InputError, match="patient019/Info.cfg does not name the ES frame"):
        prepare_acdc(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_acdc_label_beyond_classes(tmp_path: Path) -> None:
    write_acdc_raw(tmp_path / "raw")
    gt = tmp_path / "raw" / "training" / "patient002" / "patient002_frame03_gt.nii.gz"
    label, meta = read_image(gt, as_label=True)
    label[0, 0, 0] = 4
    save_nifti(gt, label, meta["affine"])
    with pytest.raises(InputError, match="patient002_frame03_gt.nii.gz holds label values \\[4\\]"):
        prepare_acdc(tmp_path / "raw", tmp_path / "out")


def test_acdc_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no patientXXX folders"):
        prepare_acdc(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------- nnU-Net raw


def test_nnunet_ct_window_slices_and_split(tmp_path: Path) -> None:
    arrays = write_nnunet_raw(tmp_path / "raw", num_cases=10)
    every = prepare_nnunet(tmp_path / "raw", tmp_path / "every", ct_window_hu=(-100, 200))
    default = json.loads((every / "dataset.json").read_text())["splits"]
    assert default == {"train": sorted(arrays), "val": [], "test": []}, "every imagesTr case goes into the folds"
    fractions = {"val_fraction": 0.1, "test_fraction": 0.2}
    out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", ct_window_hu=(-100, 200), seed=7, **fractions)
    info = json.loads((out / "dataset.json").read_text())
    splits = info["splits"]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(arrays)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (7, 1, 2)
    assert info["intensity"] == {"kind": "ct_window", "window": [-100.0, 200.0]}
    assert info["class_names"] == ["background", "liver", "spleen"]
    case = splits["train"][0]
    image, label = arrays[case]
    meta = read_image(tmp_path / "raw" / "imagesTr" / f"{case}_0000.nii.gz")[1]
    canonical_image = to_canonical(ct_window(image, (-100, 200)), meta)
    canonical_label = to_canonical(label, meta)
    assert canonical_image.shape == (5, 10, 12)
    with np.load(out / "train_npz" / f"{case}_slice003.npz") as data:
        np.testing.assert_allclose(data["image"], canonical_image[3], atol=1e-6)
        assert np.array_equal(data["label"], canonical_label[3])
    again = prepare_nnunet(tmp_path / "raw", tmp_path / "again", ct_window_hu=(-100, 200), seed=7, **fractions)
    assert json.loads((again / "dataset.json").read_text())["splits"] == splits
    other = prepare_nnunet(tmp_path / "raw", tmp_path / "other", ct_window_hu=(-100, 200), seed=8, **fractions)
    assert json.loads((other / "dataset.json").read_text())["splits"] != splits


def test_nnunet_percentile_window_from_training_foreground(tmp_path: Path) -> None:
    arrays = write_nnunet_raw(tmp_path / "raw", num_cases=4)
    out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", val_fraction=0.0, test_fraction=0.25, seed=3)
    info = json.loads((out / "dataset.json").read_text())
    expected = percentile_window(((arrays[c][0], arrays[c][1]) for c in info["splits"]["train"]), seed=3)
    assert info["intensity"]["window"] == pytest.approx(list(expected))
    assert "percentiles of the training foreground" in info["normalization"]


def test_nnunet_mr_uses_per_volume_normalization_and_imagests_labels(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    arrays = write_nnunet_raw(raw, num_cases=4, modality="T2")
    image = np.random.default_rng(9).gamma(2.0, 50.0, (12, 10, 5)).astype(np.float32)
    label = np.random.default_rng(9).integers(0, 3, (12, 10, 5)).astype(np.uint8)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    save_nifti(raw / "imagesTs" / "extra_000_0000.nii.gz", image, affine)
    save_nifti(raw / "labelsTs" / "extra_000.nii.gz", label, affine)
    out = prepare_nnunet(raw, tmp_path / "out")
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"]["test"] == ["extra_000"]
    assert sorted(info["splits"]["train"] + info["splits"]["val"]) == sorted(arrays)
    assert info["intensity"] == {"kind": "percentile_minmax", "percentiles": [0.5, 99.5]}
    meta = read_image(raw / "imagesTs" / "extra_000_0000.nii.gz")[1]
    with h5py.File(out / "test_vol_h5" / "extra_000.npy.h5", "r") as f:
        np.testing.assert_allclose(f["image"][:], to_canonical(percentile_minmax(image), meta), atol=1e-6)
        np.testing.assert_allclose(
            f["image"][:], to_canonical(IntensitySpec.from_dict(info["intensity"]).to_unit(image), meta)
        )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda info: info.pop("file_ending"), "dataset.json lacks the field 'file_ending'"),
        (lambda info: info.pop("labels"), "dataset.json lacks the field 'labels'"),
        (lambda info: info.update(labels={"background": 0, "a": 2}), "must be consecutive"),
        (lambda info: info.update(labels={"background": 0, "a": [1, 2]}), "region-based"),
        (lambda info: info.update(channel_names={"1": "CT"}), "has no channel 0"),
    ],
)
def test_nnunet_bad_dataset_json(tmp_path: Path, edit, message: str) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=3)
    path = tmp_path / "raw" / "dataset.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))
    with pytest.raises(InputError, match=message):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nnunet_missing_dataset_json_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset.json is missing"):
        prepare_nnunet(tmp_path, tmp_path / "out")
    write_nnunet_raw(tmp_path / "raw", num_cases=2)
    for path in (tmp_path / "raw" / "imagesTr").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="imagesTr holds no files named <case>_0000.nii.gz"):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out")


def test_nnunet_label_beyond_declared_classes_fails_midway_without_output(tmp_path: Path) -> None:
    arrays = write_nnunet_raw(tmp_path / "raw", num_cases=6)
    case = sorted(arrays)[-1]
    label = arrays[case][1].copy()
    label[0, 0, 0] = 3
    save_nifti(tmp_path / "raw" / "labelsTr" / f"{case}.nii.gz", label, np.diag([0.9, 0.9, 3.0, 1.0]))
    with pytest.raises(InputError, match=f"{case}.nii.gz holds label values \\[3\\]"):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out", ct_window_hu=(-125, 275))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- 2D pictures


def test_folder_2d_and_binary_255_masks(tmp_path: Path) -> None:
    arrays = write_pictures(tmp_path / "images", tmp_path / "masks", count=6, mask_values=(0, 255))
    out = prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out", seed=1)
    info = json.loads((out / "dataset.json").read_text())
    assert info["class_names"] == ["background", "class_1"]
    assert sorted(sum(info["splits"].values(), [])) == sorted(arrays)
    case = info["splits"]["train"][0]
    with np.load(out / "train_npz" / f"{case}_slice000.npz") as data:
        np.testing.assert_allclose(data["image"], arrays[case][0] / 255.0, atol=1e-6)
        assert np.array_equal(data["label"], (arrays[case][1] == 255).astype(np.uint8))
    test_case = info["splits"]["test"][0]
    with h5py.File(out / "test_vol_h5" / f"{test_case}.npy.h5", "r") as f:
        assert f["image"].shape == (1, 18, 22)


def test_nnunet_png_dataset_and_plain_folder_detection(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    arrays = write_pictures(raw / "imagesTr", raw / "labelsTr", count=5)
    for case in arrays:
        (raw / "imagesTr" / f"{case}.png").rename(raw / "imagesTr" / f"{case}_0000.png")
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "photo"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "file_ending": ".png",
            }
        )
    )
    out = prepare_nnunet(raw, tmp_path / "out")
    info = json.loads((out / "dataset.json").read_text())
    assert info["modality"] == "2D" and info["num_classes"] == 3
    assert sorted(sum(info["splits"].values(), [])) == sorted(arrays)

    plain = tmp_path / "plain"
    write_pictures(plain / "images", plain / "masks", count=4)
    info = json.loads((prepare_nnunet(plain, tmp_path / "out_plain") / "dataset.json").read_text())
    assert info["class_names"] == ["background", "class_1", "class_2"]


def test_folder_2d_missing_mask_and_size_mismatch(tmp_path: Path) -> None:
    write_pictures(tmp_path / "images", tmp_path / "masks", count=3)
    (tmp_path / "masks" / "img2.png").unlink()
    with pytest.raises(InputError, match="img2.png has no mask"):
        prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "masks" / "img2.png")
    with pytest.raises(InputError, match="img2.png has shape"):
        prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out")
    assert not (tmp_path / "out").exists()
