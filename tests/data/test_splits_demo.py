"""Case splits, slice-block splits, and the demo dataset from a local fake sdist (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from perspective_unet.cli import main
from perspective_unet.data import demo as demo_module
from perspective_unet.data import prepare_demo
from perspective_unet.data.splits import choose_test_block, split_cases
from perspective_unet.errors import InputError
from tests.data.conftest import leftovers

# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [1, 2, 3, 10, 37])
def test_split_cases_is_a_partition(n: int) -> None:
    cases = [f"c{i}" for i in range(n)]
    splits = split_cases(cases, 0.1, 0.2, seed=5)
    together = splits["train"] + splits["val"] + splits["test"]
    assert sorted(together) == sorted(cases) and len(together) == n
    assert splits["train"], "at least one training case"
    assert split_cases(list(reversed(cases)), 0.1, 0.2, seed=5) == splits  # listing order does not matter


def test_split_cases_seed_changes_the_split() -> None:
    cases = [f"c{i}" for i in range(30)]
    assert split_cases(cases, seed=1) != split_cases(cases, seed=2)


def test_choose_test_block_shares_every_class_and_leaves_a_gap() -> None:
    label = np.zeros((40, 4, 4), dtype=np.uint8)
    label[10:30, 0, 0] = 1  # long organ
    label[18:24, 1, 1] = 2  # short organ
    label[25:32, 2, 2] = 3
    split = choose_test_block(label, [1, 2, 3], gap=2)
    test = set(range(split.test_start, split.test_stop))
    train = {z for a, b in split.train_blocks for z in range(a, b)}
    assert not test & train
    assert min(abs(a - b) for a in test for b in train) == 3  # two dropped slices between the sides
    for c in (1, 2, 3):
        present = set(np.flatnonzero((label == c).any(axis=(1, 2))))
        assert present & test and present & train, f"class {c} on both sides"


# ---------------------------------------------------------------- demo

CT_SHAPE = (20, 16, 30)  # RAS, 30 axial slices


def _fake_demo_volumes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1000, CT_SHAPE).astype(np.int16)
    seg = np.zeros(CT_SHAPE, dtype=np.uint8)
    # Every mapped organ spans slices 8..23; unmapped TotalSegmentator structures (10, 90) must become background.
    for i, ts_id in enumerate((1, 2, 3, 4, 5, 6, 7, 52)):
        seg[2 * i : 2 * i + 2, 0:4, 8:24] = ts_id
    seg[18:20, 10:12, 5:25] = 10
    seg[0:2, 14:16, 0:30] = 90
    return ct, seg


def _make_fake_sdist(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ct, seg = _fake_demo_volumes()
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    with tarfile.open(path, "w:gz") as archive:
        for name, array in (("image", ct), ("label", seg)):
            data = gzip.compress(nib.Nifti1Image(array, affine).to_bytes())
            info = tarfile.TarInfo(demo_module.DEMO_MEMBERS[name])
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        text = b"Apache License Version 2.0 (test copy)\n"
        info = tarfile.TarInfo(demo_module.DEMO_MEMBERS["license"])
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return path


@pytest.fixture
def fake_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = _make_fake_sdist(tmp_path / "fake" / demo_module.DEMO_SDIST_NAME.replace(".tar.gz", "-src.tar.gz"))
    monkeypatch.setattr(demo_module, "DEMO_SDIST_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def test_prepare_demo_downloads_once_then_uses_the_cache(tmp_path: Path, fake_sdist: Path, monkeypatch) -> None:
    calls = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        target = dest / demo_module.DEMO_SDIST_NAME
        shutil.copyfile(fake_sdist, target)
        return target

    monkeypatch.setattr(demo_module, "_download_sdist", fake_download)
    monkeypatch.setenv("PERSPECTIVE_UNET_CACHE", str(tmp_path / "cache"))
    out = prepare_demo(tmp_path / "demo")
    assert len(calls) == 1 and (tmp_path / "cache" / demo_module.DEMO_SDIST_NAME).exists()
    prepare_demo(tmp_path / "demo2")
    assert len(calls) == 1, "the second run uses the cached sdist"

    info = json.loads((out / "dataset.json").read_text())
    assert info["license"].startswith("Apache-2.0") and "not manual annotation" in info["label_origin"]
    assert "Apache-2.0" in (out / "README.md").read_text() and (out / "LICENSE-TotalSegmentator.txt").exists()
    # Mapping in the nnU-Net raw copy: TotalSegmentator ids -> Synapse ids, other structures -> background.
    raw = out / "nnunet_raw" / demo_module.DEMO_RAW_NAME
    mapped = np.asarray(nib.load(str(raw / "labelsTr" / "demo001.nii.gz")).dataobj)
    _, seg = _fake_demo_volumes()
    for ts_id, synapse_id in demo_module.TOTALSEGMENTATOR_TO_SYNAPSE.items():
        assert (mapped[seg == ts_id] == synapse_id).all()
    assert (mapped[(seg == 10) | (seg == 90)] == 0).all()
    assert json.loads((raw / "dataset.json").read_text())["file_ending"] == ".nii.gz"
    # Block split: every organ on both sides, no training slice next to a test slice.
    block = info["slice_split"]
    test = set(range(*block["test_block"]))
    train = {z for a, b in block["train_blocks"] for z in range(a, b)}
    assert min(abs(a - b) for a in test for b in train) > 1
    assert all(
        info["class_voxels"]["train"][n] > 0 and info["class_voxels"]["test"][n] > 0 for n in info["class_names"][1:]
    )
    slices = sorted(p.stem for p in (out / "train_npz").glob("*.npz"))
    assert {int(s.rsplit("slice", 1)[1]) for s in slices} == train
    with h5py.File(out / "test_vol_h5" / f"{info['splits']['test'][0]}.npy.h5", "r") as f:
        assert f["image"].shape == (len(test), 16, 20)  # axial (Z, A->P rows, R->L columns)
        assert list(f.attrs["crop_z"]) == block["test_block"]


def test_prepare_demo_rejects_a_wrong_hash_and_deletes_the_download(
    tmp_path: Path, fake_sdist: Path, monkeypatch
) -> None:
    monkeypatch.setattr(demo_module, "DEMO_SDIST_SHA256", "0" * 64)

    def fake_download(dest: Path) -> Path:
        target = dest / demo_module.DEMO_SDIST_NAME
        shutil.copyfile(fake_sdist, target)
        return target

    monkeypatch.setattr(demo_module, "_download_sdist", fake_download)
    with pytest.raises(InputError, match="expected 0000"):
        prepare_demo(tmp_path / "demo", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "demo").exists()
    assert not (tmp_path / "cache" / demo_module.DEMO_SDIST_NAME).exists()


def test_cli_prepare_demo_with_local_sdist(tmp_path: Path, fake_sdist: Path, monkeypatch, capsys) -> None:
    def no_network(dest: Path) -> Path:
        raise AssertionError("must not download when --sdist is given")

    monkeypatch.setattr(demo_module, "_download_sdist", no_network)
    assert main(["prepare", "demo", "-o", str(tmp_path / "demo"), "--sdist", str(fake_sdist)]) == 0
    assert (tmp_path / "demo" / "dataset.json").exists()
    assert main(["prepare", "demo", "-o", str(tmp_path / "demo"), "--sdist", str(fake_sdist)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert leftovers(tmp_path) == []
