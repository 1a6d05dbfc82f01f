"""Choosing the model: find-best on configurations whose out-of-fold predictions the test chooses (written by the
training's own writer, with the network's output replaced), the post-processing decision, predict --postprocess."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import perspective_unet.engine.evaluate as evaluate_module
from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.data import VolumeDataset, prepare_nnunet
from perspective_unet.data.folds import fold_cases
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.find_best import find_best
from perspective_unet.engine.fold_validation import predict_held_out
from perspective_unet.postprocessing import Postprocessing, keep_largest_component
from tests.data.conftest import write_blob_nnunet_raw

NAMES = ("background", "disc", "squares")
Prediction = Callable[[str, np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    write_blob_nnunet_raw(root / "raw", num_cases=10, test_cases=0)
    return prepare_nnunet(root / "raw", root / "prepared")


def configuration(folder: Path, data: Path, predict: Prediction, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of five fold runs whose held-out cases are predicted as ``predict(case, reference)`` says."""
    layout = open_dataset(data)
    for index in range(5):
        fold = fold_cases(data, layout.info, index)
        dataset = VolumeDataset(layout, cases=list(fold.val))
        predictions = iter([predict(dataset[i]["case"], dataset[i]["label"]) for i in range(len(dataset))])

        def inferer(plan, settings=None, plan_source=None, predictions=predictions):
            def call(model, volume, *, spacing=None, return_probabilities=False):
                labels = next(predictions).astype(np.uint8)
                probabilities = np.moveaxis(np.eye(3, dtype=np.float16)[labels], -1, 0)
                return (labels, probabilities) if return_probabilities else labels

            return call

        monkeypatch.setattr(evaluate_module, "inferer_for", inferer)
        plan = layout.plan()
        predict_held_out(torch.nn.Identity(), fold, str(data), folder / fold.name, plan, NAMES, extra={"num_folds": 5})
    return folder


