"""evaluate --pred DIR --ref DIR: any tool's label maps scored by hand-checkable rules, equal to the checkpoint
evaluation of the same predictions, and every bad input refused with one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import perspective_unet.engine.evaluate as evaluate_module
import perspective_unet.engine.predictor as predictor_module
from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.data import prepare_nnunet
from perspective_unet.data.layouts.detect import open_dataset
from tests.data.conftest import save_nifti, write_blob_nnunet_raw

AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("perspective-unet evaluate: error: "), err
    return err


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    reference = np.zeros((6, 5, 3), dtype=np.uint8)
    reference[1:3, 1:3, 1] = 1  # 4 voxels
    reference[4:6, 3:5, :] = 2  # 12 voxels
    prediction = reference.copy()
    prediction[1, 1, 1] = 0  # one voxel of class 1 missed
    prediction[0, 0, 0] = 1  # one false positive of class 1
    prediction[4:6, 3:5, 2] = 0  # 4 voxels of class 2 missed
    save_nifti(tmp_path / "pred" / "a.nii.gz", prediction, AFFINE)
    save_nifti(tmp_path / "ref" / "a.nii.gz", reference, AFFINE)
    save_nifti(tmp_path / "pred" / "b.nii.gz", reference, AFFINE)
    save_nifti(tmp_path / "ref" / "b.nii.gz", reference, AFFINE)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    return tmp_path / "pred", tmp_path / "ref"


def test_a_folder_is_scored_by_case_with_nnunets_counts(tmp_path, capsys):
    pred, ref = _pair(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", str(tmp_path / "dataset.json")]
    assert main([*args, "-o", str(out), "--nsd-tolerance", "1", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    a, b = summary["metric_per_case"]
    assert (a["case"], a["prediction_file"], a["reference_file"]) == (
        "a",
        str(pred / "a.nii.gz"),
        str(ref / "a.nii.gz"),
    )
    liver, spleen = a["metrics"]["1"], a["metrics"]["2"]
    assert (liver["TP"], liver["FP"], liver["FN"], liver["TN"], liver["n_pred"], liver["n_ref"]) == (3, 1, 1, 85, 4, 4)
    assert liver["Dice"] == pytest.approx(6 / 8) and liver["IoU"] == pytest.approx(3 / 5)
    assert (spleen["TP"], spleen["FN"]) == (8, 4) and spleen["Dice"] == pytest.approx(16 / 20)
    assert spleen["HD95"] == pytest.approx(2.5), "one slice of 2.5 mm missed: measured at the header's spacing"
    assert b["metrics"]["1"]["Dice"] == b["metrics"]["2"]["NSD"] == 1.0
    assert summary["mean"]["1"]["Dice"] == pytest.approx((6 / 8 + 1) / 2)
    assert summary["nsd_tolerance_mm"] == {"1": 1.0, "2": 3.0} and summary["class_names"]["2"] == "spleen"
    assert summary["foreground_mean"]["Dice"] == pytest.approx(((6 / 8 + 1) / 2 + (16 / 20 + 1) / 2) / 2)
    assert '"foreground_mean"' in capsys.readouterr().out
    assert main([*args, "-o", str(out)]) == 2 and "--overwrite" in one_line_error(capsys)
    without_labels = tmp_path / "eval2"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(without_labels)]) == 0
    unnamed = json.loads((without_labels / "summary.json").read_text())
    assert unnamed["class_names"] == {"0": "background", "1": "class_1", "2": "class_2"}
    assert unnamed["nsd_tolerance_mm"] == {"1": 2.0, "2": 2.0}
    for class_id in ("1", "2"):  # the same scores but the NSD, whose tolerance differs
        assert {k: v for k, v in unnamed["mean"][class_id].items() if k != "NSD"} == {
            k: v for k, v in summary["mean"][class_id].items() if k != "NSD"
        }


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: (t / "ref" / "b.nii.gz").unlink(), "pred/b.nii.gz has no reference"),
        (lambda t: (t / "pred" / "b.nii.gz").unlink(), "ref/b.nii.gz has no prediction"),
        (lambda t: save_nifti(t / "pred" / "b.nii.gz", np.zeros((6, 5, 4), np.uint8), AFFINE), "has shape (6, 5, 4)"),
        (
            lambda t: save_nifti(t / "pred" / "b.nii.gz", np.zeros((6, 5, 3), np.uint8), np.diag([0.8, 0.7, 3, 1])),
            "pred/b.nii.gz lies on another grid",
        ),
        (lambda t: save_nifti(t / "pred" / "b.nii.gz", np.full((6, 5, 3), 3, np.uint8), AFFINE), "outside the classes"),
        (lambda t: save_nifti(t / "pred" / "b.nii.gz", np.full((6, 5, 3), 0.5), AFFINE), "not class ids"),
        (lambda t: (t / "dataset.json").write_text('{"labels": {"a": 0, "b": 2}}'), "must be consecutive from 0"),
    ],
)
def test_bad_folders_are_refused_with_one_line_naming_the_file(tmp_path, capsys, damage, message):
    pred, ref = _pair(tmp_path)
    damage(tmp_path)
    out = tmp_path / "deep" / "eval"
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", str(tmp_path / "dataset.json")]
    assert main([*args, "-o", str(out)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "deep").exists(), "nothing written"


def test_the_two_modes_take_their_own_options(tmp_path, capsys):
    pred, ref = _pair(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "-o", str(tmp_path / "e")]) == 2
    assert "--pred needs --ref" in one_line_error(capsys)
    assert main(["evaluate", "--checkpoint", "x.pt", "--ref", str(ref), "-o", str(tmp_path / "e")]) == 2
    assert "--checkpoint needs --data" in one_line_error(capsys)


class Thresholds:
    """The network's labels replaced by a fixed rule of the stored values: the same labels for the same image
    wherever it is read from (a prepared volume, or the raw file at prediction time)."""

    def __init__(self, plan, settings=None, plan_source=None):
        self.plan = plan

    def __call__(self, model, volume, *, spacing=None, return_probabilities=False):
        labels = np.where(volume > self.bright, 1, np.where(volume < self.dark, 2, 0)).astype(np.uint8)
        if return_probabilities:
            return labels, np.moveaxis(np.eye(3, dtype=np.float16)[labels], -1, 0)
        return labels


def test_folder_evaluation_equals_the_checkpoint_evaluation_of_the_same_predictions(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "Dataset042_Blobs"
    write_blob_nnunet_raw(raw, num_cases=3, test_cases=3)
    data = prepare_nnunet(raw, tmp_path / "prepared")
    layout = open_dataset(data)
    low, high = layout.info.intensity.window
    # About half of the disc (250 HU with noise of 20) and most of the squares (-180 HU): imperfect on purpose.
    Thresholds.bright, Thresholds.dark = (250 - low) / (high - low), (-170 - low) / (high - low)
    monkeypatch.setattr(evaluate_module, "inferer_for", Thresholds)
    monkeypatch.setattr(predictor_module, "inferer_for", Thresholds)
    extra = {"plan": layout.plan().to_dict(), "dataset": layout.info.summary()}
    model = save_model(create_model("perspective_unet_tiny", num_classes=3), tmp_path / "model.pt", **extra)
    device = ["--device", "cpu"]
    assert (
        main(["evaluate", "--checkpoint", str(model), "--data", str(data), "-o", str(tmp_path / "ckpt"), *device]) == 0
    )
    assert (
        main(["predict", "--checkpoint", str(model), "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "p"), *device])
        == 0
    )
    labels = str(raw / "dataset.json")
    args = ["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(raw / "labelsTs"), "--labels", labels]
    assert main([*args, "-o", str(tmp_path / "files")]) == 0
    capsys.readouterr()
    checkpoint = json.loads((tmp_path / "ckpt" / "summary.json").read_text())
    files = json.loads((tmp_path / "files" / "summary.json").read_text())
    assert [c["case"] for c in files["metric_per_case"]] == ["test_000", "test_001", "test_002"]
    for a, b in zip(checkpoint["metric_per_case"], files["metric_per_case"]):
        assert a["case"] == b["case"]
        for class_id in ("1", "2"):
            assert a["metrics"][class_id] == pytest.approx(b["metrics"][class_id], rel=1e-6), (a["case"], class_id)
        assert 0.2 < a["metrics"]["1"]["Dice"] < 0.9 and a["metrics"]["1"]["HD95"] > 0, "a test that can tell"
    for class_id in ("1", "2"):
        assert checkpoint["mean"][class_id] == pytest.approx(files["mean"][class_id], rel=1e-6)
    assert checkpoint["foreground_mean"] == pytest.approx(files["foreground_mean"], rel=1e-6)


def test_voxels_of_the_ignore_label_count_in_no_metric(tmp_path, capsys):
    reference = np.zeros((6, 5, 3), dtype=np.uint8)
    reference[1:3, 1:3, 1] = 1  # 4 voxels of liver
    reference[:, :, 2] = 2  # 30 voxels without annotation (nnU-Net's ignore label, the highest id)
    prediction = np.zeros_like(reference)
    prediction[1:3, 1:3, 1] = 1
    prediction[:, :, 2] = 1  # liver all over the unannotated slice: not a false positive
    save_nifti(tmp_path / "pred" / "a.nii.gz", prediction, AFFINE)
    save_nifti(tmp_path / "ref" / "a.nii.gz", reference, AFFINE)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "ignore": 2}}))
    out = tmp_path / "eval"
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", str(labels)]
    assert main([*args, "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == {"0": "background", "1": "liver"}
    liver = summary["metric_per_case"][0]["metrics"]["1"]
    assert (liver["TP"], liver["FP"], liver["FN"], liver["TN"]) == (4, 0, 0, 90 - 30 - 4)
    assert liver["Dice"] == 1.0 and liver["HD95"] == 0.0
    # Without the ignore label declared, the same reference holds a class beyond the declared ones: refused.
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    assert main([*args, "-o", str(tmp_path / "eval2")]) == 2
    assert "outside the classes 0..1" in one_line_error(capsys)
