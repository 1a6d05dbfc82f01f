"""Own datasets end to end: several input channels (prepare, train, evaluate, predict, model folder, ONNX), a model
trained on partly annotated slices (the ignore label), and inputs that do not fit the model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.config import TrainConfig
from perspective_unet.data.io import read_image
from perspective_unet.data.orientation import to_canonical
from perspective_unet.engine.evaluate import evaluate
from perspective_unet.engine.predict import predict_path
from perspective_unet.engine.train import train
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.plan import Plan
from perspective_unet.runs import LoadedModel, load
from perspective_unet.runtime.inference_settings import InferenceSettings

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
UNIT = IntensitySpec("unit")


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


class SecondChannelOracle(torch.nn.Module):
    """A two-channel 'model' whose class is the nearest of -1, 0, 1 in its SECOND input channel (0, 0.5, 1 before
    (x - 0.5) / 0.5); the first channel is ignored, so swapped channels give other labels."""

    def __init__(self) -> None:
        super().__init__()
        self.centers = torch.nn.Parameter(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2
        return -50.0 * (x[:, 1:2] - self.centers) ** 2


def two_channel_oracle(shape_hw: tuple[int, int]) -> LoadedModel:
    plan = Plan("paper", shape_hw, UNIT, other_channels=(UNIT,))
    return LoadedModel(
        SecondChannelOracle(), InferenceInfo(plan, class_names=("background", "a", "b"), channel_names=("T2", "ADC"))
    )


def write_case(folder: Path, case: str, seed: int, shape=(16, 20, 3)) -> np.ndarray:
    """``<case>_0000`` (noise) and ``<case>_0001`` (the labels / 2); returns the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    save_nifti(folder / f"{case}_0000.nii.gz", rng.uniform(0, 1, shape).astype(np.float32))
    save_nifti(folder / f"{case}_0001.nii.gz", (labels / 2).astype(np.float32))
    return labels


def canonical_hw(path: Path) -> tuple[int, int]:
    array, meta = read_image(path)
    return to_canonical(array, meta).shape[1:]


def test_predict_groups_a_folder_by_case_and_writes_one_map_per_case(tmp_path):
    inputs = tmp_path / "imagesTs"
    expected = {case: write_case(inputs, case, seed) for seed, case in enumerate(("a", "b"))}
    model = two_channel_oracle(canonical_hw(inputs / "a_0000.nii.gz"))
    written = predict_path(model, inputs, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    for path in written:
        np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), expected[path.name[0]])
    # One file of a case given: its sibling channels come from its folder.
    for given in ("b_0000.nii.gz", "b_0001.nii.gz"):
        (out,) = predict_path(model, inputs / given, tmp_path / f"out_{given[:6]}", progress=False)
        assert out.name == "b.nii.gz"
        np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected["b"])