def with_island(case: str, reference: np.ndarray) -> np.ndarray:
    """The reference with one spurious voxel of class 1 far from every organ."""
    out = reference.copy()
    far = ~ndimage.binary_dilation(reference > 0, ndimage.generate_binary_structure(3, 3), iterations=2)
    out[tuple(np.argwhere(far)[len(np.argwhere(far)) // 2])] = 1
    return out


def worse(case: str, reference: np.ndarray) -> np.ndarray:
    """``with_island``, and the squares missed in every other case."""
    out = with_island(case, reference)
    if int(case[-1]) % 2 == 0:
        out[out == 2] = 0
    return out


def test_find_best_ranks_the_better_configuration_first_and_keeps_only_the_helpful_step(data, tmp_path, monkeypatch):
    good = configuration(tmp_path / "good", data, with_island, monkeypatch)
    bad = configuration(tmp_path / "bad", data, worse, monkeypatch)
    choice = find_best([str(bad), str(good)], tmp_path / "best")
    names = [c.name for c in choice.candidates]
    assert names[0] == str(good) and set(names) == {str(good), str(bad), f"{bad} + {good}"}
    best = choice.candidates[0]
    assert best.comparison is not None and best.comparison.n == 10
    assert best.comparison.p_value == pytest.approx(0.0625), "5 cases better, none worse: the exact two-sided p"
    by_fold = [json.loads((good / f"fold_{k}/validation/summary.json").read_text()) for k in range(5)]
    fold_dice = [summary["foreground_mean"]["Dice"] for summary in by_fold]
    assert best.folds.n == 5 and best.folds.mean == pytest.approx(np.mean(fold_dice))
    assert best.folds.std == pytest.approx(np.std(fold_dice, ddof=1))
    # The island costs class 1 a little; keeping its largest component removes it. The squares are two components
    # on purpose: keeping the largest (of them, or of all foreground) would lose one, so neither step is taken.
    post = choice.postprocessing
    assert (post.foreground_as_one, post.largest_component_classes) == (False, (1,))
    assert choice.dice_before["disc"] < 1.0 and choice.dice_after["disc"] == 1.0
    assert choice.dice_before["squares"] == choice.dice_after["squares"] == 1.0
    written = json.loads((tmp_path / "best" / "postprocessing.json").read_text())
    assert written["largest_component_classes"] == [1] and written["decided_on"] == str(good)
    instructions = (tmp_path / "best" / "inference_instructions.txt").read_text().strip()
    assert instructions == (
        f"perspective-unet predict --checkpoint {good} -i INPUT_FOLDER -o OUTPUT_FOLDER --postprocess "
        f"{tmp_path / 'best' / 'postprocessing.json'}"
    )
    ranking = json.loads((tmp_path / "best" / "find_best.json").read_text())["ranking"]
    assert ranking[0]["name"] == str(good) and ranking[0]["p_wilcoxon"] == pytest.approx(0.0625)
    assert find_best([str(good)], tmp_path / "other").candidates[0].name == str(good), "one configuration alone"
    with pytest.raises(FileExistsError, match="--overwrite"):
        find_best([str(good)], tmp_path / "best")


def test_the_foreground_step_is_chosen_where_it_raises_the_dice_and_lowers_no_class(data, tmp_path, monkeypatch):
    def squares_missed_with_island(case: str, reference: np.ndarray) -> np.ndarray:
        return with_island(case, np.where(reference == 2, 0, reference))

    folder = configuration(tmp_path / "islands", data, squares_missed_with_island, monkeypatch)
    choice = find_best([str(folder)], tmp_path / "best")
    # The foreground is one component plus the island: keeping its largest removes the island and costs nothing (the
    # squares were missed anyway); afterwards the disc alone has nothing left to gain.
    post = choice.postprocessing
    assert (post.foreground_as_one, post.largest_component_classes) == (True, ())
    assert choice.dice_after["disc"] == 1.0 and choice.dice_after["squares"] == choice.dice_before["squares"] == 0.0


def test_a_configuration_with_a_missing_fold_or_other_classes_is_refused(data, tmp_path, monkeypatch, capsys):
    good = configuration(tmp_path / "good", data, with_island, monkeypatch)
    missing = tmp_path / "missing"
    configuration(missing, data, with_island, monkeypatch)
    for path in (missing / "fold_2" / "validation").iterdir():
        path.unlink()
    (missing / "fold_2" / "validation").rmdir()
    assert main(["find-best", str(good), str(missing), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fold_2 of 5 folds" in err
    assert not (tmp_path / "out").exists()


def test_postprocessing_removes_islands_and_refuses_another_models_classes(tmp_path, capsys):
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    labels[1, 2:5, 2:5] = 1
    labels[0, 7, 7] = 1  # an island of class 1
    labels[2, 0, 0] = 2  # class 2: one component only
    post = Postprocessing(NAMES, largest_component_classes=(1,))
    cleaned = post.apply(labels)
    assert cleaned[0, 7, 7] == 0 and (cleaned == 1).sum() == 9 and cleaned[2, 0, 0] == 2
    diagonal = np.zeros((2, 2, 2), dtype=np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1
    assert keep_largest_component(diagonal, [1]).sum() == 2, "corners connect, as in nnU-Net"
    post.write(tmp_path / "postprocessing.json")
    assert Postprocessing.read(tmp_path / "postprocessing.json") == post
    model = save_model(create_model("perspective_unet_tiny", num_classes=2), tmp_path / "two.pt")
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 3), dtype=np.float32), np.eye(4)), str(image))
    argv = ["predict", "--checkpoint", str(model), "-i", str(image), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*argv, "--postprocess", str(tmp_path / "postprocessing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "postprocessing.json was decided for the classes" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    assert main([*argv, "--postprocess", str(tmp_path / "bad.json")]) == 2
    assert "not a post-processing file" in capsys.readouterr().err


def test_predict_postprocess_applies_the_steps_to_the_label_map(tmp_path, monkeypatch):
    import perspective_unet.engine.predictor as predictor_module

    class Islands:
        """The network's labels replaced: a block of class 1 with an island, two blocks of class 2."""

        def __init__(self, plan, settings=None, plan_source=None):
            self.plan = plan

        def __call__(self, model, volume, *, spacing=None, return_probabilities=False):
            labels = np.zeros(volume.shape, dtype=np.uint8)
            labels[:, 2:8, 2:8], labels[0, -1, -1] = 1, 1
            labels[:, 12:14, 12:14], labels[:, 20:22, 2:4] = 2, 2
            return labels

    monkeypatch.setattr(predictor_module, "inferer_for", Islands)
    model = save_model(create_model("perspective_unet_tiny", num_classes=3), tmp_path / "three.pt")
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 3), dtype=np.float32), np.eye(4)), str(image))
    post = Postprocessing(("a", "b", "c"), False, (1, 2))
    post.write(tmp_path / "post.json")
    base = ["predict", "--checkpoint", str(model), "-i", str(image), "--device", "cpu", "--window", "0", "1"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert main([*base, "-o", str(tmp_path / "post"), "--postprocess", str(tmp_path / "post.json")]) == 0
    plain = np.asarray(nib.load(tmp_path / "plain" / "scan.nii.gz").dataobj)
    cleaned = np.asarray(nib.load(tmp_path / "post" / "scan.nii.gz").dataobj)
    np.testing.assert_array_equal(cleaned, post.apply(plain))
    assert (plain == 1).sum() - (cleaned == 1).sum() == 1, "the island of class 1 is gone"
    assert (cleaned == 2).sum() == (plain == 2).sum() // 2, "class 2 kept its larger block (two equal: the first)"
