"""Every config field is checked by type and range before any work starts, with a message naming the field."""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path

import pytest
import yaml

from perspective_unet.config import AugmentationConfig, ModelConfig, SpacingAugmentationConfig, TrainConfig

NAN, INF = math.nan, math.inf
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# (fields, the name the message must start with)
TRAIN_BAD = [
    ({"augment": "false"}, "augment"),
    ({"augment": "no"}, "augment"),
    ({"amp": "no"}, "amp"),
    ({"amp": 1}, "amp"),
    ({"compile": "yes"}, "compile"),
    ({"drop_last_batch": None}, "drop_last_batch"),
    ({"base_lr": "0.01"}, "base_lr"),
    ({"base_lr": NAN}, "base_lr"),
    ({"base_lr": INF}, "base_lr"),
    ({"base_lr": 0}, "base_lr"),
    ({"base_lr": True}, "base_lr"),
    ({"weight_decay": "1e-4"}, "weight_decay"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"momentum": "0.9"}, "momentum"),
    ({"lr_power": 0}, "lr_power"),
    ({"lr_power": -INF}, "lr_power"),
    ({"foreground_sampling_weight": INF}, "foreground_sampling_weight"),
    ({"ce_weight": "0.4"}, "ce_weight"),
    ({"dice_weight": NAN}, "dice_weight"),
    ({"epochs": "12"}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"epochs": 12.0}, "epochs"),
    ({"epochs": True}, "epochs"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "4"}, "batch_size"),
    ({"img_size": 32}, "img_size"),
    ({"img_size": [32]}, "img_size"),
    ({"img_size": [32, 32, 1]}, "img_size"),
    ({"img_size": [32, 0]}, "img_size"),
    ({"img_size": ["32", "32"]}, "img_size"),
    ({"img_size": [32.0, 32]}, "img_size"),
    ({"img_size": "224x224"}, "img_size"),
    ({"context_slices": -1}, "context_slices"),
    ({"context_slices": 1.0}, "context_slices"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"time_limit_minutes": NAN}, "time_limit_minutes"),
    ({"time_limit_minutes": "10"}, "time_limit_minutes"),
    ({"compile": True, "activation_memory_budget": "0.4"}, "activation_memory_budget"),
    ({"num_workers": -1}, "num_workers"),
    ({"grad_accum_steps": 2.0}, "grad_accum_steps"),
    ({"val_every": "10"}, "val_every"),
    ({"val_batch_size": 0}, "val_batch_size"),
    ({"log_every": False}, "log_every"),
    ({"seed": "1234"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"data": 3}, "data"),
    ({"output": None}, "output"),
    ({"model": 3}, "model"),
    ({"device": 0}, "device"),
    ({"val_split": None}, "val_split"),
    ({"val_split": "test"}, "val_split"),
    ({"fold": -1}, "fold"),
    ({"fold": "first"}, "fold"),
    ({"fold": 1.0}, "fold"),
    ({"fold": True}, "fold"),
    ({"fold": 5}, "fold"),
    ({"num_folds": 1}, "num_folds"),
    ({"protocol": "Paper"}, "protocol"),
    ({"optimizer": "lamb"}, "optimizer"),
    ({"model_options": None}, "model_options"),
    ({"model_options": ["use_scsi"]}, "model_options"),
    ({"augmentation": "none"}, "augmentation"),
    ({"augmentation": {1: 0.5}}, "augmentation"),
    # model_options: keys of ModelConfig with values of the field's type and range
    ({"model_options": {"not_an_option": 1}}, "model_options"),
    ({"model_options": {"num_classes": 4}}, "model_options.num_classes"),
    ({"model_options": {"use_scsi": "false"}}, "model_options.use_scsi"),
    ({"model_options": {"widths": [8, 16]}}, "model_options.widths"),
    ({"model_options": {"widths": [8, "16", 32]}}, "model_options.widths"),
    ({"model_options": {"enltb_depths": [2, 2]}}, "model_options.enltb_depths"),
    ({"model_options": {"scsi_dropout": 1.0}}, "model_options.scsi_dropout"),
    ({"model_options": {"mlp_ratio": NAN}}, "model_options.mlp_ratio"),
    ({"model_options": {"in_channels": "3"}}, "model_options.in_channels"),
    ({"model_options": {"enlsa_features": 0}}, "model_options.enlsa_features"),
    ({"model_options": {"scsi_attention": "batch"}}, "model_options.scsi_attention"),
    # augmentation: keys of the protocol's settings (either, but one, while the plan decides the protocol)
    ({"protocol": "paper", "augmentation": {"mirror_rows_prob": 0.0}}, "augmentation"),
    ({"protocol": "spacing", "augmentation": {"min_ops": 1}}, "augmentation"),
    ({"protocol": None, "augmentation": {"twirl_prob": 0.5}}, "augmentation"),
    ({"protocol": None, "augmentation": {"min_ops": 1, "mirror_rows_prob": 0.0}}, "augmentation"),
    ({"protocol": "paper", "augmentation": {"rotate_prob": "1"}}, "augmentation.rotate_prob"),
    ({"protocol": "paper", "augmentation": {"min_ops": 3, "max_ops": 2}}, "augmentation.min_ops"),
    ({"protocol": "paper", "augmentation": {"before_resize": "false"}}, "augmentation.before_resize"),
    ({"protocol": "spacing", "augmentation": {"scale_range": [1.4, 0.7]}}, "augmentation.scale_range"),
    ({"protocol": "spacing", "augmentation": {"blur_sigma": 1.0}}, "augmentation.blur_sigma"),
    ({"protocol": None, "augmentation": {"noise_prob": NAN}}, "augmentation.noise_prob"),
    ({"protocol": None, "augmentation": {"blur_sigma": "1"}}, "augmentation.blur_sigma"),
    ({"protocol": None, "augmentation": {"shift_range": [-0.5]}}, "augmentation.shift_range"),
    (
        {"augment": False, "protocol": "paper", "augmentation": {"mirror_rows_prob": "0"}},
        "augmentation.mirror_rows_prob",
    ),
]

