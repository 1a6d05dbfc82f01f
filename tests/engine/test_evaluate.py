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
    assert 0.0 <= summary["mean_dice"] <= 1.0 and summary["mean_hd95"] >= 0.0
    assert set(summary["per_class"]) == {"square", "disc"}
    assert summary["num_cases"] == 2 and summary["img_size"] == [32, 32]
    corrected = summary["corrected"]
    assert corrected["hd95_units"] == "mm" and set(corrected["per_class"]) == {"square", "disc"}
    assert set(corrected["undefined"]) == {"dice", "hd95"}
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(rows) == 2 * 2 * 2  # cases x protocols x classes
    assert {r["case"] for r in rows} == {"case0004", "case0005"}
    markdown = (out / "summary.md").read_text()
    header = [line for line in markdown.splitlines() if line.startswith("| cases")][0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["cases", "DSC", "HD95", "square", "disc"]
    assert '"mean_dice"' in capsys.readouterr().out


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
    for protocol in ("legacy", "corrected"):
        assert result[protocol]["mean_dice"] == 1.0 and result[protocol]["mean_hd95"] == 0.0


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
