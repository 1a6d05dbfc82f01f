"""Fingerprints and plans written by prepare, 2.5D context channels, and the spacing protocol's training patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perspective_unet.cli import main
from perspective_unet.config.augmentation import SpacingAugmentationConfig
from perspective_unet.data import SliceDataset
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.patches import PatchDataset
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import read_fingerprint
from perspective_unet.intensity import IntensitySpec
from perspective_unet.plan import Plan
from tests.data.conftest import save_nifti

SPACINGS = {"a": (0.6, 0.6, 2.0), "b": (0.8, 0.8, 3.0), "c": (1.2, 1.2, 5.0), "d": (0.7, 0.7, 2.5)}


def write_spaced_nnunet(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four CT cases with known voxel sizes (x, y, z) and shapes; HU inside the labels is known."""
    info = {
        "name": "Spaced",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(info))
    arrays = {}
    for i, (case, (sx, sy, sz)) in enumerate(SPACINGS.items()):
        shape = (40 + 4 * i, 36 + 2 * i, 4 + i)
        rng = np.random.default_rng(i)
        image = rng.uniform(-1000, -500, shape).astype(np.float32)
        label = np.zeros(shape, dtype=np.uint8)
        label[10:20, 8:18, :] = 1
        image[label == 1] = rng.normal(60, 10, int(label.sum()))
        affine = np.diag([sx, sy, sz, 1.0])
        save_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
        arrays[case] = (image, label)
    return arrays


