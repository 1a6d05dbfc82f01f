"""The pure functions of benchmarks/transfer.py on small synthetic grids (no network, no sdist)."""

from __future__ import annotations

import importlib.util
import io
import math
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perspective_unet.errors import InputError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


@pytest.fixture(scope="module")
def transfer():
    spec = importlib.util.spec_from_file_location("transfer_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _translate(affine: np.ndarray, voxels: tuple[float, float, float]) -> np.ndarray:
    """The affine of a grid whose voxel 0 sits at voxel ``voxels`` of ``affine``'s grid."""
    moved = affine.copy()
    moved[:3, 3] = (affine @ np.array([*voxels, 1.0]))[:3]
    return moved


def _flip(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with one axis reversed (what a LAS file of an LPS scan looks like)."""
    flipped = affine.copy()
    flipped[:3, axis] = -affine[:3, axis]
    corner = np.zeros(3)
    corner[axis] = array.shape[axis] - 1
    flipped[:3, 3] = (affine @ np.array([*corner, 1.0]))[:3]
    return np.flip(array, axis).copy(), flipped


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4, size=(6, 7, 5)).astype(np.uint8)


# LPS-like (negative x, y spacing) as read from DICOM, and plain RAS.
TARGETS = [_affine((-0.75, -0.75, 2.0), (180.0, 275.0, -800.0)), _affine((1.5, 1.5, 1.5), (-10.0, 4.0, 30.0))]


@pytest.mark.parametrize("target_affine", TARGETS)
def test_cropped_mask_lands_at_its_offset(transfer, labels, target_affine):
    offset = (9, 2, 4)
    placed = transfer.place_on_grid(labels, _translate(target_affine, offset), (20, 12, 11), target_affine)
    expected = np.zeros((20, 12, 11), dtype=np.uint8)
    expected[9:15, 2:9, 4:9] = labels
    assert placed.dtype == labels.dtype
    np.testing.assert_array_equal(placed, expected)
    assert transfer.grid_offset(labels.shape, _translate(target_affine, offset), target_affine).tolist() == [9, 2, 4]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_reference_lands_on_the_target(transfer, labels, axis):
    target_affine = TARGETS[0]
    reference, reference_affine = _flip(labels, target_affine, axis)
    assert not np.array_equal(reference, labels)
    placed = transfer.place_on_grid(reference, reference_affine, labels.shape, target_affine, resample=False)
    np.testing.assert_array_equal(placed, labels)


def test_flipped_and_permuted_crop(transfer, labels):
    target_affine = TARGETS[0]
    crop_affine = _translate(target_affine, (3, 1, 2))
    reference, reference_affine = _flip(labels, crop_affine, 1)
    reference = reference.transpose(2, 0, 1)  # stored as (k, i, j)
    reference_affine = reference_affine[:, [2, 0, 1, 3]]
    placed = transfer.place_on_grid(reference, reference_affine, (10, 9, 8), target_affine, resample=False)
    expected = np.zeros((10, 9, 8), dtype=np.uint8)
    expected[3:9, 1:8, 2:7] = labels
    np.testing.assert_array_equal(placed, expected)


def test_off_grid_reference_raises_or_resamples(transfer):
    target_affine = TARGETS[1]
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:5, 3:6, 2:7] = 2
    shifted = _translate(target_affine, (0.3, 0.0, -0.2))  # under half a voxel: nearest neighbor keeps the voxels
    with pytest.raises(ValueError, match="differs from the target grid"):
        transfer.place_on_grid(labels, shifted, labels.shape, target_affine, resample=False)
    np.testing.assert_array_equal(transfer.place_on_grid(labels, shifted, labels.shape, target_affine), labels)


def test_labels_outside_the_target_raise(transfer, labels):
    target_affine = TARGETS[1]
    with pytest.raises(ValueError, match="fall outside"):
        transfer.place_on_grid(labels, _translate(target_affine, (-2, 0, 0)), (10, 10, 10), target_affine)
    empty = np.zeros_like(labels)
    placed = transfer.place_on_grid(empty, _translate(target_affine, (-2, 0, 0)), (10, 10, 10), target_affine)
    assert not placed.any()


def test_dice_per_class_by_hand(transfer):
    prediction = np.zeros((2, 3, 4), dtype=np.uint8)
    reference = np.zeros((2, 3, 4), dtype=np.uint8)
    prediction[0, 0, :3] = 1  # class 1: |P| = 3, |R| = 2, overlap 1 -> 2/5
    reference[0, 0, 2:4] = 1
    reference[1, 2, :2] = 2  # class 2: only in the reference -> 0
    prediction[1, 1, :2] = 4  # class 4: only in the prediction -> 0
    prediction[1, 0, :] = 5  # class 5: 4 voxels in both, all shared -> 1
    reference[1, 0, :] = 5
    scores = transfer.dice_per_class(prediction, reference, [1, 2, 3, 4, 5])
    assert scores[1] == {"dice": pytest.approx(0.4), "reference_voxels": 2, "predicted_voxels": 3}
    assert scores[2] == {"dice": 0.0, "reference_voxels": 2, "predicted_voxels": 0}
    assert scores[3] == {"dice": None, "reference_voxels": 0, "predicted_voxels": 0}  # absent in both
    assert scores[4] == {"dice": 0.0, "reference_voxels": 0, "predicted_voxels": 2}
    assert scores[5]["dice"] == 1.0
    assert transfer.mean_dice(scores) == pytest.approx((0.4 + 0 + 0 + 1) / 4)
    assert transfer.mean_dice(transfer.dice_per_class(prediction, reference, [3])) is None
    with pytest.raises(ValueError, match="differ in shape"):
        transfer.dice_per_class(prediction, reference[:1], [1])


def test_classes_present_and_table(transfer):
    labels = np.zeros((10, 10, 20), dtype=np.uint8)
    labels[:5] = 5  # 1000 voxels
    labels[5, 0, :3] = 7  # 3 voxels
    assert transfer.classes_present(labels) == [5]
    assert transfer.classes_present(labels, min_voxels=3) == [5, 7]
    scores = transfer.dice_per_class(labels, labels, [5, 2])
    organs = {name: {**scores[c], "reference_mean": None} for c, name in [(5, "liver"), (2, "gallbladder")]}
    organs["liver"]["reference_mean"] = 412.4
    result = {"shape": [10, 10, 20], "spacing_mm": [1.0, 1.0, 2.0], "organs": organs, "mean_dice": 1.0}
    table = transfer.format_table("scan", result)
    assert "liver" in table and "1.0000" in table and "n/a" in table and "ref mean HU" in table and "412" in table
    assert "ref mean MR signal" in transfer.format_table("mr", {**result, "intensity_unit": "MR signal"})


def test_extract_scans_by_exact_names(transfer, tmp_path):
    names = sorted({f for spec in transfer.SCANS.values() for f in [*spec["files"], spec["reference"]]})
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [*names, "../evil", "other/file"]:
            info = tarfile.TarInfo(transfer.PREFIX + name if not name.startswith("..") else name)
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    dest = transfer.extract_scans(archive, tmp_path / "out")
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == names and len(names) == 25  # 20 DICOM slices, the CTA, the MR, three references
    assert (dest / names[0]).read_text() == names[0]
    with tarfile.open(tmp_path / "short.tar.gz", "w:gz"):
        pass
    with pytest.raises(InputError, match="lacks"):
        transfer.extract_scans(tmp_path / "short.tar.gz", tmp_path / "out2")


def test_bad_input_exits_2(transfer, tmp_path, capsys):
    assert transfer.main(["--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    assert transfer.main(["--checkpoint", str(checkpoint), "--sdist", str(tmp_path / "none.tar.gz")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_mr_scan_scores_the_eight_organs_under_the_mr_models_ids(transfer):
    spec = transfer.SCANS["abdominal_mr"]
    assert spec["modality"] == "MR" and spec["classes"] == list(range(1, 9))
    # TotalSegmentator's total_mr ids of the eight organs, by name, onto the Synapse ids of the same names.
    total_mr = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6}
    total_mr |= {"pancreas": 7, "aorta": 23}
    synapse = {"aorta": 1, "gallbladder": 2, "kidney_left": 3, "kidney_right": 4, "liver": 5, "pancreas": 6}
    synapse |= {"spleen": 7, "stomach": 8}
    assert spec["label_map"] == {total_mr[name]: synapse[name] for name in synapse}
    assert all(s["modality"] == "CT" for name, s in transfer.SCANS.items() if name != "abdominal_mr")


def _run(held_out: float, minutes: float, liver: float | None, aorta: float) -> dict:
    """One run's record as run_variants gives it, with the same score on every scan."""
    organs = {"liver": {"dice": liver}, "aorta": {"dice": aorta}}
    scores = [v for v in (liver, aorta) if v is not None]
    scan = {"organs": organs, "mean_dice": sum(scores) / len(scores)}
    return {"held_out_mean_dice": held_out, "minutes": minutes, "epochs": 40, "scans": dict.fromkeys(_SCANS, scan)}


_SCANS = ("dicom_ct", "aorta_cta", "abdominal_mr")


def test_comparison_gives_mean_and_sample_std_over_seeds(transfer):
    assert tuple(transfer.SCANS) == _SCANS
    records = {
        "demo": {1234: _run(0.66, 9.0, 0.8, 0.2), 1235: _run(0.70, 11.0, 0.9, 0.4), 1236: _run(0.68, 10.0, None, 0.3)},
        "demo_domain": {1234: _run(0.65, 9.5, 0.85, 0.6)},
    }
    summary = transfer.compare(records)
    demo = summary["demo"]
    assert demo["seeds"] == [1234, 1235, 1236]
    assert demo["held_out_mean_dice"]["mean"] == pytest.approx(0.68)
    assert demo["held_out_mean_dice"]["std"] == pytest.approx(0.02)  # sample std of 0.66, 0.70, 0.68
    liver = demo["scans"]["dicom_ct"]["liver"]
    assert liver["n"] == 2 and liver["mean"] == pytest.approx(0.85)  # an organ absent in both counts for nothing
    aorta = demo["scans"]["aorta_cta"]["aorta"]
    assert aorta["mean"] == pytest.approx(0.3) and aorta["std"] == pytest.approx(0.1)
    assert demo["scans"]["abdominal_mr"]["mean"]["mean"] == pytest.approx((0.5 + 0.65 + 0.3) / 3)
    one = summary["demo_domain"]["scans"]["dicom_ct"]["aorta"]
    assert one["n"] == 1 and math.isnan(one["std"])
    table = transfer.format_comparison(summary)
    lines = table.splitlines()
    assert lines[0] == "| scan | organ | demo recipe | demo recipe + domain_generalization |"
    assert "| demo CT, held-out slices | mean of 8 | 68.0 ± 2.0 (3) | 65.0 (1 seed) |" in lines
    assert "| aorta_cta | aorta | 30.0 ± 10.0 (3) | 60.0 (1 seed) |" in lines
    assert "| training and evaluation | minutes | 10.0 ± 1.0 (3) | 9.5 (1 seed) |" in lines
    assert "| dicom_ct | liver | 85.0 ± 7.1 (2) | 85.0 (1 seed) |" in lines
    missing = transfer.format_comparison(transfer.compare({"demo": records["demo"], "demo_domain": {}}))
    assert "not run" in missing


def test_runs_without_training_score_nothing_and_an_earlier_comparison_is_kept(transfer, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "transfer_compare.json").write_text("{}")
    assert transfer.main(["--runs", str(tmp_path / "runs"), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "transfer_compare.json").read_text() == "{}"
    assert transfer.main(["--runs", str(tmp_path / "runs"), "--seeds", "0", "-o", str(tmp_path / "p")]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        transfer.main(["--runs", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")])


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_scan_is_predicted_and_scored_end_to_end(transfer, tmp_path, modality):
    from perspective_unet import create_model, save_model

    affine = _affine((1.5, 1.5, 3.0), (0.0, 0.0, 0.0))
    image = np.full((24, 20, 4), -100.0 if modality == "CT" else 300.0, np.float32)
    labels = np.zeros((24, 20, 4), np.uint8)
    labels[4:12, 5:15, 1:3] = 7  # the raw label id that the spec maps to class 1
    image[labels > 0] = 60.0 if modality == "CT" else 900.0
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "scan.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "reference.nii.gz"))
    model = save_model(create_model("perspective_unet_tiny", num_classes=2), tmp_path / "model.pt")
    spec = {
        "image": "scan.nii.gz",
        "reference": "reference.nii.gz",
        "label_map": {7: 1},
        "classes": [1],
        "resample": False,
        "modality": modality,
    }
    result = transfer.evaluate_scan(spec, tmp_path, model, tmp_path / "out", tta=False)
    organ = next(iter(result["organs"].values()))
    assert result["shape"] == [24, 20, 4] and organ["reference_voxels"] == 8 * 10 * 2
    assert 0.0 <= organ["dice"] <= 1.0 and organ["predicted_voxels"] >= 0
