"""Run folders and the one loader: every kind of model source gives the same model and what inference needs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from perspective_unet import InputError, create_model, save_model
from perspective_unet.export.folder import export_folder
from perspective_unet.export.onnx import export_onnx
from perspective_unet.models.ensemble import ProbabilityEnsemble
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.official import is_official_state_dict
from perspective_unet.models.onnx_runtime import OnnxRuntimeModel
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.plan import Plan
from perspective_unet.runs import RunFolder, load, model_sources

PLAN = {"protocol": "spacing", "patch_size": [32, 32], "spacing": [1.0, 1.0], "intensity": {"kind": "unit"}}
DATASET = {
    "name": "tiny",
    "class_names": ["background", "square", "disc"],
    "modality": "CT",
    "normalization": "synthetic",
    "intensity": {"kind": "ct_window", "window": [-125.0, 275.0]},
    "orientation": "SPL",
}


def _checkpoint(path: Path, seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    model = create_model("perspective_unet_tiny", num_classes=3)
    fields = {"plan": PLAN, "dataset": DATASET, "epoch": 7, "train_config": {"seed": seed}, **extra}
    return save_model(model, path, **fields)


def _logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return _checkpoint(tmp_path / "run" / "last.pt")


# --------------------------------------------------------------------------------------------------------------------
# The run folder's layout
# --------------------------------------------------------------------------------------------------------------------


def test_a_run_folder_names_its_files_and_chooses_best_over_last(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert (run.last.name, run.best.name, run.config.name, run.train_log.name) == (
        "last.pt",
        "best.pt",
        "config.json",
        "train_log.csv",
    )
    assert run.validation_summary == tmp_path / "run" / "validation" / "summary.json"
    assert (run.training_log.name, run.progress.name, run.tensorboard.name) == (
        "training_log.txt",
        "progress.png",
        "tensorboard",
    )
    assert run.checkpoint() is None and run.results() == []
    _checkpoint(run.last)
    assert run.checkpoint() == run.last
    _checkpoint(run.best)
    assert run.checkpoint() == run.best and run.results() == [run.last, run.best]


def test_fold_runs_come_in_fold_order_without_fold_all(tmp_path):
    root = RunFolder(tmp_path)
    for name in ("fold_10", "fold_2", "fold_all", "fold_x", "notes"):
        (tmp_path / name).mkdir()
    assert [f.path.name for f in root.fold_runs()] == ["fold_2", "fold_10"]  # by number, not by text
    assert root.fold(3).path == tmp_path / "fold_3" and root.fold_all.path == tmp_path / "fold_all"
    assert RunFolder(tmp_path / "missing").fold_runs() == []


# --------------------------------------------------------------------------------------------------------------------
# load(): one path for every kind of source
# --------------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_loads_with_its_typed_inference_info(checkpoint):
    loaded = load(checkpoint)
    assert isinstance(loaded.model, PerspectiveUNet) and not loaded.model.training
    info = loaded.info
    assert info.plan == Plan.from_dict(PLAN) and info.img_size == (32, 32)
    assert info.class_names == ("background", "square", "disc") and info.orientation == "SPL"
    assert info.intensity is not None and info.intensity.window == (-125.0, 275.0)
    assert (info.epoch, dict(info.train_config), loaded.sources) == (7, {"seed": 0}, [checkpoint])
    reference = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in reference.items())


def test_a_checkpoint_file_is_read_once(checkpoint, monkeypatch):
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(Path(path)) or real_load(path, *a, **k))
    load(checkpoint)
    assert reads == [checkpoint]


def test_a_run_folder_stands_for_its_checkpoint(checkpoint):
    run = checkpoint.parent
    assert model_sources(run) == [checkpoint], "no best.pt: the last epoch"
    best = _checkpoint(run / "best.pt", seed=1)
    loaded = load(run)
    assert loaded.sources == [best]
    saved = torch.load(best, weights_only=True)["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in saved.items())


def test_a_fold_folder_is_the_ensemble_of_its_folds_and_fold_all_alone_stands_for_itself(tmp_path, caplog):
    root = tmp_path / "cv"
    every = _checkpoint(root / "fold_all" / "last.pt", seed=9)
    with caplog.at_level(logging.INFO, logger="perspective_unet.runs"):
        assert model_sources(root) == [every]
    assert "holds only fold_all" in caplog.text
    caplog.clear()
    folds = [_checkpoint(root / f"fold_{k}" / "best.pt", seed=k) for k in range(2)]
    with caplog.at_level(logging.INFO, logger="perspective_unet.runs"):
        loaded = load(root)
    assert loaded.sources == folds and isinstance(loaded.model, ProbabilityEnsemble)
    assert "ensemble of its 2 fold runs (fold_0, fold_1)" in caplog.text and "fold_all left out" in caplog.text
    for member, fold in zip(loaded.model.members, folds):
        saved = torch.load(fold, weights_only=True)["model"]
        assert all(torch.equal(member.state_dict()[k], v) for k, v in saved.items())


def test_a_model_folder_loads_the_same_model_and_info(checkpoint, tmp_path):
    folder = export_folder(checkpoint, tmp_path / "model")
    from_folder, from_file = load(folder), load(checkpoint)
    torch.testing.assert_close(_logits(from_folder.model), _logits(from_file.model), rtol=0, atol=0)
    assert from_folder.sources == [folder]
    kept = ("plan", "img_size", "class_names", "modality", "intensity", "normalization", "orientation")
    for name in kept:
        assert getattr(from_folder.info, name) == getattr(from_file.info, name), name


def test_an_onnx_file_loads_as_an_onnx_runtime_module(checkpoint, tmp_path):
    path = tmp_path / "onnx" / "model.onnx"
    export_onnx(checkpoint, path, check_shapes=[(1, 1, 32, 32)])
    loaded = load(path, device="cpu")
    assert isinstance(loaded.model, OnnxRuntimeModel) and loaded.sources == [path]
    assert loaded.info.plan == Plan.from_dict(PLAN) and loaded.info.class_names == ("background", "square", "disc")
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load(checkpoint).model(x)
    torch.testing.assert_close(loaded.model(x), expected, atol=1e-4 * float(expected.abs().max()), rtol=0)


def test_a_list_of_sources_is_their_ensemble_and_disagreeing_members_are_named(checkpoint, tmp_path):
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    loaded = load([checkpoint, other])
    assert isinstance(loaded.model, ProbabilityEnsemble) and loaded.sources == [checkpoint, other]
    assert loaded.info.epoch == 7 and loaded.info.plan == Plan.from_dict(PLAN)
    wider = _checkpoint(tmp_path / "wider.pt", plan={**PLAN, "patch_size": [48, 48]})
    with pytest.raises(InputError, match=r"wider\.pt differs from .*last\.pt in its plan"):
        load([checkpoint, wider])


def test_sources_that_hold_no_model_are_named(tmp_path):
    with pytest.raises(InputError, match="no checkpoint given"):
        model_sources([])
    with pytest.raises(InputError, match="missing does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no best.pt, last.pt or fold_"):
        load(tmp_path / "empty")
    (tmp_path / "cv" / "fold_0").mkdir(parents=True)
    with pytest.raises(InputError, match=r"fold runs \['fold_0'\] have no best.pt"):
        load(tmp_path / "cv")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a perspective-unet checkpoint"):
        load(tmp_path / "foreign.pt")


def test_an_inconsistent_plan_is_refused_at_load(tmp_path):
    path = _checkpoint(tmp_path / "m.pt", plan={**PLAN, "context_slices": 1})  # 3 channels, a 1-channel model
    with pytest.raises(InputError, match=r"m\.pt: its plan gives 3 input channel"):
        load(path)


def test_released_state_dicts_are_recognized_by_their_module_names():
    assert is_official_state_dict({"module.segmentation_head.0.weight": torch.zeros(9, 16, 1, 1)})
    assert is_official_state_dict({"state_dict": {"encoder.Encoder1.layers.0.resblock.0.weight": torch.zeros(1)}})
    model = create_model("perspective_unet_tiny", num_classes=3)
    assert not is_official_state_dict(model.state_dict())
    assert not is_official_state_dict({"format": "perspective-unet", "epoch": 3})


@pytest.mark.slow
def test_a_released_checkpoint_loads_as_the_released_network(tmp_path):
    from tests.models.test_official import _released_state_dict

    path = tmp_path / "epoch_599.pth"
    torch.save({"state_dict": _released_state_dict()}, path)
    loaded = load(path)
    assert isinstance(loaded.model, PerspectiveUNet) and loaded.sources == [path]
    assert loaded.model.config.repeat_gray_to_rgb and loaded.model.config.num_classes == 9
    assert loaded.info == InferenceInfo(sources=(path,)), "nothing recorded: the paper protocol and the CT fallback"
    with np.load(Path(__file__).parent / "fixtures" / "official_compat" / "expected_logits.npz") as expected:
        x1 = torch.rand((1, 1, 224, 224), generator=torch.Generator().manual_seed(1234))
        with torch.no_grad():
            logits = loaded.model(x1)
        reference = torch.from_numpy(expected["x1_logits"])
    assert (logits - reference).abs().max() <= 1e-4 * reference.abs().max()
