"""Inference with a plan: sliding windows, resampling back to the input grid, scale invariance, 2.5D, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perspective_unet import create_model
from perspective_unet.cli import main
from perspective_unet.engine.inference import predict_slices
from perspective_unet.engine.inferers import inferer_for
from perspective_unet.engine.predict import predict_path
from perspective_unet.engine.sliding_window import predict_at_spacing
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.plan import Plan
from perspective_unet.runs import LoadedModel
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.kernels import stack_context

WINDOW = IntensitySpec("ct_window", window=(-100.0, 300.0))


class OpeningModel(torch.nn.Module):
    """A fixed, scale-sensitive segmenter: bright pixels that a k x k square fits into (a morphological opening).

    Objects too small for the square vanish, so its output depends on the pixel size of its input: exactly what the
    spacing protocol has to keep constant.
    """

    def __init__(self, kernel: int = 9) -> None:
        super().__init__()
        self.kernel = kernel
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x[:, :1] > 0).float()
        k = self.kernel
        eroded = -F.max_pool2d(-bright, k, stride=1, padding=k // 2)
        opened = F.max_pool2d(eroded, k, stride=1, padding=k // 2)
        return torch.cat([1 - opened, opened], dim=1) * 10.0


def disc_scan(path: Path, spacing: float, size: int, depth: int = 2) -> Path:
    """A CT-like volume (x, y, z) with one 50 mm disc of 200 HU centered at (56, 56) mm, on air, at ``spacing``."""
    centers = np.arange(size) * spacing
    xx, yy = np.meshgrid(centers, centers, indexing="ij")
    disc = (xx - 56.0) ** 2 + (yy - 56.0) ** 2 <= 25.0**2
    image = np.where(disc, 200.0, -1000.0).astype(np.float32)[..., None].repeat(depth, axis=2)
    nib.save(nib.Nifti1Image(image, np.diag([spacing, spacing, 3.0, 1.0])), str(path))
    return path


def plan_info(protocol: str, patch: tuple[int, int] = (64, 64)) -> InferenceInfo:
    spacing = (1.0, 1.0) if protocol == "spacing" else None
    return InferenceInfo(
        Plan(protocol, patch, WINDOW, spacing=spacing), class_names=("background", "disc"), orientation="SPL"
    )


def foreground_dice(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """Dice of class 1 between a label map and a coarser one brought onto its grid (same origin, ``factor`` times
    the pixel size) by nearest neighbor."""
    index = np.minimum(np.round(np.arange(fine.shape[0]) / factor), coarse.shape[0] - 1).astype(int)
    resampled = coarse[index][:, index]
    a, b = fine[..., 0] == 1, resampled[..., 0] == 1
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_the_same_phantom_at_two_spacings_gives_the_same_labels(tmp_path):
    fine = disc_scan(tmp_path / "fine.nii.gz", 1.0, 112)  # 112 mm field of view
    coarse = disc_scan(tmp_path / "coarse.nii.gz", 2.0, 160)  # 320 mm field of view
    results = {}
    for protocol in ("spacing", "paper"):
        out = tmp_path / protocol
        predict_path(LoadedModel(OpeningModel(), plan_info(protocol)), [fine, coarse], out, progress=False)
        labels = {name: np.asarray(nib.load(str(out / f"{name}.nii.gz")).dataobj) for name in ("fine", "coarse")}
        assert labels["fine"].shape == (112, 112, 2) and labels["coarse"].shape == (160, 160, 2)
        results[protocol] = foreground_dice(labels["fine"], labels["coarse"], 2)
    assert results["spacing"] >= 0.95
    # Zoomed to one size, the coarse scan's pixels are 5 mm and the disc no longer holds the model's 45 mm square.
    assert results["paper"] < 0.5


def test_labels_keep_the_input_geometry_through_resampling(tmp_path):
    source = tmp_path / "scan.nii.gz"
    image = np.full((50, 37, 3), -1000.0, np.float32)
    image[10:30, 5:25] = 200.0
    affine = np.array([[0.0, -0.7, 0.0, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(image, affine), str(source))
    written = predict_path(
        LoadedModel(OpeningModel(kernel=3), plan_info("spacing", (32, 32))),
        source,
        tmp_path / "out",
        InferenceSettings(save_probabilities=True),
        progress=False,
    )[0]
    result = nib.load(str(written))
    assert result.shape == image.shape
    np.testing.assert_array_equal(result.affine, nib.load(str(source)).affine)  # exactly the input's (float32) affine
    labels = np.asarray(result.dataobj)
    inside = labels[12:28, 7:23] == 1
    assert inside.mean() > 0.95 and (labels[40:, 30:] == 0).all()
    probabilities = nib.load(str(tmp_path / "out" / "scan_probabilities.nii.gz"))
    assert probabilities.shape == (*image.shape, 2)


def test_one_window_covering_the_slice_equals_whole_slice_inference():
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3).eval()
    volume = torch.randn(2, 1, 48, 64)
    plan = Plan("spacing", (48, 64), IntensitySpec("unit"), spacing=(1.0, 1.0))
    labels, probabilities = predict_at_spacing(
        model, volume, (1.0, 1.0), plan, pad_value=-1.0, return_probabilities=True
    )
    with torch.inference_mode():
        whole = predict_slices(model, volume)
    np.testing.assert_allclose(probabilities.transpose(1, 0, 2, 3), whole.numpy(), atol=2e-3)  # float16 storage
    np.testing.assert_array_equal(labels, whole.argmax(1).numpy())


def test_windows_cover_images_larger_and_smaller_than_the_patch():
    model = OpeningModel(kernel=3)
    plan = Plan("spacing", (32, 32), IntensitySpec("unit"), spacing=(1.0, 1.0))
    for size in ((20, 27), (75, 41)):
        volume = torch.full((1, 1, *size), -1.0)
        volume[0, 0, 5:15, 5:15] = 1.0
        labels = predict_at_spacing(model, volume, (1.0, 1.0), plan, pad_value=-1.0)
        assert labels.shape == (1, *size)
        np.testing.assert_array_equal(labels[0], (volume[0, 0] > 0).numpy().astype(np.uint8))


def test_stack_context_repeats_the_end_slices():
    volume = np.broadcast_to(np.arange(4.0)[:, None, None], (4, 2, 2))
    stacked = stack_context(volume, 2)
    assert tuple(stacked.shape) == (4, 5, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


class ChannelProbe(torch.nn.Module):
    """Predicts class 1 where the slice above equals the slice itself (needs 3 input channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3
        repeated = (x[:, 2:3] == x[:, 1:2]).float()
        return torch.cat([1 - repeated, repeated], dim=1)


def test_context_slices_reach_the_model_in_order():
    volume = np.stack([np.full((16, 16), z / 10, np.float32) for z in range(5)])
    plan = Plan("spacing", (16, 16), IntensitySpec("unit"), spacing=(1.0, 1.0), context_slices=1)
    labels = inferer_for(plan)(ChannelProbe(), volume, spacing=(1.0, 1.0))
    # Only the top slice has itself above (the end slice repeated); reversed channels would mark the bottom one.
    assert labels[:, 0, 0].tolist() == [0, 0, 0, 0, 1]


def test_a_model_reading_more_slices_than_the_input_has_is_refused(tmp_path):
    plan = Plan("spacing", (16, 16), IntensitySpec("unit"), spacing=(1.0, 1.0), context_slices=2)
    with pytest.raises(InputError, match="reads 5 neighboring slices.*has 3"):
        inferer_for(plan)(ChannelProbe(), np.zeros((3, 16, 16), np.float32), spacing=(1.0, 1.0))
    picture = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(picture)
    info = InferenceInfo(plan, class_names=("background", "a"))
    with pytest.raises(InputError, match="photo.png.*reads 5 neighboring slices"):
        predict_path(LoadedModel(ChannelProbe(), info), picture, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_spacing_protocol_without_the_images_spacing_is_refused():
    plan = Plan("spacing", (16, 16), IntensitySpec("unit"), spacing=(1.0, 1.0))
    with pytest.raises(InputError, match="spacing is unknown"):
        inferer_for(plan)(OpeningModel(), np.zeros((1, 16, 16), np.float32), spacing=None)


def train_args(data: Path, out: Path, protocol: str, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "-o",
        str(out),
        "--protocol",
        protocol,
        "--model",
        "perspective_unet_tiny",
        "--img-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--val-every",
        "1",
        *extra,
    ]


@pytest.mark.parametrize("protocol, extra", [("spacing", ()), ("paper", ()), ("spacing", ("--context-slices", "1"))])
def test_both_protocols_train_evaluate_and_predict_end_to_end(tiny_dataset, tmp_path, protocol, extra):
    run = tmp_path / "run"
    assert main(train_args(tiny_dataset, run, protocol, *extra)) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    plan = Plan.from_dict(state["plan"])
    assert plan.protocol == protocol and plan.patch_size == (32, 32)
    assert state["model_config"]["in_channels"] == plan.in_channels == (3 if extra else 1)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "last.pt"),
                "--data",
                str(tiny_dataset),
                "-o",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["plan"]["protocol"] == protocol and 0.0 <= summary["foreground_mean"]["legacy_Dice"] <= 1.0
    scan = tmp_path / "scan.nii.gz"
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).uniform(-200, 300, (40, 30, 4)).astype(np.float32), np.diag([0.7, 0.7, 2.0, 1.0])
        ),
        str(scan),
    )
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "-i", str(scan), "-o", str(tmp_path / "pred")]) == 0
    assert nib.load(str(tmp_path / "pred" / "scan.nii.gz")).shape == (40, 30, 4)
    volume = next((tiny_dataset / "test_vol_h5").glob("*.npy.h5"))
    for kind, extra_args in (("overlay", ["--num-slices", "2"]), ("features", ["--layer", "scsi"])):
        figure = tmp_path / f"{kind}.png"
        assert (
            main(
                [
                    "visualize",
                    kind,
                    "--checkpoint",
                    str(run / "last.pt"),
                    "--image",
                    str(volume),
                    "-o",
                    str(figure),
                    *extra_args,
                ]
            )
            == 0
        )
        assert figure.stat().st_size > 0