MODEL_BAD = [
    ({"use_scsi": "false"}, "use_scsi"),
    ({"fast_dropout": None}, "fast_dropout"),
    ({"num_classes": "9"}, "num_classes"),
    ({"num_classes": 9.0}, "num_classes"),
    ({"in_channels": True}, "in_channels"),
    ({"widths": [64, 128]}, "widths"),
    ({"widths": 64}, "widths"),
    ({"widths": [64, 128, 256.5]}, "widths"),
    ({"enltb_depths": (2, 2)}, "enltb_depths"),
    ({"enltb_depths": 2}, "enltb_depths"),
    ({"enlsa_features": 1.5}, "enlsa_features"),
    ({"enlsa_redraw_interval": -1}, "enlsa_redraw_interval"),
    ({"enltb_dropout": NAN}, "enltb_dropout"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"mlp_ratio": "4"}, "mlp_ratio"),
    ({"mlp_ratio": INF}, "mlp_ratio"),
    ({"dilation": 0}, "dilation"),
    ({"enlsa_kernel": 1}, "enlsa_kernel"),
    ({"gradient_checkpointing": ["cnn", 1]}, "gradient_checkpointing"),
]

PAPER_AUGMENTATION_BAD = [
    ({"before_resize": "false"}, "before_resize"),
    ({"min_ops": 1.0}, "min_ops"),
    ({"max_ops": -1}, "max_ops"),
    ({"rotate_prob": "0.5"}, "rotate_prob"),
    ({"rotate_prob": NAN}, "rotate_prob"),
    ({"noise_std": INF}, "noise_std"),
    ({"blur_sigma": 0}, "blur_sigma"),
    ({"contrast_range": [1.5, 0.5]}, "contrast_range"),
    ({"contrast_range": [0.5, "1.5"]}, "contrast_range"),
    ({"scale_range": 0.5}, "scale_range"),
    ({"scale_range": [0.0, 2.0]}, "scale_range"),
    ({"piecewise_scale": [0.01]}, "piecewise_scale"),
    ({"operations": "rotate"}, "operations"),
    ({"operations": ["rotate", "rotate"]}, "operations"),
    ({"contrast_pivot": "0.5"}, "contrast_pivot"),
    ({"piecewise_grid": 4.0}, "piecewise_grid"),
    ({"rotate_degrees": -1}, "rotate_degrees"),
    ({"image_mode": "linear"}, "image_mode"),
]

SPACING_AUGMENTATION_BAD = [
    ({"mirror_rows_prob": "0.5"}, "mirror_rows_prob"),
    ({"gamma_prob": 1.5}, "gamma_prob"),
    ({"blur_sigma": 1.0}, "blur_sigma"),
    ({"gamma_range": [0.7, NAN]}, "gamma_range"),
    ({"low_resolution_range": [0.5, 2.0]}, "low_resolution_range"),
    ({"shift_range": [1, -1]}, "shift_range"),
    ({"shift_range": [True, 1]}, "shift_range"),
    ({"elastic_spacing": 16.5}, "elastic_spacing"),
    ({"noise_std": "0.1"}, "noise_std"),
    ({"rotate_degrees": INF}, "rotate_degrees"),
]


def _cases(cls, table):
    return [pytest.param(cls, fields, name, id=f"{cls.__name__}-{fields!r}") for fields, name in table]