@pytest.fixture(scope="module")
def spaced(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("spaced")
    arrays = write_spaced_nnunet(base / "raw")
    out = base / "prepared"
    assert (
        main(
            [
                "prepare",
                "nnunet",
                "-i",
                str(base / "raw"),
                "-o",
                str(out),
                "--val-fraction",
                "0",
                "--test-fraction",
                "0.25",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    return out, arrays


def test_prepare_records_every_cases_spacing_shape_and_foreground(spaced):
    out, arrays = spaced
    fingerprint = read_fingerprint(out / "fingerprint.json")
    assert {c.case for c in fingerprint.cases} == set(SPACINGS)
    for case in fingerprint.cases:
        sx, sy, sz = SPACINGS[case.case]
        image, label = arrays[case.case]
        # Canonical (Z, H, W) = (S, P, L) of an (x, y, z) RAS array: slices along z, rows along y, columns along x.
        assert case.spacing == pytest.approx((sz, sy, sx))
        assert case.shape == (image.shape[2], image.shape[1], image.shape[0])
        inside = image[label == 1].astype(np.float64)
        assert case.foreground_raw.mean == pytest.approx(inside.mean(), rel=1e-5)
        assert case.foreground_raw.std == pytest.approx(inside.std(), rel=1e-4)
    training = [c.case for c in fingerprint.training_cases]
    pooled = np.concatenate([arrays[c][0][arrays[c][1] == 1] for c in training]).astype(np.float64)
    assert fingerprint.foreground_raw.low == pytest.approx(np.percentile(pooled, 0.5), abs=1e-3)
    assert fingerprint.foreground_raw.high == pytest.approx(np.percentile(pooled, 99.5), abs=1e-3)


def test_prepare_nnunet_writes_a_spacing_plan_at_the_median_spacing(spaced):
    out, _ = spaced
    fingerprint = read_fingerprint(out / "fingerprint.json")
    training = fingerprint.training_cases
    plan = open_dataset(out).plan()
    assert plan.protocol == "spacing"
    assert plan.spacing == pytest.approx(
        (float(np.median([c.spacing[1] for c in training])), float(np.median([c.spacing[2] for c in training])))
    )
    assert all(side % 16 == 0 for side in plan.patch_size)
    assert plan.intensity.kind == "ct_window" and plan.intensity.scaling == "zscore"
    # The window is the training foreground's 0.5 / 99.5 percentiles, so the foreground mean sits inside it.
    low, high = plan.intensity.window
    assert low < fingerprint.foreground_raw.mean < high


def test_plan_command_prints_rewrites_and_refuses_bad_requests(spaced, tmp_path, capsys):
    out, _ = spaced
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    assert main(["plan", "-d", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "fingerprint: CT, 3 training" in printed and "protocol        spacing" in printed
    assert main(["plan", "-d", str(copy), "--context-slices", "1", "--patch-size", "32", "32"]) == 0
    rewritten = json.loads((copy / "plan.json").read_text())
    assert rewritten["context_slices"] == 1 and rewritten["patch_size"] == [32, 32]
    assert main(["plan", "-d", str(copy), "--protocol", "paper"]) == 0
    assert json.loads((copy / "plan.json").read_text())["patch_size"] == [224, 224]
    before = (copy / "plan.json").read_text()
    capsys.readouterr()
    assert main(["plan", "-d", str(copy), "--reset", "--patch-size", "512", "512"]) == 2
    err = capsys.readouterr().err
    assert "larger than every training slice" in err and len(err.strip().splitlines()) == 1
    assert (copy / "plan.json").read_text() == before


def test_a_hand_edited_plan_must_keep_the_stored_range(spaced, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(spaced[0], copy)
    data = json.loads((copy / "plan.json").read_text())
    data["intensity"]["window"] = [-500, 500]
    (copy / "plan.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="plan.json.*fixed when the data are prepared"):
        open_dataset(copy).plan()


def write_numbered_slices(root: Path) -> Path:
    """Two training cases and one test volume whose slice z holds the constant value (case offset + z) / 100."""
    with PreparedWriter(root) as writer:
        for offset, case in ((0, "p"), (10, "q")):
            depth = 4
            image = np.stack([np.full((16, 16), (offset + z) / 100, np.float32) for z in range(depth)])
            label = np.zeros((depth, 16, 16), np.uint8)
            label[:, 4:8, 4:8] = 1
            writer.add_train_volume(case, image, label, spacing=(2.0, 1.0, 1.0))
        volume = np.stack([np.full((16, 16), (50 + z) / 100, np.float32) for z in range(3)])
        writer.add_volume("test", "t", volume, np.zeros((3, 16, 16), np.uint8), (2.0, 1.0, 1.0))
        writer.finish(
            DatasetInfo(
                name="numbered",
                class_names=("background", "organ"),
                modality="CT",
                normalization="numbered slices",
                intensity=IntensitySpec("unit"),
                source="tests",
                license="CC0",
            ),
            protocol="spacing",
        )
    return root


@pytest.mark.parametrize("split", ["train", "test"])
def test_context_channels_are_the_neighbors_with_the_end_slices_repeated(tmp_path, split):
    root = write_numbered_slices(tmp_path / "numbered")
    dataset = SliceDataset(root, split, img_size=16, context_slices=2)
    seen = {}
    for index in range(len(dataset)):
        ref = dataset.samples[index]
        values = dataset[index]["image"][:, 0, 0] * 0.5 + 0.5  # undo the symmetric scaling
        seen[(ref.case, ref.position)] = [round(float(v) * 100) for v in values]
    if split == "train":
        assert seen[("p", 0)] == [0, 0, 0, 1, 2]
        assert seen[("p", 3)] == [1, 2, 3, 3, 3]
        assert seen[("q", 1)] == [10, 10, 11, 12, 13]  # never a slice of case p
    else:
        assert seen[("t", 1)] == [50, 50, 51, 52, 52]


def test_patches_have_the_plans_size_and_the_foreground_share(tmp_path):
    root = write_numbered_slices(tmp_path / "numbered")
    plan = (
        open_dataset(root).plan_for_training(patch_size=(16, 16)).replace(spacing=(0.5, 0.5), foreground_fraction=1.0)
    )
    dataset = PatchDataset(root, plan, seed=0)
    image, labels, _ = dataset.resampled(0)
    assert tuple(labels.shape) == (32, 32)  # 16 pixels of 1 mm at 0.5 mm
    for index in range(len(dataset)):
        item = dataset[index]
        assert tuple(item["image"].shape) == (1, 16, 16) and tuple(item["label"].shape) == (16, 16)
        # Every patch is centered on a labeled pixel: an even-sized patch's center lies between its 4 middle pixels.
        assert item["label"][7:9, 7:9].any()
    plan = plan.replace(foreground_fraction=0.0, context_slices=1)
    augmented = PatchDataset(root, plan, SpacingAugmentationConfig(), seed=0)
    assert tuple(augmented[0]["image"].shape) == (3, 16, 16)


def test_patches_are_reproducible_from_the_seed_and_reseed(tmp_path):
    root = write_numbered_slices(tmp_path / "numbered")
    plan = open_dataset(root).plan_for_training()
    first = PatchDataset(root, plan, SpacingAugmentationConfig(), seed=5)
    second = PatchDataset(root, plan, SpacingAugmentationConfig(), seed=5)
    draws = [first[i]["image"] for i in range(4)]
    assert all(torch.equal(a, second[i]["image"]) for i, a in enumerate(draws))
    first.reseed(7)
    second.reseed(7)
    assert torch.equal(first[0]["image"], second[0]["image"])


def test_padding_outside_a_slice_holds_the_intensity_floor(tmp_path):
    root = write_numbered_slices(tmp_path / "numbered")
    plan = Plan("spacing", (64, 64), IntensitySpec("unit"), spacing=(1.0, 1.0), foreground_fraction=0.0)
    item = PatchDataset(root, plan, seed=0)[0]
    assert float(item["image"][0, 0, 0]) == pytest.approx(-1.0)  # (0 - 0.5) / 0.5: the floor of the stored range


def test_spacing_protocol_needs_a_fingerprint_with_spacings(tmp_path):
    from perspective_unet.data.layouts.base import TRAIN_DIR

    lineage = tmp_path / "lineage"
    (lineage / TRAIN_DIR).mkdir(parents=True)
    np.savez(
        lineage / TRAIN_DIR / "case0005_slice000.npz",
        image=np.zeros((8, 8), np.float32),
        label=np.zeros((8, 8), np.uint8),
    )
    layout = open_dataset(lineage)
    assert layout.plan().protocol == "paper"
    with pytest.raises(InputError, match="fingerprint"):
        layout.plan_for_training(protocol="spacing")
