"""Tests of perspective_unet.metrics: every rule of both protocols, hand-computed, plus independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics.hausdorff_distance import compute_hausdorff_distance
from monai.metrics.utils import get_mask_edges
from scipy import ndimage
from scipy.spatial.distance import cdist

from perspective_unet.metrics import PROTOCOLS, aggregate, score_case

# ----------------------------------------------------------------------------------------------------------------
# Independent references, written here without MONAI.


def explicit_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbor (2 * ndim of them) outside the mask or the array."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask, dtype=bool)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbor = np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            interior &= neighbor
    return mask & ~interior


def brute_force_distances(pred: np.ndarray, gt: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances from explicit point lists and cdist (float64)."""
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    pred_points = np.argwhere(explicit_surface(pred)) * scale
    gt_points = np.argwhere(explicit_surface(gt)) * scale
    pairwise = cdist(pred_points, gt_points)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def medpy_style_distances(pred: np.ndarray, gt: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """medpy 0.4's algorithm with scipy on the full, uncropped arrays."""
    footprint = ndimage.generate_binary_structure(pred.ndim, 1)
    pred_border = pred ^ ndimage.binary_erosion(pred, structure=footprint, iterations=1)
    gt_border = gt ^ ndimage.binary_erosion(gt, structure=footprint, iterations=1)
    to_gt = ndimage.distance_transform_edt(~gt_border, sampling=spacing)[pred_border]
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)[gt_border]
    return to_gt, to_pred


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Blobby random label map: smoothed noise, one channel per class, argmax, some background."""
    noise = ndimage.gaussian_filter(rng.standard_normal((num_classes, *shape)), sigma=(0,) + (1.0,) * len(shape))
    noise[0] += 0.3
    return noise.argmax(axis=0).astype(np.int64)


def square_2d(top: int, left: int, side: int = 4, shape: tuple[int, int] = (8, 12)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[top : top + side, left : left + side] = 1
    return mask


def cube_3d(start_z: int, side: int = 4, shape: tuple[int, int, int] = (10, 6, 6)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[start_z : start_z + side, 1 : 1 + side, 1 : 1 + side] = 1
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Both masks non-empty: hand-computed values.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_identical_masks_give_dice_1_and_hd95_0(protocol):
    label = np.zeros((5, 7, 9), dtype=np.int64)
    label[1:4, 2:6, 3:8] = 1
    label[0:2, 0:2, 0:2] = 2
    scores = score_case(label, label.copy(), 3, protocol=protocol, spacing=(2.0, 1.0, 0.5))
    assert scores == {1: {"dice": 1.0, "hd95": 0.0}, 2: {"dice": 1.0, "hd95": 0.0}}


def test_disjoint_single_pixels():
    pred = np.zeros((3, 6), dtype=np.int64)
    gt = np.zeros((3, 6), dtype=np.int64)
    pred[0, 0] = 1
    gt[0, 3] = 1
    # A single pixel is its own surface: the only distance is 3 in both directions.
    assert score_case(pred, gt, 2) == {1: {"dice": 0.0, "hd95": 3.0}}
    assert score_case(pred, gt, 2, protocol="corrected", spacing=(1.0, 2.0)) == {1: {"dice": 0.0, "hd95": 6.0}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_square_shifted_by_two_pixels(protocol):
    # 4x4 squares, columns 0-3 and 2-5. Surfaces: 12 pixels each. Distances from either surface to the other:
    # four 0, four 1, four 2; pooled: eight of each, 95th percentile at sorted index 21.85 -> 2; directed: index
    # 10.45 of 12 -> 2. Dice = 2 * 8 / 32.
    gt = square_2d(1, 0)
    pred = square_2d(1, 2)
    scores = score_case(pred, gt, 2, protocol=protocol, spacing=(1.0, 1.0))
    assert scores == {1: {"dice": 0.5, "hd95": 2.0}}


@pytest.mark.parametrize(("shift", "dice"), [(1, 0.75), (2, 0.5), (3, 0.25)])
def test_cube_shifted_by_k_voxels(shift, dice):
    # 4x4x4 cube (56 surface voxels) shifted by k along z. For k = 2 the distances of one surface to the other are
    # 16 x 2 (first full slice), 12 x 1 (first rim), 24 x 0 and 4 x 1 (center of the last slice, 1 from the rim),
    # for k = 3: 16 x 3, 12 x 2, 12 x 1, 16 x 0; for k = 1: 20 x 1, 36 x 0. The 95th percentile is k in every case.
    gt = cube_3d(1)
    pred = cube_3d(1 + shift)
    assert score_case(pred, gt, 2) == {1: {"dice": dice, "hd95": float(shift)}}
    assert score_case(pred, gt, 2, protocol="corrected", spacing=(1.0, 1.0, 1.0)) == {
        1: {"dice": dice, "hd95": float(shift)}
    }


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_anisotropic_spacing_changes_corrected_hd95_only(shift):
    # With 3 mm slices the z distances triple (the in-plane 1 mm ones stay below the 95th percentile): 3k mm.
    gt = cube_3d(1)
    pred = cube_3d(1 + shift)
    spacing = (3.0, 1.0, 1.0)
    assert score_case(pred, gt, 2, protocol="corrected", spacing=spacing)[1]["hd95"] == 3.0 * shift
    assert score_case(pred, gt, 2, protocol="legacy", spacing=spacing)[1]["hd95"] == float(shift)
    assert score_case(pred, gt, 2, protocol="legacy", spacing=spacing) == score_case(pred, gt, 2)


def test_pooled_and_directed_hd95_differ_on_an_asymmetric_case():
    # Ground truth: a 4x4 square (12 surface pixels). Prediction: the same square plus one stray pixel 7 columns
    # from the square's right edge. pred->gt: 12 zeros and one 7; gt->pred: 12 zeros.
    gt = square_2d(0, 0, shape=(6, 14))
    pred = gt.copy()
    pred[0, 10] = 1
    legacy = score_case(pred, gt, 2)[1]
    corrected = score_case(pred, gt, 2, protocol="corrected", spacing=(1.0, 1.0))[1]
    assert legacy["dice"] == corrected["dice"] == pytest.approx(32 / 33, abs=1e-15)
    # Pooled: 25 values, index 0.95 * 24 = 22.8 falls between two zeros.
    assert legacy["hd95"] == 0.0
    # Directed pred->gt: 13 values, index 0.95 * 12 = 11.4 -> 0 + 0.4 * 7; gt->pred is 0; the maximum is 2.8.
    assert corrected["hd95"] == pytest.approx(2.8, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Empty masks: every rule of both protocols.


def _empty_rule_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 1 in both, class 2 only predicted, class 3 only in the ground truth, class 4 in neither."""
    pred = np.zeros((4, 10, 10), dtype=np.int64)
    gt = np.zeros((4, 10, 10), dtype=np.int64)
    pred[1:3, 1:4, 1:4] = 1
    gt[1:3, 1:4, 1:4] = 1
    pred[1:3, 6:9, 6:9] = 2
    gt[1:3, 6:9, 1:4] = 3
    return pred, gt


