"""The evaluation schema: nnU-Net's counts, Dice and IoU by hand, NSD against MONAI on whole volumes, the means and
undefined counts, summary.json written and read back."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice
from monai.networks.utils import one_hot
from scipy import ndimage

from perspective_unet.evaluation import CaseScores, EvaluationSummary, read_summary, score_volume, write_summary
from perspective_unet.metrics import normalized_surface_dice, score_case


def test_counts_dice_and_iou_by_hand_on_a_small_volume():
    reference = np.zeros((2, 4, 5), dtype=np.uint8)
    reference[0, :2, :2] = 1  # 4 voxels of class 1
    reference[1, 2:, 3:] = 2  # 4 voxels of class 2
    prediction = np.zeros_like(reference)
    prediction[0, :2, 1:3] = 1  # 2 of the 4 right, 2 false positives
    prediction[1, 0, 0] = 1  # one more false positive of class 1
    scores = score_volume(prediction, reference, 3, spacing=(2.0, 1.0, 1.0))
    one, two = scores[1], scores[2]
    assert (one["TP"], one["FP"], one["FN"], one["TN"]) == (2, 3, 2, 33)
    assert (one["n_pred"], one["n_ref"]) == (5, 4)
    assert one["Dice"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 2)) and one["IoU"] == pytest.approx(2 / 7)
    assert (two["TP"], two["FP"], two["FN"], two["TN"]) == (0, 0, 4, 36)
    assert two["Dice"] == 0.0 and two["IoU"] == 0.0 and math.isnan(two["HD95"]), "a missed class: Dice 0, no HD95"
    assert two["legacy_Dice"] == 0.0 and two["legacy_HD95_voxels"] == 0.0, "the papers' (0, 0) for a miss"
    assert one["HD95"] == score_case(prediction, reference, 3, protocol="corrected", spacing=(2.0, 1.0, 1.0))[1]["hd95"]


def test_a_class_absent_from_both_has_no_dice_but_counts_its_voxels():
    reference = np.zeros((6, 7), dtype=np.uint8)
    reference[1:3, 1:3] = 1
    scores = score_volume(reference, reference, 3, spacing=(1.0, 1.0))
    assert scores[1]["Dice"] == scores[1]["IoU"] == scores[1]["NSD"] == 1.0 and scores[1]["HD95"] == 0.0
    absent = scores[2]
    assert math.isnan(absent["Dice"]) and math.isnan(absent["IoU"]) and math.isnan(absent["NSD"])
    assert (absent["TP"], absent["FP"], absent["FN"], absent["TN"]) == (0, 0, 0, 42)
    assert absent["legacy_Dice"] == 0.0, "the papers score an absent class 0"
    false_positive = score_volume(reference, np.zeros_like(reference), 2, spacing=(1.0, 1.0))[1]
    assert false_positive["Dice"] == 0.0 and false_positive["legacy_Dice"] == 1.0 and false_positive["NSD"] == 0.0


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal((num_classes, *shape)), sigma=(0,) + (1.2,) * len(shape))
    noise[0] += 0.4
    return noise.argmax(axis=0).astype(np.int64)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_equals_monai_on_the_whole_volume(seed):
    rng = np.random.default_rng(seed)
    shape, num_classes, spacing, tolerances = (9, 17, 14), 4, (2.5, 0.8, 1.1), [1.0, 2.0, 0.5]
    reference, prediction = _blobs(rng, shape, num_classes), _blobs(rng, shape, num_classes)
    prediction[:, :2] = reference[:, :2]  # some agreement, touching the border
    ours = normalized_surface_dice(prediction, reference, num_classes, spacing=spacing, tolerance=tolerances)
    as_one_hot = [one_hot(torch.from_numpy(a)[None, None], num_classes, dim=1) for a in (prediction, reference)]
    monai = compute_surface_dice(*as_one_hot, tolerances, spacing=spacing)[0].numpy()
    np.testing.assert_allclose([ours[k] for k in (1, 2, 3)], monai, rtol=1e-6)
    assert min(ours.values()) > 0.0 and max(ours.values()) < 1.0, "a test that could tell a wrong crop apart"


def test_nsd_tolerances_are_checked():
    label = np.ones((3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="one NSD tolerance for every class or one per foreground class"):
        normalized_surface_dice(label, label, 4, spacing=(1.0, 1.0), tolerance=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        normalized_surface_dice(label, label, 2, spacing=(1.0, 1.0), tolerance=-1.0)


def _summary() -> EvaluationSummary:
    nan = math.nan
    cases = [
        CaseScores("b", {1: {"Dice": 0.5, "HD95": 4.0, "TP": 2}, 2: {"Dice": nan, "HD95": nan, "TP": 0}}, "p/b", "r/b"),
        CaseScores(
            "a", {1: {"Dice": 1.0, "HD95": 0.0, "TP": 3}, 2: {"Dice": 0.25, "HD95": nan, "TP": 1}}, "p/a", "r/a"
        ),
    ]
    return EvaluationSummary(tuple(cases), ("background", "liver", "spleen"), ("corrected",), {1: 2.0, 2: 3.0})


def test_means_skip_undefined_values_and_count_them():
    summary = _summary()
    assert [c.case for c in summary.cases] == ["a", "b"], "cases in name order"
    mean = summary.mean()
    assert mean[1] == {"Dice": 0.75, "TP": 2.5, "HD95": 2.0}
    assert mean[2]["Dice"] == 0.25 and math.isnan(mean[2]["HD95"])
    foreground = summary.foreground_mean()
    assert foreground["Dice"] == pytest.approx(0.5) and foreground["HD95"] == 2.0, "a class without HD95 is left out"
    assert summary.undefined() == {1: {"Dice": 0, "HD95": 0}, 2: {"Dice": 1, "HD95": 2}}
    assert summary.case_scores() == {"a": 0.625, "b": 0.5}


def test_summary_json_has_nnunets_layout_and_reads_back(tmp_path):
    summary = _summary()
    data = write_summary(summary, tmp_path, {"split": "test"})
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == data
    assert list(written)[:2] == ["format_version", "num_cases"] and list(written)[-1] == "metric_per_case"
    assert written["metric_per_case"][1] == {
        "case": "b",
        "prediction_file": "p/b",
        "reference_file": "r/b",
        "spacing_known": True,
        "metrics": {"1": {"Dice": 0.5, "TP": 2, "HD95": 4.0}, "2": {"Dice": None, "TP": 0, "HD95": None}},
    }
    assert written["mean"]["2"] == {"Dice": 0.25, "TP": 0.5, "HD95": None}, "NaN is written as null"
    assert written["nsd_tolerance_mm"] == {"1": 2.0, "2": 3.0} and written["split"] == "test"
    again = read_summary(tmp_path)
    assert again.class_names == summary.class_names and again.nsd_tolerance == summary.nsd_tolerance
    assert again.mean()[1] == summary.mean()[1] and math.isnan(again.cases[1].metrics[2]["Dice"])
    rows = list(csv.DictReader((tmp_path / "per_case.csv").open()))
    assert [(r["case"], r["class_name"], r["Dice"]) for r in rows[:2]] == [
        ("a", "liver", "1.0"),
        ("a", "spleen", "0.25"),
    ]
    assert "| foreground mean |" in (tmp_path / "summary.md").read_text()


def test_merging_refuses_a_case_twice_and_other_classes():
    summary = _summary()
    with pytest.raises(ValueError, match="in both evaluations"):
        summary.merged(summary)
    other = EvaluationSummary(summary.cases, ("background", "x", "y"), summary.protocols, summary.nsd_tolerance)
    with pytest.raises(ValueError, match="classes"):
        summary.merged(other)


def test_the_reports_means_are_the_metrics_aggregates_of_both_protocols():
    from perspective_unet.metrics import aggregate

    rng = np.random.default_rng(5)
    pairs = [(_blobs(rng, (5, 12, 12), 4), _blobs(rng, (5, 12, 12), 4)) for _ in range(4)]
    pairs[0][0][pairs[0][0] == 3] = 0  # a class missed: undefined HD95
    spacing = (3.0, 0.7, 0.7)
    cases = [CaseScores(str(i), score_volume(p, r, 4, spacing=spacing)) for i, (p, r) in enumerate(pairs)]
    summary = EvaluationSummary.of(cases, ("bg", "a", "b", "c"), ("legacy", "corrected"))
    for protocol, dice, hd95 in (("legacy", "legacy_Dice", "legacy_HD95_voxels"), ("corrected", "Dice", "HD95")):
        scores = [score_case(p, r, 4, protocol=protocol, spacing=spacing) for p, r in pairs]
        expected = aggregate(scores, ["bg", "a", "b", "c"], protocol=protocol)
        for class_id in (1, 2, 3):
            assert summary.mean()[class_id][dice] == pytest.approx(expected["per_class"][class_id]["dice"])
            assert summary.mean()[class_id][hd95] == pytest.approx(expected["per_class"][class_id]["hd95"])
        assert summary.foreground_mean()[dice] == pytest.approx(expected["mean_dice"])
        assert summary.foreground_mean()[hd95] == pytest.approx(expected["mean_hd95"])
    assert summary.undefined()[3]["HD95"] == 1