@pytest.mark.parametrize(
    ("cls", "fields", "name"),
    _cases(TrainConfig, TRAIN_BAD)
    + _cases(ModelConfig, MODEL_BAD)
    + _cases(AugmentationConfig, PAPER_AUGMENTATION_BAD)
    + _cases(SpacingAugmentationConfig, SPACING_AUGMENTATION_BAD),
)
def test_a_bad_value_raises_value_error_starting_with_the_field(cls, fields, name):
    with pytest.raises(ValueError) as info:
        cls.from_dict(fields)
    message = str(info.value)
    assert message.startswith(name), message
    assert "\n" not in message


def test_string_booleans_say_how_to_write_them():
    with pytest.raises(ValueError) as info:
        TrainConfig(augment="false")
    assert str(info.value) == (
        "augment must be true or false, got 'false' (a string); write augment: false without quotes."
    )
    with pytest.raises(ValueError, match="write amp: false without quotes"):
        TrainConfig(amp="no")
    with pytest.raises(ValueError, match="write use_scsi: true without quotes"):
        TrainConfig(model_options={"use_scsi": "yes"})


def test_numbers_as_text_int_sizes_and_integral_floats_say_how_to_write_them():
    with pytest.raises(ValueError, match=r"write base_lr: 0.01 without quotes"):
        TrainConfig(base_lr="0.01")
    with pytest.raises(ValueError, match=r"write weight_decay: 0.0001 \(YAML reads 1e-4 as text"):
        TrainConfig(weight_decay="1e-4")
    with pytest.raises(ValueError, match=r"write img_size: \[32, 32\]"):
        TrainConfig(img_size=32)
    with pytest.raises(ValueError, match=r"got 12.0 \(a float\); write epochs: 12"):
        TrainConfig(epochs=12.0)
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(base_lr=NAN)


def test_unknown_keys_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"model_options has unknown keys \['scsi_layers'\]; valid .*'scsi_depth'"):
        TrainConfig(model_options={"scsi_layers": 2})
    with pytest.raises(ValueError, match=r"unknown keys \['mirror_rows_prob'\] for the paper protocol.*'min_ops'"):
        TrainConfig(protocol="paper", augmentation={"mirror_rows_prob": 0.0})
    with pytest.raises(ValueError, match=r"unknown keys \['min_ops'\] for the spacing protocol.*'mirror_rows_prob'"):
        TrainConfig(protocol="spacing", augmentation={"min_ops": 1})
    with pytest.raises(ValueError, match=r"unknown keys \['twirl'\].*\(paper protocol\).*\(spacing protocol\)"):
        TrainConfig(augmentation={"twirl": 1})


def test_valid_nested_settings_pass_as_before():
    # in_channels is a model option training compares with the plan itself.
    assert TrainConfig(model_options={"in_channels": 3, "repeat_gray_to_rgb": True}).model_options["in_channels"] == 3
    # With the protocol left to the plan, the keys of either protocol pass, typed by the settings that know them.
    for settings in (
        {"min_ops": 1},
        {"mirror_rows_prob": 0.0},
        {"blur_sigma": 1.0},
        {"blur_sigma": [0.5, 1.0]},
        {"noise_prob": 0.2, "noise_std": 0.1},
    ):
        assert TrainConfig(augmentation=settings).augmentation == settings
    assert TrainConfig(protocol="paper", augmentation={"blur_sigma": 2.0}).augmentation == {"blur_sigma": 2.0}
    assert TrainConfig(protocol="spacing", augmentation={"shift_range": [-2.0, 2.0]}).augmentation
    # Without augmentation the settings are unused: leftovers of the other protocol do not block a run.
    assert TrainConfig(protocol="paper", augment=False, augmentation={"mirror_rows_prob": 0.0}).augmentation
    # Optional fields keep None.
    config = TrainConfig(
        img_size=None,
        batch_size=None,
        protocol=None,
        context_slices=None,
        max_iterations=None,
        time_limit_minutes=None,
        activation_memory_budget=None,
    )
    assert config.img_size is None and config.batch_size is None
    assert ModelConfig(enlsa_features=None).enlsa_features is None