def test_legacy_empty_mask_rules():
    pred, gt = _empty_rule_case()
    scores = score_case(pred, gt, 5, spacing=(2.0, 1.0, 1.0))
    assert scores[1] == {"dice": 1.0, "hd95": 0.0}
    assert scores[2] == {"dice": 1.0, "hd95": 0.0}  # prediction without ground truth counts as perfect
    assert scores[3] == {"dice": 0.0, "hd95": 0.0}  # a miss: HD95 0, which flatters the mean
    assert scores[4] == {"dice": 0.0, "hd95": 0.0}  # both empty


def test_corrected_empty_mask_rules():
    pred, gt = _empty_rule_case()
    scores = score_case(pred, gt, 5, protocol="corrected", spacing=(2.0, 1.0, 1.0))
    assert scores[1] == {"dice": 1.0, "hd95": 0.0}
    assert scores[2]["dice"] == 0.0 and math.isnan(scores[2]["hd95"])  # false positive
    assert scores[3]["dice"] == 0.0 and math.isnan(scores[3]["hd95"])  # miss
    assert math.isnan(scores[4]["dice"]) and math.isnan(scores[4]["hd95"])  # both empty: undefined


def test_every_foreground_class_is_reported_as_python_floats():
    pred, gt = _empty_rule_case()
    for protocol in PROTOCOLS:
        scores = score_case(pred, gt, 5, protocol=protocol, spacing=(1.0, 1.0, 1.0))
        assert sorted(scores) == [1, 2, 3, 4]
        assert all(type(v) is float for s in scores.values() for v in s.values())