def test_a_case_missing_a_channel_or_without_channel_names_is_refused(tmp_path):
    inputs = tmp_path / "imagesTs"
    write_case(inputs, "a", 0)
    write_case(inputs, "b", 1)
    model = two_channel_oracle(canonical_hw(inputs / "a_0000.nii.gz"))
    (inputs / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"b_0001.nii.gz is missing: case 'b' needs one file per input channel"):
        predict_path(model, inputs, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match=r"b_0001.nii.gz is missing"):
        predict_path(model, inputs / "b_0000.nii.gz", tmp_path / "out", progress=False)
    save_nifti(inputs / "b_0001.nii.gz", np.zeros((16, 20, 3), np.float32))
    save_nifti(inputs / "b_0002.nii.gz", np.zeros((16, 20, 3), np.float32))
    with pytest.raises(InputError, match=r"b_0002.nii.gz is channel 2 but the model reads 2 channels \(T2, ADC\)"):
        predict_path(model, inputs, tmp_path / "out", progress=False)
    plain = save_nifti(tmp_path / "scan.nii.gz", np.zeros((16, 20, 3), np.float32))
    with pytest.raises(InputError, match=r"scan.nii.gz: the model reads 2 input channels \(T2, ADC\)"):
        predict_path(model, plain, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_channel_files_on_different_grids_are_named_one_line_exit_2(tmp_path, capsys):
    inputs = tmp_path / "imagesTs"
    write_case(inputs, "a", 0)
    save_nifti(inputs / "a_0001.nii.gz", np.zeros((16, 20, 3), np.float32), np.diag([1.0, 1.2, 3.0, 1.0]))
    model = two_channel_oracle(canonical_hw(inputs / "a_0000.nii.gz"))
    with pytest.raises(InputError, match=r"a_0001.nii.gz and .*a_0000.nii.gz are channels of one case but differ"):
        predict_path(model, inputs, tmp_path / "out", progress=False)
    checkpoint = _two_channel_checkpoint(tmp_path / "two.pt")
    assert main(["predict", "--checkpoint", str(checkpoint), "-i", str(inputs), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "voxel spacing" in err and "a_0001.nii.gz" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_one_channel_model_refuses_a_case_with_a_second_channel_file(tmp_path):
    inputs = tmp_path / "imagesTs"
    write_case(inputs, "a", 0)
    info = InferenceInfo(Plan("paper", (32, 32), UNIT), class_names=("background", "a"))
    model = LoadedModel(create_model("perspective_unet_tiny", num_classes=2), info)
    with pytest.raises(InputError, match="a_0001.nii.gz and .*a_0000.nii.gz are channels of one case but the model"):
        predict_path(model, inputs, tmp_path / "out", progress=False)


def _two_channel_checkpoint(path: Path, **dataset) -> Path:
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", in_channels=2, num_classes=3)
    with torch.no_grad():  # every class wins somewhere
        model.head.bias.zero_()
        model.head.weight.mul_(1000.0)
    plan = Plan(
        "spacing", (32, 32), UNIT, spacing=(1.0, 1.0), other_channels=(UNIT.replace(scaling="zscore_per_image"),)
    )
    record = {"class_names": ["background", "a", "b"], "modality": "T2+ADC", "intensity": {"kind": "unit"}}
    record["channel_names"] = {"0": "T2", "1": "ADC"}
    return save_model(model, path, plan=plan.to_dict(), dataset={**record, **dataset})


def _predict_two_cases(tmp_path: Path, sources: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    inputs = tmp_path / "imagesTs"
    for seed, case in enumerate(("a", "b")):
        write_case(inputs, case, seed, shape=(40, 36, 3))
    outputs = {}
    for name, source in sources.items():
        written = predict_path(source, inputs, tmp_path / name, InferenceSettings(device="cpu"), progress=False)
        assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"]
        outputs[name] = [np.asarray(nib.load(str(p)).dataobj) for p in written]
    assert len(np.unique(outputs["pt"][0])) > 1
    return outputs


def test_a_two_channel_model_folder_predicts_as_its_checkpoint(tmp_path):
    checkpoint = _two_channel_checkpoint(tmp_path / "run" / "best.pt")
    assert main(["export", str(checkpoint), str(tmp_path / "m"), "--format", "folder"]) == 0
    assert "input channels T2, ADC" in (tmp_path / "m" / "README.md").read_text()
    preprocessing = json.loads((tmp_path / "m" / "preprocessing.json").read_text())
    assert preprocessing["plan"]["other_channels"] == [{"kind": "unit", "scaling": "zscore_per_image"}]
    assert preprocessing["dataset"]["channel_names"] == {"0": "T2", "1": "ADC"}
    loaded = load(tmp_path / "m")
    assert loaded.info.plan.in_channels == 2 and loaded.info.channel_names == ("T2", "ADC")
    outputs = _predict_two_cases(tmp_path, {"pt": checkpoint, "folder": tmp_path / "m"})
    for got, expected in zip(outputs["folder"], outputs["pt"]):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_a_two_channel_onnx_graph_predicts_as_its_checkpoint(tmp_path):
    checkpoint = _two_channel_checkpoint(tmp_path / "run" / "best.pt")
    assert main(["export", str(checkpoint), str(tmp_path / "o.onnx"), "--format", "onnx"]) == 0
    assert load(tmp_path / "o.onnx").info.plan.other_channels == (UNIT.replace(scaling="zscore_per_image"),)
    outputs = _predict_two_cases(tmp_path, {"pt": checkpoint, "onnx": tmp_path / "o.onnx"})
    for got, expected in zip(outputs["onnx"], outputs["pt"]):
        assert (got == expected).mean() > 0.999  # ONNX Runtime's logits agree to 1e-4: ties may flip


def test_evaluating_a_model_on_data_of_other_channels_is_refused(tmp_path):
    from tests.data.test_owndata import write_two_channel_raw

    write_two_channel_raw(tmp_path / "raw", num_cases=4, names=("T2", "ADC"))
    prepare = [
        "prepare",
        "nnunet",
        "-i",
        str(tmp_path / "raw"),
        "-o",
        str(tmp_path / "data"),
        "--test-fraction",
        "0.25",
    ]
    assert main(prepare) == 0
    one = save_model(
        create_model("perspective_unet_tiny", num_classes=2),
        tmp_path / "one.pt",
        plan=Plan("paper", (32, 32), UNIT).to_dict(),
        dataset={"class_names": ["background", "lesion"]},
    )
    with pytest.raises(InputError, match="reads 1 input channel.* holds images of 2"):
        evaluate(one, tmp_path / "data", tmp_path / "eval", progress=False)


def test_training_and_inference_stack_channels_and_context_slices_alike(tmp_path):
    from perspective_unet.data import SliceDataset
    from perspective_unet.data.layouts.detect import open_dataset
    from perspective_unet.runtime.kernels import stack_context
    from tests.data.test_owndata import write_two_channel_raw

    write_two_channel_raw(tmp_path / "raw", num_cases=4, names=("T2", "ADC"))
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "data")]) == 0
    layout = open_dataset(tmp_path / "data")
    slices = SliceDataset(layout, "train", img_size=(10, 12), context_slices=1, intensity=UNIT, other_channels=(UNIT,))
    index = next(i for i, ref in enumerate(slices.samples) if ref.position == 0)  # the case's first slice
    case = slices.samples[index].case
    volume = np.stack([layout.read_slice(ref)[0] for ref in slices.samples if ref.case == case])  # (Z, 2, H, W)
    # Channel-major: T2 below / itself / above (the end slice repeated below), then ADC the same.
    expected = np.stack([volume[0, 0], volume[0, 0], volume[1, 0], volume[0, 1], volume[0, 1], volume[1, 1]])
    stack, _ = slices.load_stack(index)
    np.testing.assert_array_equal(stack, expected)
    np.testing.assert_array_equal(stack_context(volume, 1)[0], expected)
    np.testing.assert_allclose(slices[index]["image"].numpy(), (expected - 0.5) / 0.5, atol=1e-6)


class WindowProbe(torch.nn.Module):
    """Remembers the windows it is given; calls everything background."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


def test_windows_past_a_small_image_are_padded_with_each_channels_floor():
    from perspective_unet.engine.inferers import inferer_for

    plan = Plan(
        "spacing",
        (16, 16),
        IntensitySpec("unit", scaling="zscore", mean=0.5, std=0.25),  # floor (0 - 0.5) / 0.25 = -2
        spacing=(1.0, 1.0),
        other_channels=(UNIT,),  # floor (0 - 0.5) / 0.5 = -1
    )
    volume = np.full((1, 2, 8, 8), 0.75, np.float32)
    probe = WindowProbe()
    inferer_for(plan)(probe, volume, spacing=(1.0, 1.0))
    (window,) = probe.seen
    assert window.shape == (1, 2, 16, 16)
    inside = window[0, :, 4:12, 4:12]
    assert torch.allclose(inside[0], torch.tensor(1.0)) and torch.allclose(inside[1], torch.tensor(0.5))
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:12, 4:12] = False
    assert torch.allclose(window[0, 0][outside], torch.tensor(-2.0))
    assert torch.allclose(window[0, 1][outside], torch.tensor(-1.0))


# ---------------------------------------------------------------- inputs that do not fit the model


class Background(torch.nn.Module):
    """A 'model' that calls every pixel background: what matters here is whether it gets to run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] * 0 + 1, x[:, 0] * 0], dim=1)


