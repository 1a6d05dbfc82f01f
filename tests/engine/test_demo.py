"""The demo's plumbing on a tiny prepared dataset (the real demo downloads a CT and trains for minutes)."""

from __future__ import annotations

import json
import shutil

from perspective_unet.engine.demo import DemoSettings, format_organ_table, run_demo


def test_demo_writes_checkpoint_summary_and_figure(tiny_dataset, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")  # an existing prepared dataset is reused, so nothing is fetched
    settings = DemoSettings(img_size=(32, 32), epochs=1, batch_size=4, device="cpu")
    summary = run_demo(out, settings)
    for name in ("best.pt", "summary.json", "overlay.png", "demo.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["foreground_mean"] == summary["foreground_mean"]
    assert set(saved["mean"]) == {"1", "2"} and saved["class_names"]["2"] == "disc"
    table = format_organ_table(saved)
    assert table.splitlines()[0].split()[:2] == ["organ", "Dice"]
    assert table.splitlines()[-1].startswith("mean")


def test_a_second_demo_keeps_the_first_ones_results_unless_told(tiny_dataset, tmp_path):
    import pytest

    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")
    settings = DemoSettings(img_size=(32, 32), epochs=1, batch_size=4, device="cpu")
    run_demo(out, settings)
    before = (out / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(out, settings)
    assert (out / "summary.json").read_text() == before
    run_demo(out, settings, overwrite=True)
    assert (out / "summary.json").is_file()


def test_demo_over_seeds_reports_each_organs_spread(tiny_dataset, tmp_path, capsys):
    import numpy as np

    from perspective_unet.cli import main

    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")
    args = [
        "demo",
        "-o",
        str(out),
        "--seeds",
        "2",
        "--seed",
        "7",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "32",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "seeds.json").read_text())
    assert record["seeds"] == [7, 8]
    runs = [json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in (7, 8)]
    dice = [r["mean"]["2"]["legacy_Dice"] for r in runs]
    assert record["per_class"]["disc"]["dice"]["mean"] == np.mean(dice)
    assert record["per_class"]["disc"]["dice"]["std"] == np.std(dice, ddof=1)
    assert record["mean_dice"]["n"] == 2 and "±" in printed and "seeds [7, 8]" in printed
    assert main(args) == 2, "the seeds' results are kept unless --overwrite"


def test_the_demo_config_file_holds_the_demo_settings():
    from pathlib import Path

    import yaml

    from perspective_unet.config import TrainConfig
    from perspective_unet.engine.demo import DemoSettings

    path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    config = TrainConfig.from_yaml(path)
    settings = DemoSettings()
    for name in (
        "model",
        "protocol",
        "epochs",
        "base_lr",
        "optimizer",
        "foreground_sampling_weight",
        "augment",
        "seed",
        "time_limit_minutes",
        "model_options",
        "augmentation",
    ):
        assert getattr(config, name) == getattr(settings, name), name
    assert yaml.safe_load(path.read_text())["val_every"] == 0 and config.num_workers == 0


def test_the_domain_switch_reaches_the_training_of_both_protocols(tiny_dataset, tmp_path, monkeypatch):
    import pytest

    from perspective_unet.cli import main
    from perspective_unet.engine import demo

    class TrainingReachedError(Exception):
        pass

    seen = {}

    def capture(config):  # stands in for training: the config it gets is what this test is about
        seen[config.protocol] = config.augmentation
        raise TrainingReachedError

    monkeypatch.setattr(demo, "train", capture)
    for protocol in ("spacing", "paper"):
        out = tmp_path / protocol
        shutil.copytree(tiny_dataset, out / "data")
        with pytest.raises(TrainingReachedError):
            main(["demo", "-o", str(out), "--protocol", protocol, "--domain-generalization", "--device", "cpu"])
    assert seen["spacing"]["domain_generalization"] is True and seen["spacing"]["shift_prob"] == 0.5
    # The paper protocol keeps the paper's own augmentation: only the shared switch comes from the demo's settings.
    assert seen["paper"] == {"domain_generalization": True}
    with pytest.raises(TrainingReachedError):
        main(["demo", "-o", str(tmp_path / "spacing"), "--no-domain-generalization", "--device", "cpu"])
    assert seen["spacing"]["domain_generalization"] is False
