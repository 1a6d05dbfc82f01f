"""Ensembles: the mean of the members' probabilities, members that must agree, checkpoints found in run folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perspective_unet import InputError, create_model, save_model
from perspective_unet.engine.predictor import Predictor
from perspective_unet.models.ensemble import ProbabilityEnsemble
from perspective_unet.plan import Plan
from perspective_unet.runs import load, model_sources

PLAN = {"protocol": "paper", "patch_size": [32, 32], "intensity": {"kind": "unit"}}
DATASET = {"class_names": ["background", "square", "disc"]}


def _checkpoint(path, seed, *, num_classes=3, plan=PLAN, dataset=DATASET):
    torch.manual_seed(seed)
    model = create_model("perspective_unet_tiny", num_classes=num_classes)
    return save_model(model, path, plan=plan, dataset=dataset)


def _probabilities(checkpoints, volume):
    predictor = Predictor.from_source(checkpoints)
    return predictor.predict_canonical(volume, return_probabilities=True)


@pytest.fixture
def volume():
    return np.random.default_rng(0).random((2, 40, 36)).astype(np.float32)


def test_an_ensemble_of_one_checkpoint_twice_equals_the_checkpoint(tmp_path, volume):
    path = _checkpoint(tmp_path / "a.pt", 0)
    labels, probabilities = _probabilities(path, volume)
    twice_labels, twice_probabilities = _probabilities([path, path], volume)
    np.testing.assert_array_equal(twice_labels, labels)
    np.testing.assert_allclose(twice_probabilities.astype(np.float32), probabilities.astype(np.float32), atol=1e-3)


def test_an_ensemble_of_two_checkpoints_gives_the_mean_of_their_probabilities(tmp_path, volume):
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    _, pa = _probabilities(a, volume)
    _, pb = _probabilities(b, volume)
    labels, mean = _probabilities([a, b], volume)
    expected = (pa.astype(np.float32) + pb.astype(np.float32)) / 2
    assert np.abs(pa.astype(np.float32) - pb.astype(np.float32)).max() > 1e-2, "the members differ"
    np.testing.assert_allclose(mean.astype(np.float32), expected, atol=2e-3)  # float16 probability maps
    assert (labels == expected.argmax(0)).mean() > 0.99


def test_the_ensemble_module_is_the_log_of_the_mean_softmax():
    torch.manual_seed(0)
    members = [create_model("perspective_unet_tiny", num_classes=4).eval() for _ in range(3)]
    ensemble = ProbabilityEnsemble(members).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        mean = sum(m(x).softmax(1) for m in members) / 3
        out = ensemble(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.softmax(1), mean, atol=1e-6, rtol=1e-5)
    assert ensemble.config.num_classes == 4


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_classes": 4, "dataset": {"class_names": ["background", "square", "disc", "ring"]}}, "classes"),
        ({"dataset": {"class_names": ["background", "liver", "disc"]}}, "class names"),
        ({"plan": {**PLAN, "patch_size": [48, 48]}}, "plan"),
    ],
)
def test_members_that_disagree_are_refused_naming_the_file(tmp_path, change, match):
    a = _checkpoint(tmp_path / "a.pt", 0)
    b = _checkpoint(tmp_path / "b.pt", 1, **change)
    with pytest.raises(InputError, match=rf"b\.pt differs from .*a\.pt in its {match}"):
        load([a, b])


def test_run_folders_and_fold_folders_stand_for_their_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    last = _checkpoint(run / "last.pt", 0)
    assert model_sources(run) == [last], "no best.pt: the last epoch"
    best = _checkpoint(run / "best.pt", 0)
    assert model_sources(run) == [best]
    folds = tmp_path / "cv"
    paths = []
    for name in ("fold_1", "fold_0", "fold_all"):
        (folds / name).mkdir(parents=True)
        paths.append(_checkpoint(folds / name / "best.pt", 0))
    assert model_sources(folds) == [paths[1], paths[0]], "fold runs in order, fold_all left out"
    assert model_sources([best, folds]) == [best, paths[1], paths[0]]
    loaded = load(folds)
    assert isinstance(loaded.model, ProbabilityEnsemble) and len(loaded.model.members) == 2
    assert loaded.sources == [paths[1], paths[0]] and isinstance(loaded.info.plan, Plan)
    (folds / "fold_2").mkdir()
    with pytest.raises(InputError, match=r"fold runs \['fold_2'\] have no best.pt"):
        model_sources(folds)
    with pytest.raises(InputError, match="does not exist"):
        model_sources(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no best.pt"):
        model_sources(tmp_path / "empty")