SPECS = {
    "ct_window": IntensitySpec("ct_window", window=(-125.0, 275.0)),
    "percentile_minmax": IntensitySpec("percentile_minmax"),
    "picture": IntensitySpec("picture"),
}


def _model_of(kind: str, modality: str) -> LoadedModel:
    plan = Plan("paper", (32, 32), SPECS[kind])
    return LoadedModel(Background(), InferenceInfo(plan, class_names=("background", "a"), modality=modality))


def _picture(tmp_path: Path) -> Path:
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 28)).astype(np.uint8)).save(source)
    return source


def _ct(tmp_path: Path) -> Path:
    volume = np.random.default_rng(0).uniform(-1024, 400, (24, 28, 3)).astype(np.float32)
    volume[0, 0, 0] = -1024
    return save_nifti(tmp_path / "ct.nii.gz", volume)


@pytest.mark.parametrize(
    ("kind", "modality", "make_input", "reason"),
    [
        ("ct_window", "CT", _picture, "an 8-bit picture does not fit a model trained on CT"),
        ("percentile_minmax", "MR", _picture, "an 8-bit picture does not fit a model trained on scans normalized per"),
        ("percentile_minmax", "T2", _ct, "its values reach -1024, Hounsfield units of a CT, which does not fit"),
        (
            "picture",
            "2D",
            _ct,
            "its values reach -1024, Hounsfield units of a CT, which does not fit a model trained on 2D",
        ),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_refused_unless_allowed(tmp_path, kind, modality, make_input, reason):
    source = make_input(tmp_path)
    with pytest.raises(InputError, match=f"{source.name}: {reason}.*--allow-modality-mismatch"):
        predict_path(_model_of(kind, modality), source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    allowed = InferenceSettings(allow_modality_mismatch=True)
    assert len(predict_path(_model_of(kind, modality), source, tmp_path / "out", allowed, progress=False)) == 1


def test_inputs_of_the_models_kind_run_as_before(tmp_path):
    mr = save_nifti(tmp_path / "mr.nii.gz", np.random.default_rng(0).gamma(2, 50, (24, 28, 3)).astype(np.float32))
    for kind, modality, source in (("picture", "2D", _picture(tmp_path)), ("percentile_minmax", "T2", mr)):
        assert len(predict_path(_model_of(kind, modality), source, tmp_path / kind, progress=False)) == 1
    assert len(predict_path(_model_of("ct_window", "CT"), _ct(tmp_path), tmp_path / "ct", progress=False)) == 1


def test_a_picture_into_a_ct_checkpoint_is_one_line_exit_2_and_runs_with_the_flag(tmp_path, capsys):
    intensity = SPECS["ct_window"].to_dict()
    checkpoint = save_model(
        create_model("perspective_unet_tiny", num_classes=2),
        tmp_path / "ct.pt",
        plan={"protocol": "paper", "patch_size": [32, 32], "intensity": intensity},
        dataset={"class_names": ["background", "a"], "modality": "CT", "intensity": intensity},
    )
    args = ["predict", "--checkpoint", str(checkpoint), "-i", str(_picture(tmp_path)), "-o", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "photo.png: an 8-bit picture does not fit a model trained on CT" in err
    assert main([*args, "--allow-modality-mismatch"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo.png"]


# ---------------------------------------------------------------- learning end to end (tiny model, few iterations)


def _tiny_run(data: Path, output: Path) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        output=str(output),
        model="perspective_unet_tiny",
        img_size=(32, 32),
        batch_size=4,
        epochs=100,
        max_iterations=70,
        val_every=0,
        num_workers=0,
        optimizer="adamw",
        base_lr=3e-3,
        augment=False,
        seed=1,
    )


def _squares(rng: np.random.Generator, squares: int, shape=(32, 32, 6)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        for _ in range(squares):
            row, column = rng.integers(1, 24, 2)
            side = rng.integers(5, 9)
            label[row : row + side, column : column + side, z] = 1
    return label


def _write_raw(root: Path, channels: dict[str, str], labels: dict[str, int]) -> None:
    root.mkdir(parents=True)
    info = {"name": "Own", "channel_names": channels, "labels": labels, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(info))


@pytest.mark.slow
def test_a_two_channel_dataset_with_the_signal_in_the_second_channel_is_learned_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    _write_raw(raw, {"0": "T2", "1": "ADC"}, {"background": 0, "lesion": 1})
    rng = np.random.default_rng(0)
    for i in range(9):  # 5 training cases, 2 labeled test cases, 2 cases to predict
        label = _squares(rng, 1)
        noise = rng.gamma(2.0, 50.0, label.shape).astype(np.float32)
        signal = (rng.gamma(2.0, 50.0, label.shape) + 300.0 * label).astype(np.float32)
        images, labels = ("imagesTr", "labelsTr") if i < 5 else ("imagesTs", "labelsTs") if i < 7 else ("new", None)
        save_nifti(raw / images / f"c{i}_0000.nii.gz", noise)
        save_nifti(raw / images / f"c{i}_0001.nii.gz", signal)
        if labels:
            save_nifti(raw / labels / f"c{i}.nii.gz", label)
    dice = {}
    for name, only in (("both", []), ("first", ["--channel", "0"])):
        prepare = ["prepare", "nnunet", "-i", str(raw), "-o", str(tmp_path / name), "--val-fraction", "0", *only]
        assert main(prepare) == 0
        train(_tiny_run(tmp_path / name, tmp_path / f"run_{name}"))
        dice[name] = evaluate(tmp_path / f"run_{name}", tmp_path / name, tmp_path / f"eval_{name}", progress=False)[
            "foreground_mean"
        ]["legacy_Dice"]
    # The second channel holds everything: the model of both channels finds the lesions, the first channel alone not.
    assert dice["both"] > 0.8 and dice["both"] > dice["first"] + 0.5, dice  # about 0.94 and 0.0
    assert load(tmp_path / "run_both").model.config.in_channels == 2
    args = ["predict", "--checkpoint", str(tmp_path / "run_both"), "-i", str(raw / "new"), "-o", str(tmp_path / "p")]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["c7.nii.gz", "c8.nii.gz"]


def _partly_annotated(rng: np.random.Generator, shape=(32, 32, 6)) -> tuple[np.ndarray, np.ndarray]:
    """Three lesions (squares) per slice, and where the last two of them and a pixel around lie: in training they
    carry no annotation."""
    label, unannotated = np.zeros(shape, np.uint8), np.zeros(shape, bool)
    for z in range(shape[2]):
        for k in range(3):
            row, column = rng.integers(1, 24, 2)
            side = rng.integers(5, 9)
            label[row : row + side, column : column + side, z] = 1
            if k:
                unannotated[max(row - 1, 0) : row + side + 1, max(column - 1, 0) : column + side + 1, z] = True
    return label, unannotated


@pytest.mark.slow
def test_a_model_trained_on_partly_annotated_slices_learns_from_the_annotated_voxels_only(tmp_path):
    dice = {}
    for name, unannotated_id in (("ignore", 2), ("background", 0)):
        raw = tmp_path / f"raw_{name}"
        _write_raw(raw, {"0": "MR"}, {"background": 0, "lesion": 1, **({"ignore": 2} if unannotated_id else {})})
        rng = np.random.default_rng(0)
        for i in range(7):  # 5 training cases, 2 test cases annotated everywhere
            label, unannotated = _partly_annotated(rng)
            image = (rng.gamma(2.0, 50.0, label.shape) + 300.0 * label).astype(np.float32)
            images, labels = ("imagesTr", "labelsTr") if i < 5 else ("imagesTs", "labelsTs")
            if i < 5:
                label = np.where(unannotated, unannotated_id, label).astype(np.uint8)
            save_nifti(raw / images / f"c{i}_0000.nii.gz", image)
            save_nifti(raw / labels / f"c{i}.nii.gz", label)
        assert main(["prepare", "nnunet", "-i", str(raw), "-o", str(tmp_path / name), "--val-fraction", "0"]) == 0
        train(_tiny_run(tmp_path / name, tmp_path / f"run_{name}"))
        summary = evaluate(tmp_path / f"run_{name}", tmp_path / name, tmp_path / f"eval_{name}", progress=False)
        dice[name] = summary["foreground_mean"]["legacy_Dice"]
    # Two lesions in three carry no annotation: a model that learns from the annotated voxels only finds every lesion;
    # one that takes the unannotated voxels for background learns that most lesions are background.
    assert dice["ignore"] > 0.8 and dice["ignore"] > dice["background"] + 0.3, dice  # about 0.91 and 0.0
    written = predict_path(
        tmp_path / "run_ignore", tmp_path / "raw_ignore" / "imagesTs", tmp_path / "p", progress=False
    )
    assert all(np.asarray(nib.load(str(p)).dataobj).max() == 1 for p in written)  # lesions, never the ignore label
