"""Cross-validation that finishes: every labeled case in the folds, out-of-fold predictions of every fold, their
summary, fold evaluation that never scores a training case, and folds that cannot change under a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet.cli import main
from perspective_unet.config import TrainConfig
from perspective_unet.data import VolumeDataset, prepare_nnunet
from perspective_unet.data.folds import SPLITS_FILE
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.train import train
from perspective_unet.runs import RunFolder
from perspective_unet.viz.volumes import read_canonical
from tests.data.conftest import write_blob_nnunet_raw

CASES = [f"case_{i:03d}" for i in range(10)]
TINY = {
    "model": "perspective_unet_tiny",
    "img_size": (16, 16),
    "epochs": 1,
    "max_iterations": 2,
    "batch_size": 4,
    "num_workers": 0,
    "val_every": 0,
    "device": "cpu",
}


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("perspective-unet "), err
    return err


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "Dataset042_Blobs"
    write_blob_nnunet_raw(root, num_cases=10, test_cases=2)
    return root


@pytest.fixture(scope="module")
def folds(raw, tmp_path_factory) -> tuple[Path, Path]:
    """The dataset prepared as by default, and a folder of five tiny fold runs on it."""
    root = tmp_path_factory.mktemp("cv")
    data = prepare_nnunet(raw, root / "prepared")
    for fold in range(5):
        train(TrainConfig(data=str(data), output=str(root / "runs" / f"fold_{fold}"), fold=fold, **TINY))
    return data, root / "runs"


@pytest.mark.slow
def test_every_labeled_case_is_in_the_folds_and_predicted_once_on_its_own_grid(folds, raw):
    data, runs = folds
    info = json.loads((data / "dataset.json").read_text())
    assert info["splits"] == {"train": CASES, "val": [], "test": ["test_000", "test_001"]}, "labelsTs is the test split"
    splits = json.loads((data / SPLITS_FILE).read_text())
    assert sorted(case for fold in splits for case in fold["val"]) == CASES, "each case held out exactly once"
    predicted = sorted(p.name for run in RunFolder(runs).fold_runs() for p in run.validation.glob("*.nii.gz"))
    assert predicted == [f"{case}.nii.gz" for case in CASES]
    for fold, run in zip(splits, RunFolder(runs).fold_runs()):
        assert sorted(p.name for p in run.validation.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in fold["val"]]
        case = fold["val"][0]
        written, original = nib.load(run.validation_labels(case)), nib.load(raw / "labelsTr" / f"{case}.nii.gz")
        assert written.shape == original.shape and np.allclose(written.affine, original.affine)
        with np.load(run.validation_probabilities(case)) as saved:
            probabilities = saved["probabilities"]
            assert probabilities.dtype == np.float16 and probabilities.shape == (3, *original.shape)
            np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
            np.testing.assert_array_equal(probabilities.argmax(axis=0), np.asarray(written.dataobj))
        summary = json.loads(run.validation_summary.read_text())
        assert [c["case"] for c in summary["metric_per_case"]] == fold["val"]
        assert summary["fold"] == run.path.name and summary["num_folds"] == 5 and len(summary["splits_sha256"]) == 64
        state = torch.load(run.last, weights_only=True)
        assert state["fold"]["val"] == fold["val"] and state["fold"]["splits_sha256"] == summary["splits_sha256"]


@pytest.mark.slow
def test_crossval_pools_the_folds_cases_and_equals_means_by_hand(folds, tmp_path, capsys):
    _, runs = folds
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    assert main(["crossval", str(copy)]) == 0
    assert "10 cases from fold_0, fold_1, fold_2, fold_3, fold_4" in capsys.readouterr().out
    summary = json.loads((copy / "crossval" / "summary.json").read_text())
    per_case = [
        c
        for run in RunFolder(copy).fold_runs()
        for c in json.loads(run.validation_summary.read_text())["metric_per_case"]
    ]
    assert sorted(c["case"] for c in summary["metric_per_case"]) == CASES == sorted(c["case"] for c in per_case)
    for class_id in ("1", "2"):
        for metric in ("Dice", "IoU", "TP", "FN", "HD95", "NSD", "legacy_Dice", "legacy_HD95_voxels"):
            values = [c["metrics"][class_id][metric] for c in per_case]
            defined = [v for v in values if v is not None]
            expected = float(np.mean(defined)) if defined else None
            assert summary["mean"][class_id][metric] == pytest.approx(expected), (class_id, metric)
    means = [summary["mean"][k]["legacy_Dice"] for k in ("1", "2")]
    assert summary["foreground_mean"]["legacy_Dice"] == pytest.approx(np.mean(means))
    assert summary["folds"] == [f"fold_{k}" for k in range(5)] and summary["missing_folds"] == []
    assert main(["crossval", str(copy)]) == 2 and "--overwrite" in one_line_error(capsys)
    shutil.rmtree(copy / "fold_3" / "validation")
    assert main(["crossval", str(copy), "--overwrite"]) == 2
    assert "fold_3 of 5 folds have no out-of-fold predictions" in one_line_error(capsys)
    assert main(["crossval", str(copy), "--overwrite", "--allow-missing"]) == 0
    partial = json.loads((copy / "crossval" / "summary.json").read_text())
    assert partial["num_cases"] == 8 and partial["missing_folds"] == ["fold_3"]


def test_crossval_report_draws_every_out_of_fold_case(folds, raw, tmp_path, capsys):
    data, runs = folds
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    assert main(["crossval", str(copy), "--report"]) == 0
    page = (copy / "crossval" / "report.html").read_text()
    for case in CASES:  # each case's out-of-fold label map drawn over its image
        assert f'id="case-{case}"' in page
    assert "no prediction file was kept" not in page and "Not drawn" not in page
    # The report stacks a held-out case's training slices back into its volume and reads the label map on the case's
    # own grid in the same canonical order: the raw reference read so equals the stacked one voxel for voxel.
    assert main(["crossval", str(copy), "--overwrite"]) == 0  # summarized again without --report: no stale page
    assert not (copy / "crossval" / "report.html").exists()
    raw_label, _ = read_canonical(raw / "labelsTr" / "case_004.nii.gz", as_label=True)
    stacked = VolumeDataset(open_dataset(data), cases=["case_004"])[0]["label"]
    np.testing.assert_array_equal(raw_label, stacked)


@pytest.mark.slow
def test_fold_evaluation_scores_its_held_out_cases_never_a_training_case(folds, raw, tmp_path, capsys):
    data, runs = folds
    poisoned = tmp_path / "poisoned"
    shutil.copytree(data, poisoned)
    fold = json.loads((data / SPLITS_FILE).read_text())[0]
    for case in fold["train"]:  # a training case scored by mistake would show these labels
        for path in (poisoned / "train_npz").glob(f"{case}_slice*.npz"):
            with np.load(path) as saved:
                image, label = saved["image"], saved["label"]
            np.savez(path, image=image, label=np.full_like(label, 2))
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(runs / "fold_0"), "--data", str(poisoned), "--split", "val", "-o", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in summary["metric_per_case"]] == fold["val"] and summary["fold"] == "fold_0"
    for entry in summary["metric_per_case"]:
        reference = np.asarray(nib.load(raw / "labelsTr" / f"{entry['case']}.nii.gz").dataobj)
        assert entry["metrics"]["2"]["n_ref"] == int((reference == 2).sum()), "the true labels of a held-out case"
    ensemble = [
        "evaluate",
        "--checkpoint",
        str(runs),
        "--data",
        str(poisoned),
        "--split",
        "val",
        "-o",
        str(tmp_path / "e"),
    ]
    assert main(ensemble) == 2 and "crossval" in one_line_error(capsys)
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_resume_refuses_folds_that_changed_since_and_never_draws_new_ones(folds, tmp_path, capsys):
    data, runs = folds
    copy, run = tmp_path / "data", tmp_path / "fold_0"
    shutil.copytree(data, copy)
    shutil.copytree(runs / "fold_0", run)
    before = (run / "last.pt").read_bytes()
    splits = json.loads((copy / SPLITS_FILE).read_text())
    moved, back = splits[0]["val"][0], splits[0]["train"][0]
    splits[0]["val"][0], splits[0]["train"][0] = back, moved  # a former validation case now trains
    (copy / SPLITS_FILE).write_text(json.dumps(splits))
    resume = ["train", "--resume", str(run / "last.pt"), "--data", str(copy), "--epochs", "2"]
    assert main(resume) == 2
    err = one_line_error(capsys)
    assert f"{copy / SPLITS_FILE} changed since" in err and "former validation cases" in err
    (copy / SPLITS_FILE).unlink()
    assert main(resume) == 2 and "is missing" in one_line_error(capsys)
    assert not (copy / SPLITS_FILE).exists(), "a resumed run never draws new folds"
    assert (run / "last.pt").read_bytes() == before


def test_bad_splits_files_are_refused_with_one_line_before_any_training(raw, tmp_path, capsys):
    data = prepare_nnunet(raw, tmp_path / "prepared")
    base = ["train", "--data", str(data), "-o", str(tmp_path / "runs"), "--model", "perspective_unet_tiny"]
    three = [{"train": [c for c in CASES if c not in CASES[i::3]], "val": CASES[i::3]} for i in range(3)]
    cases = [
        ([{"train": ["nobody", *CASES[1:]], "val": CASES[:1]}] * 3, "are not development cases"),
        ([{"train": CASES, "val": CASES[:1]}] * 3, "are on both sides"),
        (three, "holds 3 folds but 5 were asked for"),
    ]
    for folds_written, message in cases:
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(folds_written))
        assert main([*base, "--fold", "4", "--splits", str(path)]) == 2
        err = one_line_error(capsys)
        assert str(path) in err and message in err, err
    path.write_text(json.dumps(three))
    assert main([*base, "--fold", "2", "--num-folds", "2", "--splits", str(path)]) == 2
    assert "fold must be 0..1" in one_line_error(capsys)
    assert main([*base, "--fold", "0", "--splits", str(tmp_path / "absent.json")]) == 2
    assert "absent.json does not exist" in one_line_error(capsys)
    (data / "splits_final.json").write_text(json.dumps(three))
    (data / SPLITS_FILE).write_text(json.dumps(three[::-1]))
    assert main([*base, "--fold", "0", "--num-folds", "3"]) == 2
    assert "hold different folds" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists(), "nothing written"


@pytest.mark.slow
def test_a_run_without_a_fold_trains_on_every_case_and_says_it_has_no_validation(folds, tmp_path, caplog):
    data, _ = folds
    with caplog.at_level("INFO", logger="perspective_unet.engine.training"):
        result = train(TrainConfig(data=str(data), output=str(tmp_path / "run"), **{**TINY, "val_every": 1}))
    assert result.best_checkpoint is None and result.last_checkpoint.is_file() and result.validation is None
    assert "training on every training case without validation" in caplog.text and "--fold K" in caplog.text
    assert torch.load(result.last_checkpoint, weights_only=True).get("fold") is None
