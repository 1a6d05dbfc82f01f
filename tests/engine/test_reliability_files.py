"""Hostile and broken files end in one line naming the file (status 2): JSON and YAML that nest 200,000 deep, repeat a
key, or are too large; silent fall-backs (a deleted plan.json, a labels.json of the wrong length, a patch size the
network cannot take); files that named nothing (a label beyond the classes, NaN voxels, a lost dataset.json, a
damaged run.json); and the small ones (a complex NIfTI, empty labels, a negative seed)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.data.io import read_image
from perspective_unet.engine.inference import predict_slices
from perspective_unet.errors import InputError
from perspective_unet.models.pretrained import from_pretrained
from perspective_unet.outputs import MAX_NESTING, parse_json, parse_yaml, read_json, read_yaml
from tests.data.conftest import write_nnunet_raw
from tests.engine.test_reliability import TINY_RUN, one_line_error, scan

DEEP = 200_000


def deep_json(path: Path) -> Path:
    path.write_text("[" * DEEP + "]" * DEEP)
    return path


@pytest.fixture
def data(tiny_dataset, tmp_path) -> Path:
    """A copy of the tiny prepared dataset that a test may damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def predict_args(checkpoint: Path, tmp_path: Path, image: Path | None = None) -> list[str]:
    image = image or scan(tmp_path / "scan.nii.gz")
    return ["predict", "--checkpoint", str(checkpoint), "-i", str(image), "-o", str(tmp_path / "out")]


# The guarded readers -----------------------------------------------------------------------------------------------


def test_the_guarded_readers_refuse_deep_nesting_repeated_keys_and_large_files(tmp_path, monkeypatch):
    deepest_allowed = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert json.dumps(parse_json(deepest_allowed, "x", "fix.")) == deepest_allowed
    with pytest.raises(InputError, match=r"^x: lists or objects nest deeper than 100 levels; fix\.$"):
        parse_json("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "x", "fix.")
    brackets_in_strings = '{"a": "[[[[[[[[[[", "b": [1, {"c": "\\"]]]]"}]}'
    assert parse_json(brackets_in_strings, "x", "fix.") == {"a": "[[[[[[[[[[", "b": [1, {"c": '"]]]]'}]}
    with pytest.raises(InputError, match=r"x: the key 'a' appears twice"):
        parse_json('{"b": {"a": 1, "a": 2}}', "x", "fix.")
    with pytest.raises(InputError, match=r"x: the key 'epochs' appears twice \(line 2"):
        parse_yaml("epochs: 1\nepochs: 2\n", "x", "fix.")
    assert parse_yaml("base: &b {lr: 1}\nrun:\n  <<: *b\n  lr: 2\n", "x", "fix.")["run"] == {"lr": 2}  # a merge key
    with pytest.raises(InputError, match="x: lists or mappings nest deeper than 100 levels"):
        parse_yaml("a: " + "[" * DEEP + "]" * DEEP, "x", "fix.")
    with pytest.raises(InputError, match="not valid YAML"):  # the safe loader: no tag builds a Python object
        parse_yaml("a: !!python/object/apply:os.system ['true']", "x", "fix.")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(InputError, match="latin1.json is not UTF-8 text"):
        read_json(tmp_path / "latin1.json", "fix.")
    monkeypatch.setattr("perspective_unet.outputs.MAX_DOCUMENT_BYTES", 2**20)
    (tmp_path / "big.yaml").write_text("a: [" + "1, " * 2**19 + "1]\n")
    with pytest.raises(InputError, match=r"big.yaml is 2 MB, more than the 1 MB a YAML file read here may hold"):
        read_yaml(tmp_path / "big.yaml", "fix.")


@pytest.mark.parametrize(
    "name", ["plan.json", "dataset.json", "fingerprint.json", "splits.json", "labels.json", "preprocessing.json"]
)
def test_a_json_file_nested_200000_deep_is_one_line_naming_it(name, data, untrained_model_folder, tmp_path, capsys):
    if name in ("labels.json", "preprocessing.json"):
        folder = Path(shutil.copytree(untrained_model_folder, tmp_path / "model"))
        deep_json(folder / name)
        args = predict_args(folder, tmp_path)
    else:
        deep_json(data / name)
        args = ["plan", "-d", str(data)]
        if name == "splits.json":
            args = ["train", "--data", str(data), "-o", str(tmp_path / "run"), "--fold", "0", "--num-folds", "3"]
            args += TINY_RUN
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"{name}: lists or objects nest deeper than 100 levels" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_a_model_folder_config_nested_200000_deep_is_refused_by_from_pretrained_and_predict(
    untrained_model_folder, tmp_path, capsys
):
    folder = Path(shutil.copytree(untrained_model_folder, tmp_path / "model"))
    deep_json(folder / "config.json")
    with pytest.raises(InputError, match=r"config\.json: lists or objects nest deeper than 100 levels"):
        from_pretrained(folder)
    assert main(predict_args(folder, tmp_path)) == 2
    assert "config.json: lists or objects nest deeper" in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["experiment", "train config"])
