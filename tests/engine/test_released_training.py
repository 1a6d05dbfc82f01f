"""The released training loop's schedule and augmentation stream, against the released trainer's recorded behavior
(fixtures/released_outputs/training_loop.json, see its README); the released configs; which kind a data folder is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from perspective_unet.cli import main
from perspective_unet.config import TrainConfig
from perspective_unet.config.augmentation import AugmentationConfig
from perspective_unet.config.experiment import ExperimentConfig
from perspective_unet.data.datasets import SliceDataset
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.runtime import DistributedContext
from perspective_unet.engine.train import train
from perspective_unet.engine.training import setup_run
from perspective_unet.engine.training_data import make_loader
from perspective_unet.models.registry import create_model
from perspective_unet.schedule import poly_lr

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "released_outputs" / "training_loop.json").read_text())
# A network small enough for many steps in a test.
TINIEST = {"widths": [4, 4, 8, 8, 8], "enltb_depths": [1, 1, 1], "scsi_dim": 8, "scsi_heads": 2, "scsi_depth": 1}
RELEASED_OPTIONS = {"blur_filter": "released", "piecewise_warp": "released", "stream": "released"}


def _identical_slices(root: Path, count: int, size: int) -> Path:
    """A Synapse-style folder (TransUNet's train_npz) of ``count`` identical slices: squares on noise."""
    (root / "train_npz").mkdir(parents=True)
    image = np.random.default_rng(0).uniform(0.0, 0.2, (size, size)).astype(np.float32)
    label = np.zeros((size, size), dtype=np.float32)
    label[4:12, 4:12], label[size // 2 :, size // 2 :] = 1, 2
    image[label > 0] = 0.8
    for index in range(count):
        np.savez(root / "train_npz" / f"case0005_slice{index:03d}.npz", image=image, label=label)
    return root


def _canonical(keys: list) -> list[int]:
    """Number equal keys alike, in order of first appearance (the recorded draw ids are numbered so)."""
    numbers: dict = {}
    return [numbers.setdefault(key, len(numbers)) for key in keys]


def _draws_through_the_training_loader(data: Path, slices: int, batch_size: int, epochs: int) -> list[int]:
    """Each sample's augmentation, in loader order over the epochs, as the training loop draws it (4 workers)."""
    config = TrainConfig(data=str(data), batch_size=batch_size, num_workers=4, drop_last_batch=False, seed=1234)
    # Noise only, always drawn: two samples come out equal exactly when they got the same draw.
    augmentation = AugmentationConfig(
        min_ops=1, max_ops=1, operations=("noise",), noise_std=0.1, stream="released", before_resize=True
    )
    dataset = SliceDataset(data, img_size=16, augmentation=augmentation, seed=config.seed)
    assert len(dataset) == slices
    images = []
    for epoch in range(epochs):
        dataset.reseed(epoch * 1000)  # as the training loop does at each epoch
        for batch in make_loader(dataset, config, DistributedContext(), epoch):
            images += [image.numpy().tobytes() for image in batch["image"]]
    return _canonical(images)


def test_released_stream_gives_the_recorded_draw_of_every_sample(tmp_path):
    small = RECORDED["small"]
    data = _identical_slices(tmp_path / "data", small["slices"], 16)
    ours = _draws_through_the_training_loader(data, small["slices"], small["batch_size"], small["epochs"])
    recorded = [draw for epoch in small["draw_ids"] for batch in epoch for draw in batch]
    assert ours == recorded
    # The recorded structure: the k-th sample of any worker gets draw k, in every epoch.
    workers = [worker for epoch in small["workers"] for batch in epoch for worker in batch]
    position = {w: [i for i, x in enumerate(workers[: small["slices"]]) if x == w] for w in set(workers)}
    assert all(recorded[p] == k for w in position for k, p in enumerate(position[w]))


@pytest.mark.slow
def test_released_stream_gives_the_recorded_555_draws_of_a_synapse_epoch(tmp_path):
    sized = RECORDED["synapse_sized"]
    data = _identical_slices(tmp_path / "data", sized["slices"], 16)
    ours = _draws_through_the_training_loader(data, sized["slices"], sized["batch_size"], sized["epochs"])
    assert ours == _canonical([draw for epoch in sized["draw_ids"] for draw in epoch])
    assert len(set(ours)) == sized["distinct_draws"] == 555


def test_lr_after_step_gives_the_recorded_rates(tmp_path, monkeypatch):
    small = RECORDED["small"]
    data = _identical_slices(tmp_path / "data", small["slices"], 16)
    used: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    config = TrainConfig(
        data=str(data),
        output=str(tmp_path / "run"),
        model="perspective_unet_tiny",
        model_options=TINIEST,
        img_size=(16, 16),
        epochs=small["epochs"],
        batch_size=small["batch_size"],
        num_workers=0,
        val_every=0,
        drop_last_batch=False,
        augment=False,
        amp=False,
        lr_after_step=True,
    )
    result = train(config)
    assert result.iterations == len(small["lrs"]) == 26
    np.testing.assert_allclose(used, small["lrs"], rtol=1e-12, atol=0)
    # This project's default sets each step's own rate: the released rates are one step behind it.
    default = [poly_lr(result.config.base_lr, t, result.iterations, config.lr_power) for t in range(result.iterations)]
    np.testing.assert_allclose(default[:-1], small["lrs"][1:], rtol=1e-12, atol=0)


def test_training_draws_the_model_first_so_a_seed_gives_the_released_initial_weights(tiny_dataset, tmp_path):
    options = {"scsi_init": "released", "in_channels": 3, "repeat_gray_to_rgb": True}
    config = TrainConfig(
        data=str(tiny_dataset),
        output=str(tmp_path / "run"),
        model="perspective_unet_tiny",
        model_options=options,
        img_size=(32, 32),
        num_workers=0,
        seed=77,
    )
    run = setup_run(config, None, DistributedContext())
    run.writer.close()
    torch.manual_seed(77)
    expected = create_model("perspective_unet_tiny", num_classes=3, **options).state_dict()
    state = run.core_model.state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def _config(name: str) -> TrainConfig:
    return TrainConfig.from_yaml(ROOT / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("name", ["synapse_released", "acdc_released"])
def test_released_configs_turn_every_released_option_on(name):
    config = _config(name)
    assert config.lr_after_step and config.num_workers == 4 and config.seed == 1234
    assert config.model_options["scsi_init"] == "released"
    augmentation = AugmentationConfig.from_dict(config.augmentation)
    assert {key: getattr(augmentation, key) for key in RELEASED_OPTIONS} == RELEASED_OPTIONS


@pytest.mark.parametrize("name", ["synapse", "acdc", "demo"])
def test_the_projects_own_configs_keep_the_defaults(name):
    config = _config(name)
    assert not config.lr_after_step and "scsi_init" not in config.model_options
    assert not set(RELEASED_OPTIONS) & set(config.augmentation)


def test_the_released_ablation_runs_the_eight_settings_on_the_released_recipe():
    experiment = ExperimentConfig.from_yaml(ROOT / "configs" / "experiments" / "synapse_released_ablation.yaml")
    runs = experiment.runs()
    assert len(experiment.configurations) == 8 and experiment.seeds == [1234, 1235, 1236] and len(runs) == 24
    released = _config("synapse_released")
    switches = set()
    for run in runs:
        options = run.config.model_options
        switches.add(tuple(options.get(k, True) for k in ("use_bipath", "use_enltb", "use_scsi")))
        assert {k: v for k, v in options.items() if not k.startswith("use_")} == released.model_options
        assert run.config.augmentation == released.augmentation and run.config.lr_after_step
    assert len(switches) == 8
    variant = ExperimentConfig.from_yaml(ROOT / "configs" / "experiments" / "synapse_ablation.yaml")
    assert all(run.config.model_options.get("scsi_attention", "tokens") == "tokens" for run in variant.runs())


def _acdc_files(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder, name in (
        ("train", "case_001_sliceED_0"),
        ("valid", "case_019_sliceES_0"),
        ("test", "case_002_volume_ED"),
    ):
        (root / folder).mkdir(parents=True)
        shape = (3, 32, 32) if folder == "test" else (32, 32)
        np.savez(root / folder / f"{name}.npz", img=rng.random(shape), label=rng.integers(0, 4, shape))
    return root


def test_plan_and_training_say_which_kind_of_folder_the_data_are(tiny_dataset, tmp_path, capsys, caplog):
    acdc = _acdc_files(tmp_path / "ACDC")
    assert main(["plan", "-d", str(acdc)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data: circulating ACDC files (MT-UNet's layout), read as they are")
    assert "no fingerprint; training uses this plan" in out and "slice size      224 x 224" in out
    assert main(["plan", "-d", str(acdc), "--batch-size", "4"]) == 2  # nothing to derive a new plan from
    capsys.readouterr()
    assert main(["plan", "-d", str(tiny_dataset)]) == 0
    assert capsys.readouterr().out.startswith("data: tiny prepared by `perspective-unet prepare`: synthetic")
    synapse = _identical_slices(tmp_path / "Synapse", 2, 16)
    assert open_dataset(synapse).describe().startswith("circulating Synapse files")
    config = TrainConfig(data=str(acdc), output=str(tmp_path / "run"), model="perspective_unet_tiny", num_workers=0)
    with caplog.at_level(logging.INFO, logger="perspective_unet.engine.training"):
        setup_run(config, None, DistributedContext()).writer.close()
    assert f"data {acdc}: circulating ACDC files" in caplog.text
