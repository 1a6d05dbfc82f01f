"""Cross-validation folds: by case, disjoint, complete, stable, written once; fold datasets read both storages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perspective_unet.data import SliceDataset, VolumeDataset
from perspective_unet.data.folds import SPLITS_FILE, development_cases, fold_cases, make_folds
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.errors import InputError
from tests.engine.conftest import synthetic_volume, write_tiny_dataset

CASES = [f"case{i:03d}" for i in range(11)]


@pytest.mark.parametrize("num_folds", [2, 3, 5])
def test_folds_are_disjoint_complete_and_balanced(num_folds):
    folds = make_folds(CASES, num_folds, seed=3)
    assert len(folds) == num_folds
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(CASES) and sum(len(v) for v in vals) == len(CASES), "each case validates once"
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(CASES)
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_folds_depend_on_the_seed_and_the_set_of_cases_not_their_order():
    assert make_folds(CASES, 5, seed=1) == make_folds(list(reversed(CASES)), 5, seed=1)
    assert make_folds(CASES, 5, seed=1) != make_folds(CASES, 5, seed=2)


@pytest.mark.parametrize(
    "cases, folds, match",
    [(CASES[:2], 3, "at least 3 cases"), (CASES, 1, "at least 2 folds"), (["a", "a", "b"], 2, "duplicate")],
)
def test_impossible_folds_are_refused(cases, folds, match):
    with pytest.raises(ValueError, match=match):
        make_folds(cases, folds)


@pytest.fixture
def dataset(tmp_path):
    return write_tiny_dataset(tmp_path / "tiny")  # train: case0001, case0002 (slices); val: case0003; test: 4, 5


def test_folds_are_written_once_and_never_hold_a_test_case(dataset):
    info = open_dataset(dataset).info
    assert development_cases(info) == ["case0001", "case0002", "case0003"]
    first = fold_cases(dataset, info, 0, num_folds=3)
    written = (dataset / SPLITS_FILE).read_text()
    assert fold_cases(dataset, info, 0, num_folds=3, seed=999) == first, "the file wins over a later seed"
    assert (dataset / SPLITS_FILE).read_text() == written
    folds = json.loads(written)
    assert [sorted(f) for f in folds] == [["train", "val"]] * 3
    seen = {case for fold in folds for side in fold.values() for case in side}
    assert seen == {"case0001", "case0002", "case0003"}
    everything = fold_cases(dataset, info, "all", num_folds=3)
    assert everything.name == "fold_all" and everything.train == ("case0001", "case0002", "case0003")
    assert everything.val == ()


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "is not valid JSON"),
        ('[{"train": ["case0001"]}]', "list of folds"),
        (
            '[{"train": ["case0001", "case0004"], "val": ["case0002", "case0003"]}, {"train": [], "val": []}]',
            "not development cases",
        ),
        (
            '[{"train": ["case0001", "case0002"], "val": ["case0002", "case0003"]}, {"train": [], "val": []}]',
            "on both sides",
        ),
        ('[{"train": ["case0001"], "val": ["case0002"]}, {"train": [], "val": []}]', "on neither side"),
    ],
)
def test_an_invalid_splits_file_is_named(dataset, content, match):
    (dataset / SPLITS_FILE).write_text(content)
    with pytest.raises(InputError, match=match):
        fold_cases(dataset, open_dataset(dataset).info, 0, num_folds=2)


def test_fold_number_and_fold_count_are_checked(dataset):
    info = open_dataset(dataset).info
    fold_cases(dataset, info, 0, num_folds=3)
    with pytest.raises(InputError, match="holds 3 folds but 2"):
        fold_cases(dataset, info, 0, num_folds=2)
    with pytest.raises(InputError, match="fold must be 0..2"):
        fold_cases(dataset, info, 3, num_folds=3)
    (dataset / SPLITS_FILE).unlink()
    with pytest.raises(InputError, match="at least 5 cases"):
        fold_cases(dataset, info, 0, num_folds=5)
    assert not (dataset / SPLITS_FILE).exists(), "no file for impossible folds"


def test_fold_datasets_read_training_slices_and_validation_volumes(dataset):
    train = SliceDataset(dataset, img_size=(32, 32), cases=["case0002", "case0003"])
    assert {ref.case for ref in train.samples} == {"case0002", "case0003"}
    assert len(train) == 12, "6 slices of a training case and 6 of the validation volume"
    volumes = VolumeDataset(dataset, cases=["case0001", "case0003"])
    stacked, stored = volumes[0], volumes[1]
    image, label = synthetic_volume(0)
    np.testing.assert_array_equal(stacked["label"], label)
    np.testing.assert_allclose(stacked["image"], image)
    assert stacked["case"] == "case0001" and stacked["spacing"] == (3.0, 1.0, 1.0), "spacing from geometry.json"
    np.testing.assert_array_equal(stored["label"], synthetic_volume(3)[1])
    with pytest.raises(InputError, match="case0004"):
        SliceDataset(dataset, img_size=(32, 32), cases=["case0004"])  # a test case is not for training


def test_nnunets_splits_final_json_is_read_and_its_folds_hashed(dataset, tmp_path):
    from perspective_unet.data.folds import NNUNET_SPLITS_FILE, splits_hash

    info = open_dataset(dataset).info
    folds = [
        {"train": ["case0001", "case0002"], "val": ["case0003"]},
        {"train": ["case0003"], "val": ["case0001", "case0002"]},
    ]
    (dataset / NNUNET_SPLITS_FILE).write_text(json.dumps(folds))
    fold = fold_cases(dataset, info, 1, num_folds=2)
    assert (fold.train, fold.val) == (("case0003",), ("case0001", "case0002"))
    assert fold.splits_file == str(dataset / NNUNET_SPLITS_FILE) and fold.splits_sha256 == splits_hash(folds)
    assert not (dataset / SPLITS_FILE).exists(), "nothing drawn beside nnU-Net's file"
    (dataset / NNUNET_SPLITS_FILE).write_text(json.dumps(folds, indent=4))
    assert fold_cases(dataset, info, 1, num_folds=2).splits_sha256 == fold.splits_sha256, "the layout does not count"
    (dataset / SPLITS_FILE).write_text(json.dumps(folds))
    assert fold_cases(dataset, info, 0, num_folds=2).splits_file.endswith(NNUNET_SPLITS_FILE)
    (dataset / SPLITS_FILE).write_text(json.dumps(folds[::-1]))
    with pytest.raises(InputError, match="hold different folds"):
        fold_cases(dataset, info, 0, num_folds=2)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(folds[::-1]))
    assert fold_cases(dataset, info, 0, num_folds=2, splits=mine).val == ("case0001", "case0002"), "a given file wins"
    with pytest.raises(InputError, match="fold must be 0..1"):
        fold_cases(dataset, info, 2, num_folds=2, splits=mine)


def test_a_resumed_run_never_draws_folds(dataset):
    info = open_dataset(dataset).info
    with pytest.raises(InputError, match="is missing; restore the splits file"):
        fold_cases(dataset, info, 0, num_folds=3, draw=False)
    assert not (dataset / SPLITS_FILE).exists()