def test_a_yaml_file_nested_200000_deep_is_one_line_naming_it(kind, tiny_dataset, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("train: " + "[" * DEEP + "]" * DEEP + "\n")
    if kind == "experiment":
        args = ["experiment", "run", str(path), "-o", str(tmp_path / "experiment")]
    else:
        args = ["train", "--config", str(path), "--data", str(tiny_dataset), "-o", str(tmp_path / "run")]
    assert main(args) == 2
    assert "deep.yaml: lists or mappings nest deeper than 100 levels" in one_line_error(capsys)


def test_a_key_given_twice_in_a_config_an_experiment_or_a_plan_is_refused(data, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 1\nbase_lr: 0.01\nepochs: 5\n")  # which epochs would count is a guess
    assert main(["train", "--config", str(config), "--data", str(data), "-o", str(tmp_path / "run")]) == 2
    assert "recipe.yaml: the key 'epochs' appears twice (line 3; keep one)" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(f"name: a\ntrain: {{data: {data}}}\nconfigurations: {{full: {{}}}}\nseeds: [1]\nname: b\n")
    assert main(["experiment", "run", str(experiment), "-o", str(tmp_path / "grid")]) == 2
    assert "experiment.yaml: the key 'name' appears twice (line 5" in one_line_error(capsys)
    plan = (data / "plan.json").read_text()
    (data / "plan.json").write_text(plan.replace('"batch_size": 12,', '"batch_size": 12, "batch_size": 2,'))
    assert main(["plan", "-d", str(data)]) == 2
    assert "plan.json: the key 'batch_size' appears twice" in one_line_error(capsys)


# Silent fall-backs -------------------------------------------------------------------------------------------------


def test_a_deleted_plan_json_is_refused_by_plan_and_train_until_derived_again(data, tmp_path, capsys):
    (data / "plan.json").unlink()
    for args in (["plan", "-d", str(data)], ["train", "--data", str(data), "-o", str(tmp_path / "run"), *TINY_RUN]):
        assert main(args) == 2, args[0]
        err = one_line_error(capsys)
        assert "plan.json is missing" in err and "silently fall back to the paper protocol" in err
        assert f"plan -d {data} --reset" in err
    assert not (tmp_path / "run").exists()
    assert main(["plan", "-d", str(data), "--reset", "--protocol", "paper"]) == 0  # the way out the line names
    assert json.loads((data / "plan.json").read_text())["protocol"] == "paper"


def test_a_folder_that_never_had_a_plan_still_takes_the_paper_plan(data, capsys):
    for name in ("plan.json", "fingerprint.json", "geometry.json", "dataset.json"):  # TransUNet-style files
        (data / name).unlink()
    assert main(["plan", "-d", str(data)]) == 0
    assert "no fingerprint; training uses this plan" in capsys.readouterr().out


def test_a_patch_size_the_network_cannot_take_is_refused_by_plan_naming_plan_json(data, tmp_path, capsys):
    plan = json.loads((data / "plan.json").read_text())
    (data / "plan.json").write_text(json.dumps({**plan, "patch_size": [30, 30]}))
    for args in (
        ["plan", "-d", str(data)],
        ["train", "--data", str(data), "-o", str(tmp_path / "run"), "--epochs", "1"],
    ):
        assert main(args) == 2, args[0]
        err = one_line_error(capsys)
        assert f"{data / 'plan.json'}: patch size 30x30: both sides must be multiples of 16" in err, err
        assert "e.g. 32x32" in err
    assert main(["plan", "-d", str(data), "--patch-size", "40", "40"]) == 2
    assert "--patch-size: patch size 40x40: both sides must be multiples of 16" in one_line_error(capsys)


def test_labels_json_naming_fewer_classes_than_the_model_is_refused(untrained_model_folder, tmp_path, capsys):
    folder = Path(shutil.copytree(untrained_model_folder, tmp_path / "model"))
    labels = json.loads((folder / "labels.json").read_text())
    del labels["2"]
    (folder / "labels.json").write_text(json.dumps(labels))
    assert main(predict_args(folder, tmp_path)) == 2
    err = one_line_error(capsys)
    assert f"{folder / 'labels.json'} names 2 classes but its model has 3" in err
    assert not (tmp_path / "out").exists()
    two_names = {"class_names": ["background", "square"]}
    checkpoint = save_model(create_model("perspective_unet_tiny", num_classes=3), tmp_path / "m.pt", dataset=two_names)
    assert main(predict_args(checkpoint, tmp_path)) == 2  # a checkpoint's record is held to the same rule
    assert f"{checkpoint} names 2 classes but its model has 3" in one_line_error(capsys)


# Files named -------------------------------------------------------------------------------------------------------


def _edit_first_test_volume(data: Path, key: str, change) -> Path:
    path = sorted((data / "test_vol_h5").glob("*.h5"))[0]
    with h5py.File(path, "r+") as handle:
        values = handle[key][()]
        change(values)
        del handle[key]
        handle[key] = values
    return path


def test_evaluate_names_the_file_and_case_of_a_label_beyond_the_classes(data, untrained_model_folder, tmp_path, capsys):
    path = _edit_first_test_volume(data, "label", lambda label: label.__setitem__((0, 0, 0), 9))
    args = ["evaluate", "--checkpoint", str(untrained_model_folder), "--data", str(data), "-o", str(tmp_path / "eval")]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"{path} (case 'case0004') holds label values [9] beyond the declared classes [0, 1, 2]" in err
    assert not (tmp_path / "eval").exists()


def test_nan_in_an_image_is_blamed_on_the_image_not_the_weights(data, untrained_model_folder, tmp_path, capsys):
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    image[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    assert main(predict_args(untrained_model_folder, tmp_path, tmp_path / "nan.nii.gz")) == 2
    err = one_line_error(capsys)
    assert err.count("nan.nii.gz") == 1 and "contains NaN or infinite voxels" in err and "weights" not in err
    path = _edit_first_test_volume(data, "image", lambda volume: volume.__setitem__((1, 2, 3), np.inf))
    assert (
        main(["evaluate", "--checkpoint", str(untrained_model_folder), "--data", str(data), "-o", str(tmp_path / "e")])
        == 2
    )
    err = one_line_error(capsys)
    assert f"{path} (case 'case0004') holds 1 NaN or infinite voxels" in err and "weights" not in err


def test_non_finite_network_input_is_told_apart_from_damaged_weights():
    model = create_model("perspective_unet_tiny", num_classes=2).eval()
    images = torch.zeros(1, 1, 32, 32)
    images[0, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match="network input holds NaN or infinite values") as caught:
        predict_slices(model, images)
    assert "weights" not in str(caught.value)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(InputError, match="from a finite input; its weights are damaged"):
        predict_slices(model, torch.zeros(1, 1, 32, 32))


def test_a_prepared_folder_without_dataset_json_names_the_missing_file(data, untrained_model_folder, tmp_path, capsys):
    (data / "dataset.json").unlink()
    for args in (
        ["evaluate", "--checkpoint", str(untrained_model_folder), "--data", str(data), "-o", str(tmp_path / "eval")],
        ["train", "--data", str(data), "-o", str(tmp_path / "run"), *TINY_RUN],
        ["plan", "-d", str(data)],
    ):
        assert main(args) == 2, args[0]
        err = one_line_error(capsys)
        assert f"{data / 'dataset.json'} is missing, but the folder holds fingerprint.json" in err
        assert "has 9" not in err  # not the Synapse files' class count


def test_a_corrupt_run_json_of_an_experiment_names_the_file(tiny_dataset, tmp_path, capsys):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"name: t\ntrain: {{data: {tiny_dataset}, model: perspective_unet_tiny, epochs: 1}}\n"
        "configurations: {full: {}}\nseeds: [1]\n"
    )
    run = tmp_path / "grid" / "full" / "seed_1"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"epochs": 1')
    # Checked before anything runs: one line, exit status 2.
    assert main(["experiment", "run", str(experiment), "-o", str(tmp_path / "grid")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and f"{run / 'run.json'} is not valid JSON" in err and "move the folder away" in err
    )
    assert not (run / "last.pt").exists()


# Small ones --------------------------------------------------------------------------------------------------------


def test_a_complex_valued_nifti_is_refused_with_one_line(untrained_model_folder, tmp_path, capsys):
    values = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)) * (1 + 1j)
    nib.save(nib.Nifti1Image(values.astype(np.complex64), np.eye(4)), str(tmp_path / "complex.nii.gz"))
    with pytest.raises(InputError, match="complex.nii.gz holds complex values of type complex64"):
        read_image(tmp_path / "complex.nii.gz")
    assert main(predict_args(untrained_model_folder, tmp_path, tmp_path / "complex.nii.gz")) == 2
    assert "convert the image to its magnitude" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_dataset_whose_labels_are_all_background_warns_at_prepare(tmp_path, caplog):
    write_nnunet_raw(tmp_path / "raw")
    for path in (tmp_path / "raw" / "labelsTr").glob("*.nii.gz"):
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), str(path))
    with caplog.at_level(logging.WARNING):
        assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 0
    assert f"{tmp_path / 'raw'}: every training label is empty (background only)" in caplog.text


def test_a_negative_seed_names_the_option_or_the_field(tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(tiny_dataset), "-o", str(tmp_path / "run"), "--seed", "-5"])
    assert exited.value.code == 2
    assert "argument --seed: expected an integer >= 0 (seeds are not negative), got -5" in one_line_error(capsys)
    config = tmp_path / "recipe.yaml"
    config.write_text("seed: -5\n")
    assert main(["train", "--config", str(config), "--data", str(tiny_dataset), "-o", str(tmp_path / "run")]) == 2
    assert "seed must be an integer >= 0, got -5" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
