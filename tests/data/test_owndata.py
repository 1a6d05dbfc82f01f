"""Own nnU-Net datasets as nnU-Net reads them: the ignore label and several input channels, through prepare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from perspective_unet.cli import main
from perspective_unet.config.augmentation import AugmentationConfig, SpacingAugmentationConfig
from perspective_unet.data import prepare_nnunet
from perspective_unet.data.augmentation import build_augmentation
from perspective_unet.data.io import read_image
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.info import IGNORE_LABEL, DatasetInfo
from perspective_unet.data.orientation import to_canonical
from perspective_unet.data.patches import PatchDataset
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import read_fingerprint
from perspective_unet.intensity import ct_window, percentile_minmax
from perspective_unet.plan import read_plan
from tests.data.conftest import leftovers, save_nifti, write_nnunet_raw

AFFINE = np.diag([0.9, 0.9, 3.0, 1.0])
SHAPE = (12, 10, 5)
IGNORED_BLOCK = (slice(0, 6), slice(0, 10), slice(0, 5))


def _with_ignore_block(raw: Path, ignore_id: int | None) -> None:
    """Mark a block of every training label as not annotated (``ignore_id``), or as background (None), and make its
    voxels air, so that counting them as foreground would move the CT window far."""
    for label_path in sorted((raw / "labelsTr").iterdir()):
        case = label_path.name[: -len(".nii.gz")]
        label, _ = read_image(label_path, as_label=True)
        image_path = raw / "imagesTr" / f"{case}_0000.nii.gz"
        image, _ = read_image(image_path)
        label, image = label.copy(), image.copy()
        label[IGNORED_BLOCK] = 0 if ignore_id is None else ignore_id
        image[IGNORED_BLOCK] = -1000.0
        save_nifti(label_path, label, AFFINE)
        save_nifti(image_path, image, AFFINE)
    if ignore_id is not None:
        info = json.loads((raw / "dataset.json").read_text())
        info["labels"]["ignore"] = ignore_id
        (raw / "dataset.json").write_text(json.dumps(info))


def test_the_ignore_label_is_no_class_and_leaves_the_ct_window_and_fingerprint_alone(tmp_path):
    for name, ignore in (("without", None), ("with", 3)):
        write_nnunet_raw(tmp_path / name / "raw", num_cases=5)
        _with_ignore_block(tmp_path / name / "raw", ignore)
    without = prepare_nnunet(tmp_path / "without" / "raw", tmp_path / "without" / "out", seed=3)
    with_ignore = prepare_nnunet(tmp_path / "with" / "raw", tmp_path / "with" / "out", seed=3)
    plain, ignored = (json.loads((out / "dataset.json").read_text()) for out in (without, with_ignore))
    assert ignored["class_names"] == plain["class_names"] == ["background", "liver", "spleen"]
    assert ignored["num_classes"] == 3 and ignored["ignore_label"] == IGNORE_LABEL and "ignore_label" not in plain
    # The window comes from the labeled voxels only: exactly the one of the labels without the ignore label.
    assert ignored["intensity"] == plain["intensity"]
    assert ignored["intensity"]["window"][0] > -500  # the air block did not pull it down
    fingerprints = [read_fingerprint(out / "fingerprint.json") for out in (without, with_ignore)]
    assert fingerprints[0].foreground_stored == fingerprints[1].foreground_stored
    assert fingerprints[0].foreground_raw == fingerprints[1].foreground_raw
    # Stored labels: 255 exactly where the raw label holds the ignore id.
    case = ignored["splits"]["train"][0]
    raw_label, meta = read_image(tmp_path / "with" / "raw" / "labelsTr" / f"{case}.nii.gz", as_label=True)
    expected = to_canonical(np.where(raw_label == 3, IGNORE_LABEL, raw_label), meta)
    with np.load(with_ignore / "train_npz" / f"{case}_slice002.npz") as data:
        np.testing.assert_array_equal(data["label"], expected[2])
    assert open_dataset(with_ignore).info.ignore_label == IGNORE_LABEL


def test_a_png_dataset_maps_its_ignore_label_too(tmp_path):
    from PIL import Image

    raw = tmp_path / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i in range(4):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (12, 14)).astype(np.uint8)).save(raw / "imagesTr" / f"p{i}_0000.png")
        Image.fromarray(rng.integers(0, 3, (12, 14)).astype(np.uint8)).save(raw / "labelsTr" / f"p{i}.png")
    info = {"channel_names": {"0": "photo"}, "labels": {"background": 0, "cell": 1, "ignore": 2}, "file_ending": ".png"}
    (raw / "dataset.json").write_text(json.dumps(info))
    out = prepare_nnunet(raw, tmp_path / "out", val_fraction=0.0, test_fraction=0.25)
    prepared = json.loads((out / "dataset.json").read_text())
    assert prepared["class_names"] == ["background", "cell"] and prepared["ignore_label"] == IGNORE_LABEL
    case = prepared["splits"]["train"][0]
    mask = np.asarray(Image.open(raw / "labelsTr" / f"{case}.png"))
    with np.load(out / "train_npz" / f"{case}_slice000.npz") as data:
        np.testing.assert_array_equal(data["label"], np.where(mask == 2, IGNORE_LABEL, mask))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "liver": 1, "spleen": 2, "ignore": 2}, "share id 2 .*ignore label takes an id of its own"),
        ({"background": 0, "liver": 1, "ignore": 2, "spleen": 3}, "ignore label has id 2 but 'spleen' has 3"),
    ],
)
def test_an_ignore_label_colliding_with_a_class_or_below_one_is_one_line_exit_2(tmp_path, capsys, labels, message):
    write_nnunet_raw(tmp_path / "raw", num_cases=3)
    info = json.loads((tmp_path / "raw" / "dataset.json").read_text())
    info["labels"] = labels
    (tmp_path / "raw" / "dataset.json").write_text(json.dumps(info))
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.json" in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_dataset_info_refuses_an_ignore_label_that_is_a_class():
    with pytest.raises(ValueError, match="ignore_label must be an integer from 3"):
        DatasetInfo("toy", ("background", "a", "b"), ignore_label=2)


def test_augmentation_carries_the_ignore_label_like_a_label(tmp_path):
    label = np.zeros((1, 40, 40), np.float32)
    label[0, 5:20, 5:30] = 1
    label[0, 22:38, 10:35] = IGNORE_LABEL
    image = torch.rand(1, 40, 40)
    # Every geometric operation of the paper's pool, each drawn every time.
    geometric = ("vflip", "hflip", "scale", "rotate", "shear", "piecewise", "translate")
    config = AugmentationConfig(operations=geometric, min_ops=4, max_ops=4, vflip_prob=1.0, hflip_prob=1.0)
    augment = build_augmentation(config).set_random_state(0)
    seen_ignored = False
    for _ in range(12):
        out = augment({"image": image, "label": torch.from_numpy(label)})
        values = set(np.unique(np.asarray(out["label"])).tolist())
        assert values <= {0.0, 1.0, float(IGNORE_LABEL)}, values  # nearest neighbor: no value in between
        seen_ignored = seen_ignored or IGNORE_LABEL in values
    assert seen_ignored


def test_spacing_patches_keep_the_ignore_label_and_never_center_on_it(tmp_path):
    write_nnunet_raw(tmp_path / "raw", num_cases=4)
    _with_ignore_block(tmp_path / "raw", 3)
    out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", val_fraction=0.0, test_fraction=0.25)
    layout = open_dataset(out)
    plan = layout.plan().replace(patch_size=(16, 16), foreground_fraction=1.0)
    patches = PatchDataset(layout, plan, SpacingAugmentationConfig(rotate_prob=1.0, scale_prob=1.0), seed=0)
    assert IGNORE_LABEL not in patches._classes and set(patches._classes) == {1, 2}
    found = set()
    for index in range(len(patches)):
        found |= set(torch.unique(patches[index]["label"]).tolist())
    assert found <= {0, 1, 2, IGNORE_LABEL} and IGNORE_LABEL in found


# ---------------------------------------------------------------- several input channels


def write_two_channel_raw(root: Path, num_cases: int = 5, names=("CT", "T2")) -> dict[str, tuple[np.ndarray, ...]]:
    """An nnU-Net raw dataset of two channels: a CT-like channel 0 and an MR-like channel 1."""
    root.mkdir(parents=True, exist_ok=True)
    info = {
        "name": "Two",
        "channel_names": {"0": names[0], "1": names[1]},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(info))
    arrays = {}
    for i in range(num_cases):
        rng = np.random.default_rng(i)
        first = rng.uniform(-400, 600, SHAPE).astype(np.float32)
        second = rng.gamma(2.0, 60.0, SHAPE).astype(np.float32)
        label = rng.integers(0, 2, SHAPE).astype(np.uint8)
        case = f"two_{i:03d}"
        save_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", first, AFFINE)
        save_nifti(root / "imagesTr" / f"{case}_0001.nii.gz", second, AFFINE)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label, AFFINE)
        arrays[case] = (first, second, label)
    return arrays


def test_two_channels_are_stored_each_by_its_own_rule_and_planned_per_channel(tmp_path):
    arrays = write_two_channel_raw(tmp_path / "raw")
    out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", ct_window_hu=(-100, 200), seed=1, test_fraction=0.2)
    info = json.loads((out / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT", "1": "T2"} and info["modality"] == "CT+T2"
    assert info["intensity"] == {"kind": "ct_window", "window": [-100.0, 200.0]}
    assert info["other_channels"] == [{"kind": "percentile_minmax", "percentiles": [0.5, 99.5]}]
    assert (
        "channel 0 (CT) CT: HU clipped" in info["normalization"]
        and "channel 1 (T2) MR: per volume" in info["normalization"]
    )
    case = info["splits"]["train"][0]
    first, second, label = arrays[case]
    meta = read_image(tmp_path / "raw" / "imagesTr" / f"{case}_0000.nii.gz")[1]
    expected = np.stack(
        [to_canonical(ct_window(first, (-100, 200)), meta), to_canonical(percentile_minmax(second), meta)]
    )
    with np.load(out / "train_npz" / f"{case}_slice001.npz") as data:
        assert data["image"].shape == (2, 10, 12)
        np.testing.assert_allclose(data["image"], expected[:, 1], atol=1e-6)
        np.testing.assert_array_equal(data["label"], to_canonical(label, meta)[1])
    test_case = info["splits"]["test"][0]
    with h5py.File(out / "test_vol_h5" / f"{test_case}.npy.h5", "r") as f:
        assert f["image"].shape == (5, 2, 10, 12) and f["label"].shape == (5, 10, 12)
        assert tuple(f.attrs["canonical_shape"]) == (5, 10, 12)
    plan = read_plan(out / "plan.json")
    assert plan.num_channels == 2 and plan.in_channels == 2
    assert plan.intensity.scaling == "zscore" and plan.other_channels[0].scaling == "zscore_per_image"
    assert plan.replace(context_slices=1).in_channels == 6
    fingerprint = read_fingerprint(out / "fingerprint.json")
    assert len(fingerprint.other_channels) == 1 and len(fingerprint.cases[0].other_stored) == 1
    layout = open_dataset(out)
    assert layout.plan() == plan and layout.info.num_channels == 2
    stats = layout.case_statistics()[case]
    assert len(stats) == 2 and stats[0] != stats[1]


def test_one_channel_of_several_and_one_channel_data_are_prepared_as_before(tmp_path):
    write_two_channel_raw(tmp_path / "raw")
    out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", channel=1)
    info = json.loads((out / "dataset.json").read_text())
    assert info["modality"] == "T2" and "channel_names" not in info and "other_channels" not in info
    assert "other_channels" not in json.loads((out / "plan.json").read_text())
    write_nnunet_raw(tmp_path / "one", num_cases=4)
    one = prepare_nnunet(tmp_path / "one", tmp_path / "one_out")
    keys = set(json.loads((one / "dataset.json").read_text()))
    assert not keys & {"channel_names", "other_channels", "ignore_label"}
    with np.load(next((one / "train_npz").iterdir())) as data:
        assert data["image"].ndim == 2


def test_channel_files_on_different_grids_are_one_line_naming_both_exit_2(tmp_path, capsys):
    write_two_channel_raw(tmp_path / "raw", num_cases=3)
    other = tmp_path / "raw" / "imagesTr" / "two_001_0001.nii.gz"
    save_nifti(other, np.zeros(SHAPE, np.float32), np.diag([0.9, 0.9, 2.0, 1.0]))
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "two_001_0001.nii.gz and" in err and "two_001_0000.nii.gz" in err and "voxel spacing" in err
    save_nifti(other, np.zeros((12, 10, 4), np.float32), AFFINE)
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    assert "differ in shape" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_case_missing_a_channel_or_with_an_undeclared_one_is_refused(tmp_path):
    write_two_channel_raw(tmp_path / "raw", num_cases=3)
    (tmp_path / "raw" / "imagesTr" / "two_002_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"two_002_0001.nii.gz is missing: case 'two_002' needs one file per channel"):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out")
    save_nifti(tmp_path / "raw" / "imagesTr" / "two_002_0001.nii.gz", np.zeros(SHAPE, np.float32), AFFINE)
    save_nifti(tmp_path / "raw" / "imagesTr" / "two_002_0002.nii.gz", np.zeros(SHAPE, np.float32), AFFINE)
    with pytest.raises(InputError, match="two_002_0002.nii.gz is channel 2 but the dataset declares 2"):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()