def test_values_keep_their_types_and_sizes_become_tuples():
    import numpy as np

    config = TrainConfig(img_size=[np.int64(32), 32], batch_size=np.int64(4), base_lr=1, time_limit_minutes=2)
    assert config.img_size == (32, 32) and type(config.img_size[0]) is int
    assert config.base_lr == 1 and type(config.base_lr) is int  # as before: numbers are not converted
    assert TrainConfig(data=Path("somewhere")).data == "somewhere"
    model = ModelConfig(widths=[8, 16, 32, 64, 128], gradient_checkpointing="cnn", scsi_dim=32, scsi_heads=4)
    assert model.widths == (8, 16, 32, 64, 128) and model.gradient_checkpointing == ("cnn",)
    paper = AugmentationConfig(operations=["rotate"], scale_range=[1, 2])
    assert paper.operations == ("rotate",) and paper.scale_range == (1.0, 2.0)
    assert SpacingAugmentationConfig(shift_range=[-1, 1]).shift_range == (-1.0, 1.0)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_round_trips_unchanged(path, tmp_path):
    written = yaml.safe_load(path.read_text())
    config = TrainConfig.from_yaml(path)
    plain = config.to_dict()
    for key, value in written.items():
        assert plain[key] == value, key
    copy = tmp_path / "copy.yaml"
    copy.write_text(yaml.safe_dump(plain))
    assert TrainConfig.from_yaml(copy) == config


def test_every_field_set_round_trips_through_yaml(tmp_path):
    config = TrainConfig(
        data="data",
        output="out",
        model="perspective_unet_tiny",
        protocol="spacing",
        img_size=(64, 96),
        context_slices=1,
        epochs=3,
        batch_size=2,
        base_lr=1e-5,
        momentum=0.0,
        weight_decay=0.0,
        lr_power=2.0,
        optimizer="adamw",
        foreground_sampling_weight=3.0,
        ce_weight=0.0,
        dice_weight=1.0,
        seed=0,  # the smallest seed (negative ones are refused: the data pipeline cannot draw from them)
        num_workers=0,
        device="cpu",
        amp=False,
        grad_accum_steps=2,
        compile=True,
        activation_memory_budget=1.0,
        val_every=0,
        val_split="train",
        fold=2,
        num_folds=3,
        val_batch_size=1,
        augment=True,
        drop_last_batch=False,
        max_iterations=5,
        time_limit_minutes=0.5,
        log_every=1,
        model_options={
            "widths": [8, 16, 32, 64, 128],
            "enltb_depths": [1, 1, 1],
            "enlsa_features": 16,
            "gradient_checkpointing": ["cnn"],
            "use_scsi": False,
            "scsi_dropout": 0.0,
        },
        augmentation={"shift_prob": 0.5, "shift_range": [-2.0, 2.0], "elastic_spacing": 8},
    )
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert TrainConfig.from_yaml(path) == config


@pytest.mark.parametrize("cls", [ModelConfig, AugmentationConfig, SpacingAugmentationConfig])
def test_sub_configs_round_trip(cls):
    changed = {
        ModelConfig: {
            "widths": (8, 16, 32, 64),
            "enlsa_features": 8,
            "gradient_checkpointing": ("cnn", "scsi"),
            "scsi_dim": 32,
            "scsi_heads": 4,
        },
        AugmentationConfig: {
            "operations": ("rotate", "noise"),
            "max_ops": 2,
            "contrast_pivot": 0,
            "before_resize": True,
        },
        SpacingAugmentationConfig: {"blur_sigma": (0.25, 0.5), "elastic_prob": 0.5, "shift_range": (-1.0, 0.0)},
    }[cls]
    config = cls(**changed)
    assert cls.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("cls", "checks"),
    [
        (ModelConfig, "model._MODEL_CHECKS"),
        (TrainConfig, "train._TRAIN_CHECKS"),
        (AugmentationConfig, "augmentation._PAPER_AUGMENTATION_CHECKS"),
        (SpacingAugmentationConfig, "augmentation._SPACING_AUGMENTATION_CHECKS"),
    ],
)
def test_every_field_has_a_check(cls, checks):
    module, name = checks.split(".")
    table = getattr(importlib.import_module(f"perspective_unet.config.{module}"), name)
    assert set(table) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('augment: "false"\n', "augment"),
        ('amp: "no"\n', "amp"),
        ('base_lr: "0.01"\n', "base_lr"),
        ("weight_decay: 1e-4\n", "weight_decay"),
        ("img_size: 32\n", "img_size"),
        ("momentum: 1.0\n", "momentum"),
        ("base_lr: .nan\n", "base_lr"),
        ("model_options: {use_scsi: 'false'}\n", "model_options.use_scsi"),
        ("protocol: paper\naugmentation: {mirror_rows_prob: 0.0}\n", "augmentation"),
    ],
)
def test_cli_refuses_a_bad_yaml_in_one_line_before_writing_anything(tmp_path, capsys, text, field):
    from perspective_unet.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    data = tmp_path / "data"
    data.mkdir()
    output = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--data", str(data), "-o", str(output)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"perspective-unet train: error: {field}"), lines[0]
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "recipe.yaml"]
