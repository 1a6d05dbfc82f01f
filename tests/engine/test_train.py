"""Training: the CLI end to end, exact resumption, checkpoint contents, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from perspective_unet import load_model
from perspective_unet.cli import main
from perspective_unet.config import TrainConfig
from perspective_unet.engine.train import train

TINY_RUN = ["--model", "perspective_unet_tiny", "--img-size", "32", "32", "--batch-size", "4", "--num-workers", "0"]


def _config(data, output, **overrides) -> TrainConfig:
    fields = dict(
        data=str(data),
        output=str(output),
        model="perspective_unet_tiny",
        img_size=(32, 32),
        epochs=2,
        batch_size=4,
        num_workers=0,
        val_every=1,
        base_lr=0.01,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def test_two_epoch_cli_run_writes_checkpoints_logs_and_events(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "-o", str(out), "--epochs", "2", "--val-every", "1", *TINY_RUN]
    assert main(args) == 0
    for name in ("last.pt", "best.pt", "train_log.csv", "config.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_mean_dice"]) <= 1.0 for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) < 0.05  # poly decay per iteration
    state = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scaler", "rng", "train_config", "model_config", "epoch", "iteration"):
        assert key in state, key
    assert state["epoch"] == 2 and state["train_config"]["img_size"] == [32, 32]
    assert state["dataset"]["class_names"] == ["background", "square", "disc"]
    model = load_model(out / "best.pt")
    assert model.config.num_classes == 3 and model.config.in_channels == 1
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert "finished after 2 epoch(s)" in capsys.readouterr().out


def test_resumed_run_ends_with_the_same_weights(tiny_dataset, tmp_path):
    whole = train(_config(tiny_dataset, tmp_path / "whole"))
    first = train(_config(tiny_dataset, tmp_path / "split", epochs=2, max_iterations=whole.iterations // 2))
    assert first.epochs_completed == 1
    resumed = train(_config(tiny_dataset, tmp_path / "split"), resume=first.last_checkpoint)
    assert resumed.iterations == whole.iterations
    a = torch.load(whole.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = list(csv.DictReader((tmp_path / "split" / "train_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


@pytest.mark.slow
def test_training_learns_the_synthetic_shapes(tiny_dataset, tmp_path):
    config = _config(
        tiny_dataset, tmp_path / "learn", epochs=40, val_every=40, augment=False, optimizer="adamw", base_lr=3e-3
    )
    result = train(config)
    assert result.best_val_dice is not None and result.best_val_dice > 0.8  # about 0.97 when it works


def test_missing_dataset_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "run"), *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_img_size_is_rejected_before_training(tiny_dataset, tmp_path, capsys):
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "-o",
        str(tmp_path / "run"),
        "--model",
        "perspective_unet_tiny",
        "--img-size",
        "30",
        "30",
        "--num-workers",
        "0",
    ]
    assert main(args) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_yaml_config_with_command_line_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: somewhere\nepochs: 7\nmodel_options: {use_scsi: false, scsi_depth: 2}\n")
    config = TrainConfig.from_yaml(path, epochs=3, model_options={"scsi_depth": 4})
    assert config.epochs == 3 and config.data == "somewhere"
    assert config.model_options == {"use_scsi": False, "scsi_depth": 4}
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize("name", ["synapse", "acdc"])
def test_shipped_recipes_hold_the_papers_settings(name):
    from pathlib import Path

    config = TrainConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert (config.base_lr, config.momentum, config.weight_decay, config.lr_power) == (0.05, 0.9, 1e-4, 0.9)
    assert (config.batch_size, config.img_size, config.seed) == (12, (224, 224), 1234)
    assert (config.ce_weight, config.dice_weight) == (0.4, 0.6)
    assert config.epochs == {"synapse": 600, "acdc": 1000}[name]


def test_foreground_weights_favor_slices_with_labels():
    import numpy as np

    from perspective_unet.engine.training_data import foreground_weights as _foreground_weights

    class TwoSlices:
        labels = [np.zeros((4, 4)), np.pad(np.ones((1, 1)), 1)]

        def __len__(self):
            return 2

        def load_slice(self, index):
            return None, self.labels[index]

    assert _foreground_weights(TwoSlices(), 1.0) is None
    assert _foreground_weights(TwoSlices(), 4.0).tolist() == [1.0, 4.0]


def test_adamw_with_foreground_sampling_trains_and_resumes_its_state(tiny_dataset, tmp_path):
    result = train(
        _config(
            tiny_dataset,
            tmp_path / "adamw",
            epochs=1,
            optimizer="adamw",
            base_lr=1e-3,
            foreground_sampling_weight=3.0,
            val_every=0,
        )
    )
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert any("exp_avg" in s for s in state["optimizer"]["state"].values())
    assert result.best_checkpoint is None  # no validation, so no best.pt
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")


def test_memory_budget_needs_compile_and_reaches_the_compiler(tiny_dataset, tmp_path, monkeypatch):
    import perspective_unet.engine.training as training_module

    with pytest.raises(ValueError, match="compile"):
        TrainConfig(activation_memory_budget=0.4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TrainConfig(compile=True, activation_memory_budget=1.5)
    seen = {}

    def fake_compile(model, *, activation_memory_budget=None):
        seen["budget"] = activation_memory_budget
        return model

    monkeypatch.setattr(training_module, "compile_model", fake_compile)
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "-o",
        str(tmp_path / "run"),
        "--model",
        "perspective_unet_tiny",
        "--img-size",
        "32",
        "32",
        "--num-workers",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--val-every",
        "0",
        "--max-iterations",
        "1",
        "--compile",
        "--activation-memory-budget",
        "0.4",
    ]
    assert main(args) == 0
    assert seen == {"budget": 0.4}


def test_keeping_the_last_incomplete_batch_adds_its_iteration(tiny_dataset, tmp_path):
    # 12 training slices at batch 5: 2 full batches, and a third of 2 slices when it is kept (as released).
    dropped = train(_config(tiny_dataset, tmp_path / "dropped", epochs=1, batch_size=5, val_every=0))
    kept = train(_config(tiny_dataset, tmp_path / "kept", epochs=1, batch_size=5, val_every=0, drop_last_batch=False))
    assert (dropped.iterations, kept.iterations) == (2, 3)


@pytest.mark.parametrize("name", ["synapse_released", "acdc_released"])
def test_released_configs_train_the_released_network(tiny_dataset, tmp_path, name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    config = TrainConfig.from_yaml(
        path,
        data=str(tiny_dataset),
        output=str(tmp_path / "run"),
        model="perspective_unet_tiny",
        img_size=(32, 32),
        epochs=1,
        batch_size=4,
        num_workers=0,
    )
    assert (config.amp, config.drop_last_batch, config.val_every) == (False, False, 0)
    assert config.augmentation == {
        "noise_std": 1.275,
        "contrast_pivot": 0.0,
        "before_resize": True,
        "blur_filter": "released",
        "piecewise_warp": "released",
        "stream": "released",
    }
    result = train(config)
    assert result.best_checkpoint is None  # no validation-based selection: the last epoch is tested
    model = load_model(result.last_checkpoint)
    assert (model.config.scsi_attention, model.config.in_channels, model.config.repeat_gray_to_rgb) == (
        "released",
        3,
        True,
    )
    assert model.batch_dependent and not model.config.fast_dropout and model.config.scsi_init == "released"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(result.last_checkpoint),
                "--data",
                str(tiny_dataset),
                "-o",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