def test_training_refuses_a_patch_larger_than_every_slice(tiny_dataset, tmp_path, capsys):
    args = train_args(tiny_dataset, tmp_path / "run", "spacing")
    args[args.index("--img-size") + 1 : args.index("--img-size") + 3] = ["128", "128"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "larger than every training slice" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_training_on_a_plan_edited_into_an_invalid_state_names_the_file(tiny_dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    plan = json.loads((data / "plan.json").read_text())
    plan["context_slices"] = -2
    (data / "plan.json").write_text(json.dumps(plan))
    assert main(train_args(data, tmp_path / "run", "paper")) == 2
    err = capsys.readouterr().err
    assert "plan.json" in err and "context_slices" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_plan_and_model_disagree_on_channels_is_refused(tmp_path, capsys):
    from perspective_unet import save_model

    model = create_model("perspective_unet_tiny", num_classes=2, in_channels=1)
    plan = Plan("spacing", (32, 32), WINDOW, spacing=(1.0, 1.0), context_slices=1)
    checkpoint = save_model(model, tmp_path / "odd.pt", plan=plan.to_dict())
    scan = disc_scan(tmp_path / "scan.nii.gz", 1.0, 32)
    assert main(["predict", "--checkpoint", str(checkpoint), "-i", str(scan), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "odd.pt" in err and "3 input channel(s)" in err and "takes 1" in err
    assert not (tmp_path / "out").exists()
