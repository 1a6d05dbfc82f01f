"""Evaluation: reports of both protocols from a checkpoint on prepared volumes."""

from __future__ import annotations

import csv
import json

import pytest

from perspective_unet import create_model, save_model
from perspective_unet.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = create_model("perspective_unet_tiny", num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_model(model, path, train_config={"img_size": [32, 32]})


def test_evaluate_cli_writes_both_protocols(tiny_dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_dataset), "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == {"0": "background", "1": "square", "2": "disc"}
    assert set(summary["mean"]) == {"1", "2"} and summary["protocols"] == ["legacy", "corrected"]
    assert summary["num_cases"] == 2 and summary["img_size"] == [32, 32] and "hd95_units" not in summary
    assert 0.0 <= summary["foreground_mean"]["legacy_Dice"] <= 1.0
    assert summary["units"]["HD95"].startswith("mm") and summary["units"]["legacy_HD95_voxels"].startswith("voxels")
    assert set(summary["undefined"]["1"]) == {"Dice", "IoU", "HD95", "NSD"}
    assert [c["case"] for c in summary["metric_per_case"]] == ["case0004", "case0005"]
    first = summary["metric_per_case"][0]["metrics"]["1"]
    assert first["n_pred"] == first["TP"] + first["FP"] and first["n_ref"] == first["TP"] + first["FN"]
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(rows) == 2 * 2  # cases x classes, every metric a column
    assert {r["case"] for r in rows} == {"case0004", "case0005"}
    assert {"Dice", "IoU", "TP", "HD95", "NSD", "legacy_Dice", "legacy_HD95_voxels"} <= set(rows[0])
    markdown = (out / "summary.md").read_text()
    header = [line for line in markdown.splitlines() if line.startswith("| class ") and "DSC" in line][0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["class", "DSC", "HD95 (voxels)"]
    assert '"foreground_mean"' in capsys.readouterr().out


def test_perfect_prediction_scores_one(tiny_dataset, tmp_path, monkeypatch):
    """With the prediction replaced by the label, both protocols must give Dice 1 and HD95 0."""
    from perspective_unet.data import VolumeDataset
    from perspective_unet.engine.evaluate import evaluate_model
    from perspective_unet.engine.inferers import PaperInferer
    from perspective_unet.intensity import IntensitySpec
    from perspective_unet.plan import Plan

    dataset = VolumeDataset(tiny_dataset, split="test")
    labels = {i: dataset[i]["label"] for i in range(len(dataset))}
    calls = iter(range(len(dataset)))
    monkeypatch.setattr(PaperInferer, "infer", lambda *a, **k: labels[next(calls)])
    plan = Plan("paper", (32, 32), IntensitySpec("unit"))
    result = evaluate_model(
        create_model("perspective_unet_tiny", num_classes=3), dataset, plan, num_classes=3, progress=False
    )
    mean = result.foreground_mean()
    assert mean["Dice"] == mean["legacy_Dice"] == mean["IoU"] == mean["NSD"] == 1.0
    assert mean["HD95"] == mean["legacy_HD95_voxels"] == mean["FP"] == mean["FN"] == 0.0


def test_class_count_mismatch_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    path = save_model(create_model("perspective_unet_tiny", num_classes=9), tmp_path / "nine.pt")
    assert main(["evaluate", "--checkpoint", str(path), "--data", str(tiny_dataset), "-o", str(tmp_path / "e")]) == 2
    assert "9 classes" in capsys.readouterr().err


def test_volumes_are_read_one_ahead_of_prediction_in_order():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from perspective_unet.engine.evaluate import _prefetch

    requested = []
    second_read = threading.Event()

    class Volumes:
        def __getitem__(self, index):
            requested.append(index)
            if index == 7:
                second_read.set()
            return {"case": index}

    with ThreadPoolExecutor(max_workers=1) as workers:
        items = _prefetch(Volumes(), [3, 7, 9], workers)
        assert next(items) == {"case": 3}
        assert second_read.wait(5)  # the next volume is read while the caller still works on the first
        assert [item["case"] for item in items] == [7, 9]
    assert requested == [3, 7, 9]
    assert list(_prefetch(Volumes(), [], None)) == []


@pytest.mark.parametrize(("precision", "recorded"), [("fp32", "fp32"), ("bf16", "bfloat16")])
def test_the_summary_records_what_the_forward_passes_computed_in(
    tiny_dataset, checkpoint, tmp_path, precision, recorded
):
    out = tmp_path / precision
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_dataset), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--precision", precision]) == 0
    assert json.loads((out / "summary.json").read_text())["precision"] == recorded
