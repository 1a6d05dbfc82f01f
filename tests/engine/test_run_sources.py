"""Commands on run folders and settings: a fold_all run predicts, a resume reads last.pt once, settings pass whole."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.engine import inferers
from perspective_unet.engine.evaluate import evaluate
from perspective_unet.engine.predict import predict_path
from perspective_unet.intensity import IntensitySpec
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings

TINY_RUN = ["--model", "perspective_unet_tiny", "--img-size", "32", "32", "--batch-size", "4", "--num-workers", "0"]


def _scan(path: Path) -> Path:
    volume = np.random.default_rng(0).uniform(-150, 300, (40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 3.0, 1.0])), str(path))
    return path


def test_a_fold_all_run_is_what_its_folder_of_fold_runs_predicts_with(tiny_dataset, tmp_path, caplog):
    out = tmp_path / "cv"
    train = ["train", "--data", str(tiny_dataset), "-o", str(out), "--fold", "all", "--num-folds", "3"]
    assert main([*train, "--epochs", "1", *TINY_RUN]) == 0
    assert (out / "fold_all" / "last.pt").is_file() and not (out / "last.pt").exists()
    scan = _scan(tmp_path / "scan.nii.gz")
    with caplog.at_level(logging.INFO, logger="perspective_unet.runs"):
        assert main(["predict", "--checkpoint", str(out), "-i", str(scan), "-o", str(tmp_path / "pred")]) == 0
    assert f"{out} holds only fold_all" in caplog.text
    labels = nib.load(str(tmp_path / "pred" / "scan.nii.gz"))
    assert labels.shape == (40, 36, 3)


def test_a_resumed_run_reads_its_last_checkpoint_once(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "-o", str(out), "--epochs", "1", "--val-every", "1", *TINY_RUN]
    assert main(args) == 0
    last = out / "last.pt"
    reads: list[Path] = []
    real_load = torch.load

    def counting_load(path, *a, **k):
        reads.append(Path(path))
        return real_load(path, *a, **k)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["train", "--resume", str(last), "--epochs", "2"]) == 0
    assert reads.count(last) == 1, reads
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["epoch"] == 2


@pytest.fixture
def paper_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    plan = Plan("paper", (32, 32), IntensitySpec("ct_window", window=(-125.0, 275.0)))
    return save_model(model, tmp_path / "paper.pt", plan=plan.to_dict(), dataset={"class_names": ["a", "b", "c"]})


def test_the_settings_reach_the_protocol_whole(paper_checkpoint, tiny_dataset, tmp_path, monkeypatch):
    seen: list[tuple[tuple[int, int], InferenceSettings]] = []
    real = inferers.predict_volume

    def spy(model, volume, img_size, settings, **options):
        seen.append((tuple(img_size), settings))
        return real(model, volume, img_size, settings, **options)

    monkeypatch.setattr(inferers, "predict_volume", spy)
    settings = InferenceSettings(batch_size=3, tta=True, resampler="scipy", device="cpu", patch_size=(48, 48))
    scan = _scan(tmp_path / "scan.nii.gz")
    predict_path(paper_checkpoint, scan, tmp_path / "pred", settings, progress=False)
    evaluate(paper_checkpoint, tiny_dataset, tmp_path / "eval", settings, progress=False)
    assert len(seen) == 3 and all(s is settings and size == (48, 48) for size, s in seen)  # 1 scan + 2 test cases
    seen.clear()
    options = [
        "--batch-size",
        "5",
        "--tta",
        "--resampler",
        "scipy",
        "--img-size",
        "64",
        "32",
        "--window",
        "-100",
        "200",
    ]
    out = str(tmp_path / "cli")
    assert main(["predict", "--checkpoint", str(paper_checkpoint), "-i", str(scan), "-o", out, *options]) == 0
    (size, given), *_ = seen
    assert size == (64, 32) and given.window == (-100.0, 200.0)
    assert (given.batch_size, given.tta, given.resampler, given.patch_size) == (5, True, "scipy", (64, 32))


def test_settings_refuse_bad_values_and_override_the_plan():
    for bad, match in (
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"resampler": "cubic"}, "resampler must be one of"),
        ({"overlap": 1.0}, r"overlap must lie in \[0, 1\)"),
        ({"window": (10, -10)}, "LOW < HIGH"),
        ({"window": (0, 1), "mr_normalize": True}, "not both"),
        ({"patch_size": (32,)}, "patch_size must be a pair"),
    ):
        with pytest.raises(ValueError, match=match):
            InferenceSettings(**bad)
    plan = Plan("spacing", (64, 64), IntensitySpec("unit"), spacing=(1.0, 1.0))
    changed = InferenceSettings(patch_size=(32, 48), overlap=0.25).plan_for(plan)
    assert (changed.patch_size, changed.overlap, changed.spacing) == ((32, 48), 0.25, (1.0, 1.0))
    assert InferenceSettings().plan_for(plan) is plan
    assert type(inferers.inferer_for(plan)).__name__ == "SpacingInferer"