# ----------------------------------------------------------------------------------------------------------------
# Against independent implementations on random volumes (masks touching the array border included).


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force_and_medpy_algorithm_on_random_volumes(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 9, 11) if seed % 2 == 0 else (13, 17)
    num_classes = 4
    pred = random_labels(rng, shape, num_classes)
    gt = random_labels(rng, shape, num_classes)
    spacing = tuple(rng.uniform(0.4, 3.0, size=len(shape)))
    legacy = score_case(pred, gt, num_classes)
    corrected = score_case(pred, gt, num_classes, protocol="corrected", spacing=spacing)
    checked = 0
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        if not p.any() or not g.any():
            continue
        checked += 1
        to_gt, to_pred = brute_force_distances(p, g)
        pooled = np.percentile(np.concatenate([to_gt, to_pred]), 95)
        assert legacy[c]["hd95"] == pytest.approx(pooled, rel=1e-12, abs=1e-12)
        # Bit-identical to medpy's own algorithm (full-array distance transforms, no cropping).
        assert legacy[c]["hd95"] == np.percentile(np.hstack(medpy_style_distances(p, g)), 95)
        to_gt, to_pred = brute_force_distances(p, g, spacing)
        directed = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
        assert corrected[c]["hd95"] == pytest.approx(directed, rel=1e-6)  # MONAI's distances are float32
        dice = 2 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g))
        assert legacy[c]["dice"] == corrected[c]["dice"] == pytest.approx(dice, abs=1e-15)
    assert checked > 0


@pytest.mark.parametrize("seed", range(4))
def test_monai_edges_equal_explicit_surfaces(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (4, 8, 7) if seed < 2 else (9, 10)
    pred = random_labels(rng, shape, 2) == 1
    gt = random_labels(rng, shape, 2) == 1
    if seed == 1:  # one-voxel-thick masks: everything is surface
        pred[:] = False
        pred[2, 1:6, 1:6] = True
    edges_pred, edges_gt = get_mask_edges(pred, gt, crop=False)
    np.testing.assert_array_equal(edges_pred, explicit_surface(pred))
    np.testing.assert_array_equal(edges_gt, explicit_surface(gt))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # raised inside MONAI itself
@pytest.mark.parametrize("seed", range(3))
def test_corrected_hd95_matches_monai_hausdorff_metric(seed):
    rng = np.random.default_rng(200 + seed)
    pred = random_labels(rng, (6, 10, 12), 2)
    gt = random_labels(rng, (6, 10, 12), 2)
    spacing = (2.5, 0.7, 0.9)
    ours = score_case(pred, gt, 2, protocol="corrected", spacing=spacing)[1]["hd95"]
    onehot = [torch.nn.functional.one_hot(torch.from_numpy(x), 2).movedim(-1, 0)[None] for x in (pred, gt)]
    theirs = compute_hausdorff_distance(*onehot, include_background=False, percentile=95, spacing=spacing)
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_cropping_is_invisible_for_masks_at_the_array_border():
    gt = np.zeros((12, 12), dtype=np.int64)
    pred = np.zeros((12, 12), dtype=np.int64)
    gt[0:5, 0:6] = 1
    pred[0:7, 1:12] = 1
    pred[11, 0] = 1
    to_gt, to_pred = medpy_style_distances(pred == 1, gt == 1)
    assert score_case(pred, gt, 2)[1]["hd95"] == np.percentile(np.hstack((to_gt, to_pred)), 95)


# ----------------------------------------------------------------------------------------------------------------
# Input handling.


def test_bool_and_integer_valued_float_inputs_are_accepted():
    gt = cube_3d(1)
    pred = cube_3d(3)
    expected = score_case(pred, gt, 2)
    assert score_case(pred.astype(bool), gt.astype(bool), 2) == expected
    assert score_case(pred.astype(np.float32), gt.astype(np.float64), 2) == expected
    assert score_case(pred.astype(np.uint8), gt.astype(np.int16), 2) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "medpy"}, "protocol must be one of"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": 2.0}, "num_classes must be an integer >= 2"),
        ({"num_classes": True}, "num_classes must be an integer >= 2"),
        ({"label": np.zeros((4, 6), dtype=np.int64)}, "same shape"),
        ({"prediction": np.full((4, 5), 2)}, r"labels in \[2, 2\], outside \[0, 1\]"),
        ({"label": np.full((4, 5), -1)}, r"outside \[0, 1\]"),
        ({"prediction": np.full((4, 5), 0.5)}, "non-integer"),
        ({"prediction": np.full((4, 5), np.nan)}, "non-integer or non-finite"),
        ({"prediction": np.array(["a"] * 20).reshape(4, 5)}, "integer class labels"),
        ({"prediction": np.zeros(5, dtype=np.int64), "label": np.zeros(5, dtype=np.int64)}, "2D or 3D"),
        ({"prediction": np.zeros((1, 2, 3, 4), dtype=int), "label": np.zeros((1, 2, 3, 4), dtype=int)}, "2D or 3D"),
        ({"prediction": np.zeros((0, 5), dtype=int), "label": np.zeros((0, 5), dtype=int)}, "empty"),
        ({"protocol": "corrected"}, "needs spacing"),
        ({"protocol": "corrected", "spacing": (1.0, 1.0, 1.0)}, "2 positive finite numbers"),
        ({"protocol": "corrected", "spacing": (1.0, 0.0)}, "2 positive finite numbers"),
        ({"protocol": "corrected", "spacing": (1.0, float("nan"))}, "2 positive finite numbers"),
        ({"protocol": "corrected", "spacing": 1.0}, "sequence of 2 positive numbers"),
        ({"spacing": (1.0, -2.0)}, "2 positive finite numbers"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    arguments = {"prediction": np.zeros((4, 5), dtype=np.int64), "label": np.zeros((4, 5), dtype=np.int64)}
    arguments["num_classes"] = 2
    arguments.update(kwargs)
    prediction, label, num_classes = arguments.pop("prediction"), arguments.pop("label"), arguments.pop("num_classes")
    with pytest.raises(ValueError, match=message):
        score_case(prediction, label, num_classes, **arguments)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation.

NAN = float("nan")


def test_legacy_aggregation_arithmetic():
    cases = [
        {1: {"dice": 0.9, "hd95": 2.0}, 2: {"dice": 0.5, "hd95": 6.0}},
        {1: {"dice": 0.7, "hd95": 4.0}, 2: {"dice": 0.0, "hd95": 0.0}},
        {1: {"dice": 1.0, "hd95": 0.0}, 2: {"dice": 1.0, "hd95": 0.0}},
    ]
    result = aggregate(cases, ["background", "liver", "spleen"])
    assert result["protocol"] == "legacy" and result["num_cases"] == 3
    assert result["per_class"][1] == {"name": "liver", "dice": pytest.approx(2.6 / 3), "hd95": 2.0}
    assert result["per_class"][2] == {"name": "spleen", "dice": 0.5, "hd95": 2.0}
    assert result["mean_dice"] == pytest.approx((2.6 / 3 + 0.5) / 2)
    assert result["mean_hd95"] == 2.0
    assert "undefined" not in result


def test_corrected_aggregation_skips_and_counts_nan():
    cases = [
        {1: {"dice": 0.9, "hd95": 2.0}, 2: {"dice": NAN, "hd95": NAN}},
        {1: {"dice": 0.0, "hd95": NAN}, 2: {"dice": NAN, "hd95": NAN}},
        {1: {"dice": 0.6, "hd95": 5.0}, 2: {"dice": NAN, "hd95": NAN}},
        {1: {"dice": NAN, "hd95": NAN}, 2: {"dice": NAN, "hd95": NAN}},
    ]
    result = aggregate(cases, protocol="corrected")
    liver = result["per_class"][1]
    assert liver["name"] == "class_1"
    assert liver["dice"] == pytest.approx(1.5 / 3) and liver["dice_defined"] == 3 and liver["dice_undefined"] == 1
    assert liver["hd95"] == 3.5 and liver["hd95_defined"] == 2 and liver["hd95_undefined"] == 2
    never_present = result["per_class"][2]
    assert math.isnan(never_present["dice"]) and math.isnan(never_present["hd95"])
    assert never_present["dice_undefined"] == 4 and never_present["hd95_defined"] == 0
    # Classes without any defined value do not enter the overall means.
    assert result["mean_dice"] == pytest.approx(0.5) and result["mean_hd95"] == 3.5
    assert result["undefined"] == {"dice": 5, "hd95": 6}


def test_corrected_overall_means_are_nan_when_nothing_is_defined():
    result = aggregate([{1: {"dice": NAN, "hd95": NAN}}], protocol="corrected")
    assert math.isnan(result["mean_dice"]) and math.isnan(result["mean_hd95"])


def test_aggregate_of_scored_cases_end_to_end():
    pred, gt = _empty_rule_case()
    shifted_pred = np.roll(pred, 1, axis=2)
    legacy = aggregate([score_case(pred, gt, 5), score_case(shifted_pred, gt, 5)])
    assert legacy["per_class"][2] == {"name": "class_2", "dice": 1.0, "hd95": 0.0}
    spacing = (1.0, 1.0, 1.0)
    per_case = [score_case(p, gt, 5, protocol="corrected", spacing=spacing) for p in (pred, shifted_pred)]
    corrected = aggregate(per_case, protocol="corrected")
    assert corrected["per_class"][2]["dice"] == 0.0 and corrected["per_class"][2]["hd95_undefined"] == 2


@pytest.mark.parametrize(
    ("cases", "kwargs", "message"),
    [
        ([], {}, "per_case is empty"),
        ([{}], {}, "holds no class"),
        ([{1: {"dice": 0.5, "hd95": 1.0}}, {2: {"dice": 0.5, "hd95": 1.0}}], {}, "case 1 holds classes"),
        ([{1: {"dice": 0.5}}], {}, "no 'hd95' value"),
        ([{1: {"dice": 85.0, "hd95": 1.0}}], {}, r"outside \[0, 1\]"),
        ([{1: {"dice": 0.5, "hd95": -1.0}}], {}, "negative"),
        ([{1: {"dice": NAN, "hd95": NAN}}], {}, "protocol='corrected'"),
        ([{1: {"dice": 0.5, "hd95": 1.0}}], {"class_names": ["liver"]}, "background first"),
        ([{1: {"dice": 0.5, "hd95": 1.0}}], {"class_names": "ab"}, "not a single string"),
        ([{1: {"dice": 0.5, "hd95": 1.0}}], {"protocol": "nnunet"}, "protocol must be one of"),
    ],
)
def test_aggregate_bad_arguments_raise_value_error(cases, kwargs, message):
    with pytest.raises(ValueError, match=message):
        aggregate(cases, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The ignore label: voxels without annotation are left out of both masks.


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ignored_voxels_are_left_out_of_prediction_and_reference(protocol):
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, (4, 20, 20)).astype(np.uint8)
    prediction = label.copy()
    ignored = np.zeros(label.shape, dtype=bool)
    ignored[:, :8] = True
    prediction[ignored] = rng.integers(0, 3, int(ignored.sum()))  # anything where nothing is annotated
    marked = np.where(ignored, 255, label).astype(np.uint8)
    spacing = (2.0, 1.0, 1.0)
    scores = score_case(prediction, marked, 3, protocol=protocol, spacing=spacing, ignore_label=255)
    assert all(scores[c]["dice"] == 1.0 and scores[c]["hd95"] == 0.0 for c in (1, 2))
    # Exactly the scores of the two maps with the ignored voxels made background in both (an independent input).
    prediction[1:3, 12:15, 3:9] = 0  # a real error outside the ignored voxels
    expected = score_case(
        np.where(ignored, 0, prediction), np.where(ignored, 0, label), 3, protocol=protocol, spacing=spacing
    )
    assert score_case(prediction, marked, 3, protocol=protocol, spacing=spacing, ignore_label=255) == expected
    assert expected[1]["dice"] < 1.0 or expected[2]["dice"] < 1.0


def test_an_ignore_label_that_is_a_class_is_refused_and_without_it_255_is_no_class():
    label = np.zeros((6, 6), np.uint8)
    with pytest.raises(ValueError, match="ignore_label 1 is a class id"):
        score_case(label, label, 3, ignore_label=1)
    label[0, 0] = 255
    with pytest.raises(Exception, match=r"outside \[0, 2\]"):
        score_case(label, label, 3)
