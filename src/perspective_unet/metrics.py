"""Per-class Dice and HD95 of a segmented volume, under two explicit protocols.

``score_case`` scores one case (a 3D volume or a 2D image of integer labels) for every foreground class
``1..num_classes-1``; ``aggregate`` turns a list of those per-case tables into per-class and overall means.
Dice is always a fraction in [0, 1]; reports multiply by 100 themselves.

``"legacy"`` reproduces ``calculate_metric_percase`` of TransUNet, Swin-Unet, MISSFormer and Perspective+ Unet
(medpy 0.4 ``dc`` and ``hd95(result, reference, voxelspacing=None, connectivity=1)``), so that numbers can be
compared with the papers. ``"corrected"`` measures in millimeters and keeps undefined values as NaN instead of
inventing them. Per class, with P the predicted mask and G the ground-truth mask:

===============================  ===================  ===========================  ===================
Case                             legacy (Dice, HD95)  corrected Dice               corrected HD95
===============================  ===================  ===========================  ===================
P and G non-empty                (Dice, pooled HD95)  2|P∩G| / (|P| + |G|)        max of directed HD95
P non-empty, G empty             (1, 0)               0.0 (a false positive)       NaN
P empty, G non-empty             (0, 0)               0.0 (a miss)                 NaN
P and G empty                    (0, 0)               NaN                          NaN
===============================  ===================  ===========================  ===================

Surface distances (both protocols):

- A mask's surface is ``mask XOR binary_erosion(mask)`` with the connectivity-1 structuring element
  (``generate_binary_structure(ndim, 1)``: 6 neighbors in 3D, 4 in 2D), one iteration, everything outside the
  array counted as background. A mask of one voxel, or one voxel thick, is all surface.
- The distance of a surface voxel of one mask is the Euclidean distance to the nearest surface voxel of the
  other mask (what a distance transform of the other surface's complement gives).
- legacy: distances in voxel units, ``spacing`` is ignored (validated if given); HD95 is
  ``numpy.percentile(concatenate(d(P->G), d(G->P)), 95)`` with linear interpolation, i.e. the 95th percentile of
  the POOLED distances of both directions, exactly as medpy computes it.
- corrected: distances in the units of ``spacing`` (required, one value per array axis, in the arrays' axis
  order); HD95 is ``max(percentile(d(P->G), 95), percentile(d(G->P), 95))``, the convention of MONAI's
  ``HausdorffDistanceMetric(percentile=95)`` and DeepMind's surface-distance package. The pooled percentile
  dilutes the distances of the direction with fewer surface voxels (for example a small false-positive blob far
  from the organ); the maximum of the directed percentiles does not.

Voxels without annotation (``ignore_label``, nnU-Net's ignore label, in the reference): they are left out of both
masks, the prediction's and the reference's (both protocols). Whatever the prediction holds there counts as neither a
hit, a false positive nor a miss; surfaces are those of the masks outside the ignored voxels.

Aggregation (``aggregate``):

- legacy: per class, the sum over ALL cases divided by the number of cases (no value is skipped); ``mean_dice``
  and ``mean_hd95`` are the unweighted means of the per-class values.
- corrected: per class, the mean over the cases where the value is defined (NaN skipped); the numbers of defined
  and undefined (NaN) values are reported per class and per metric, because a skipped miss is otherwise invisible
  in the HD95 mean. ``mean_dice`` and ``mean_hd95`` are the unweighted means over the classes that have a defined
  per-class value.

Example:
    >>> import numpy as np
    >>> label = np.zeros((4, 16, 16), dtype=np.uint8)
    >>> label[1:3, 4:8, 4:8] = 1
    >>> prediction = np.roll(label, 2, axis=2)
    >>> score_case(prediction, label, num_classes=2)
    {1: {'dice': 0.5, 'hd95': 2.0}}
    >>> score_case(prediction, label, num_classes=2, protocol="corrected", spacing=(5.0, 0.5, 0.5))
    {1: {'dice': 0.5, 'hd95': 1.0}}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_surface_dice
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

from perspective_unet.errors import InputError

__all__ = ["PROTOCOLS", "aggregate", "class_tolerances", "normalized_surface_dice", "score_case", "without_ignored"]

PROTOCOLS = ("legacy", "corrected")

# Squared voxel distances below this bound are recovered exactly from float32 distances (see _surface_distances).
_EXACT_SQUARED_DISTANCE_LIMIT = 2**21


def score_case(
    prediction: Any,
    label: Any,
    num_classes: int,
    *,
    protocol: str = "legacy",
    spacing: Sequence[float] | None = None,
    ignore_label: int | None = None,
) -> dict[int, dict[str, float]]:
    """Dice and HD95 of every foreground class of one case.

    Each class is scored inside the bounding box of the union of its two masks (plus one voxel), so large
    volumes with small organs cost little.

    Args:
        prediction: Predicted labels, a 2D or 3D array of integers in ``[0, num_classes)`` (bool arrays and
            integer-valued float arrays are accepted; take the argmax of probabilities first).
        label: Ground-truth labels, same shape and rules as ``prediction``.
        num_classes: Number of classes, background (0) included; classes ``1..num_classes-1`` are scored.
        protocol: ``"legacy"`` (the papers' medpy rules, voxel units) or ``"corrected"`` (millimeters, NaN for
            undefined values). See the module docstring for every rule.
        spacing: Voxel size along each array axis, in the arrays' axis order (for a (Z, H, W) volume:
            (z, y, x) in mm). Required by ``"corrected"``; validated but not used by ``"legacy"``.
        ignore_label: The value ``label`` marks voxels without annotation with (not a class id); those voxels are left
            out of both masks. None: every voxel is annotated.

    Returns:
        ``{class_id: {"dice": float, "hd95": float}}`` for ``class_id`` in ``1..num_classes-1``.

    Raises:
        ValueError: For an unknown protocol, a bad ``num_classes`` or ``spacing``, arrays of different shapes or
            of other than 2 or 3 dimensions, or labels outside ``[0, num_classes)``.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((32, 32), dtype=np.int64)
        >>> gt[4:12, 4:12] = 1
        >>> gt[20:28, 20:28] = 2
        >>> pred = gt.copy()
        >>> pred[20:28, 20:28] = 0  # class 2 missed
        >>> score_case(pred, gt, 3)
        {1: {'dice': 1.0, 'hd95': 0.0}, 2: {'dice': 0.0, 'hd95': 0.0}}
        >>> score_case(pred, gt, 3, protocol="corrected", spacing=(1.0, 1.0))
        {1: {'dice': 1.0, 'hd95': 0.0}, 2: {'dice': 0.0, 'hd95': nan}}
    """
    _check_protocol(protocol)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
    num_classes = int(num_classes)
    if ignore_label is not None:
        prediction, label = without_ignored(prediction, label, int(ignore_label), num_classes)
    pred = _as_label_array(prediction, "prediction", num_classes)
    gt = _as_label_array(label, "label", num_classes)
    if pred.shape != gt.shape:
        raise InputError(f"prediction and label must have the same shape, got {pred.shape} and {gt.shape}.")
    voxel_size = _check_spacing(spacing, pred.ndim, required=protocol == "corrected")

    # One pass per array finds the bounding box of every class (None for an absent class).
    pred_boxes = ndimage.find_objects(pred, max_label=num_classes - 1)
    gt_boxes = ndimage.find_objects(gt, max_label=num_classes - 1)

    scores: dict[int, dict[str, float]] = {}
    for class_id in range(1, num_classes):
        pred_box, gt_box = pred_boxes[class_id - 1], gt_boxes[class_id - 1]
        if pred_box is None or gt_box is None:
            scores[class_id] = _empty_mask_rule(protocol, pred_empty=pred_box is None, gt_empty=gt_box is None)
            continue
        window = _union_window(pred_box, gt_box, pred.shape, margin=1)
        pred_mask = pred[window] == class_id
        gt_mask = gt[window] == class_id
        dice = _dice(pred_mask, gt_mask)
        if protocol == "legacy":
            hd95 = _hd95(pred_mask, gt_mask, spacing=None, pooled=True)
        else:
            hd95 = _hd95(pred_mask, gt_mask, spacing=voxel_size, pooled=False)
        scores[class_id] = {"dice": dice, "hd95": hd95}
    return scores


def normalized_surface_dice(
    prediction: Any,
    label: Any,
    num_classes: int,
    *,
    spacing: Sequence[float],
    tolerance: float | Sequence[float],
) -> dict[int, float]:
    """The normalized surface Dice (NSD) of every foreground class: MONAI's ``compute_surface_dice``.

    The share of both surfaces (edge voxels, as for HD95) that lies within ``tolerance`` mm of the other surface.
    A class absent from both masks has no NSD (NaN); a class in only one of them scores 0. Each class is computed
    inside the bounding box of its two masks plus one voxel, which changes neither surface nor distance.

    Args:
        prediction: Predicted labels, as for :func:`score_case`.
        label: Ground-truth labels, same shape.
        num_classes: Number of classes, background included.
        spacing: Voxel size along each array axis (mm), in the arrays' axis order.
        tolerance: The accepted distance in mm: one for every class, or one per foreground class ``1..C-1``.

    Returns:
        ``{class_id: nsd}`` for ``class_id`` in ``1..num_classes-1``, each in [0, 1] or NaN.

    Raises:
        ValueError: Bad ``spacing`` or ``tolerance``, or the inputs :func:`score_case` refuses.

    Example:
        >>> import numpy as np
        >>> label = np.zeros((8, 8), dtype=np.uint8)
        >>> label[2:6, 2:6] = 1
        >>> normalized_surface_dice(np.roll(label, 1, axis=1), label, 2, spacing=(1.0, 1.0), tolerance=1.0)
        {1: 1.0}
    """
    pred = _as_label_array(prediction, "prediction", int(num_classes))
    gt = _as_label_array(label, "label", int(num_classes))
    if pred.shape != gt.shape:
        raise InputError(f"prediction and label must have the same shape, got {pred.shape} and {gt.shape}.")
    voxel_size = _check_spacing(spacing, pred.ndim, required=True)
    tolerances = class_tolerances(tolerance, int(num_classes))
    pred_boxes = ndimage.find_objects(pred, max_label=num_classes - 1)
    gt_boxes = ndimage.find_objects(gt, max_label=num_classes - 1)
    scores: dict[int, float] = {}
    for class_id in range(1, num_classes):
        pred_box, gt_box = pred_boxes[class_id - 1], gt_boxes[class_id - 1]
        if pred_box is None or gt_box is None:
            scores[class_id] = math.nan if pred_box is None and gt_box is None else 0.0
            continue
        window = _union_window(pred_box, gt_box, pred.shape, margin=1)
        masks = [torch.from_numpy(np.ascontiguousarray(a[window] == class_id)) for a in (pred, gt)]
        one_hot = [torch.stack([~mask, mask])[None] for mask in masks]
        with warnings.catch_warnings():  # MONAI passes a deprecated argument to itself
            warnings.simplefilter("ignore", FutureWarning)
            value = compute_surface_dice(*one_hot, [tolerances[class_id]], spacing=voxel_size)
        scores[class_id] = float(value[0, 0])
    return scores


def class_tolerances(tolerance: float | Sequence[float], num_classes: int) -> dict[int, float]:
    """One NSD tolerance (mm) per foreground class from one value or one per class ``1..num_classes-1``.

    Raises:
        ValueError: Another number of values, or a value that is negative or not finite.
    """
    values = [tolerance] if isinstance(tolerance, (int, float)) else list(tolerance)
    if len(values) == 1:
        values = values * (num_classes - 1)
    if len(values) != num_classes - 1:
        raise ValueError(
            f"give one NSD tolerance for every class or one per foreground class ({num_classes - 1}), got "
            f"{len(values)}."
        )
    out = {}
    for class_id, value in enumerate(values, start=1):
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"NSD tolerances must be finite and >= 0 (mm), got {value} for class {class_id}.")
        out[class_id] = value
    return out


def aggregate(
    per_case: Sequence[Mapping[int, Mapping[str, float]]],
    class_names: Sequence[str] | None = None,
    *,
    protocol: str = "legacy",
) -> dict[str, Any]:
    """Per-class and overall means of per-case scores.

    Args:
        per_case: One ``score_case`` result per case; every case must hold the same class ids.
        class_names: Names indexed by class id, background included (``class_names[0]`` is the background), so
            its length is at least the largest class id + 1. ``None`` names the classes ``class_<id>``.
        protocol: ``"legacy"``: per class, sum over all cases / number of cases, and NaN is an error (legacy
            scores never hold NaN). ``"corrected"``: per class, the mean over the defined (non-NaN) values, with the
            numbers of defined and undefined values reported apart.

    Returns:
        A dict with ``protocol``, ``num_cases``, ``per_class`` (``{class_id: {"name", "dice", "hd95", ...}}``, the
        corrected protocol adding ``dice_defined``, ``dice_undefined``, ``hd95_defined`` and ``hd95_undefined``),
        ``mean_dice`` and ``mean_hd95`` (unweighted means over classes; under ``"corrected"`` over the classes
        with a defined value, NaN if there is none), and under ``"corrected"`` also ``undefined``: the total
        numbers of NaN values per metric.

    Raises:
        ValueError: For an empty ``per_case``, cases with different class ids, missing metrics, Dice outside
            [0, 1], negative HD95, NaN under ``"legacy"``, too few class names or an unknown protocol.

    Example:
        >>> cases = [{1: {"dice": 0.8, "hd95": 4.0}}, {1: {"dice": 0.6, "hd95": float("nan")}}]
        >>> aggregate(cases, ["background", "liver"], protocol="corrected")["per_class"][1]["hd95"]
        4.0
        >>> aggregate([{1: {"dice": 0.8, "hd95": 4.0}}, {1: {"dice": 0.0, "hd95": 0.0}}])["mean_hd95"]
        2.0
    """
    _check_protocol(protocol)
    if len(per_case) == 0:
        raise ValueError("per_case is empty: there is nothing to aggregate.")
    class_ids = sorted(per_case[0])
    if not class_ids:
        raise ValueError("the first case holds no class: expected {class_id: {'dice': ..., 'hd95': ...}}.")
    for index, case in enumerate(per_case):
        if sorted(case) != class_ids:
            raise ValueError(f"case {index} holds classes {sorted(case)}, but case 0 holds {class_ids}.")
    names = _class_names(class_names, class_ids)

    per_class: dict[int, dict[str, Any]] = {}
    undefined = {"dice": 0, "hd95": 0}
    for class_id in class_ids:
        entry: dict[str, Any] = {"name": names[class_id]}
        for metric in ("dice", "hd95"):
            values = [_metric_value(case, class_id, metric, index) for index, case in enumerate(per_case)]
            defined = [v for v in values if not math.isnan(v)]
            if protocol == "legacy":
                if len(defined) != len(values):
                    raise ValueError(
                        f"{metric} of class {class_id} is NaN in {len(values) - len(defined)} case(s); legacy "
                        "scores never hold NaN. Aggregate corrected scores with protocol='corrected'."
                    )
                entry[metric] = sum(values) / len(values)
            else:
                entry[metric] = sum(defined) / len(defined) if defined else math.nan
                entry[f"{metric}_defined"] = len(defined)
                entry[f"{metric}_undefined"] = len(values) - len(defined)
                undefined[metric] += len(values) - len(defined)
        per_class[class_id] = entry

    result: dict[str, Any] = {"protocol": protocol, "num_cases": len(per_case), "per_class": per_class}
    for metric in ("dice", "hd95"):
        class_means = [entry[metric] for entry in per_class.values() if not math.isnan(entry[metric])]
        result[f"mean_{metric}"] = sum(class_means) / len(class_means) if class_means else math.nan
    if protocol == "corrected":
        result["undefined"] = undefined
    return result


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")


def without_ignored(prediction: Any, label: Any, ignore_label: int, num_classes: int) -> tuple[Any, Any]:
    """Prediction and label with the voxels the label marks ``ignore_label`` set to background in both.

    Raises:
        ValueError: ``ignore_label`` is a class id.
    """
    if 0 <= ignore_label < num_classes:
        raise ValueError(f"ignore_label {ignore_label} is a class id (0..{num_classes - 1}); it must lie outside them.")
    pred, gt = np.asarray(prediction), np.asarray(label)
    if pred.shape != gt.shape:
        return pred, gt  # refused with the shapes by the checks that follow
    ignored = gt == ignore_label
    if not ignored.any():
        return pred, gt
    return np.where(ignored, 0, pred), np.where(ignored, 0, gt)


def _as_label_array(array: Any, name: str, num_classes: int) -> np.ndarray:
    """Validated integer label array (bool and integer-valued floats are converted)."""
    labels = np.asarray(array)
    if labels.ndim not in (2, 3):
        raise InputError(f"{name} must be a 2D or 3D label array, got {labels.ndim} dimension(s) {labels.shape}.")
    if labels.size == 0:
        raise InputError(f"{name} is empty (shape {labels.shape}).")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    elif np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise InputError(
                f"{name} holds non-integer or non-finite values ({labels.dtype}); pass class labels, e.g. the "
                "argmax over the class axis of probabilities."
            )
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name} must hold integer class labels, got dtype {labels.dtype}.")
    low, high = labels.min(), labels.max()
    if low < 0 or high >= num_classes:
        raise InputError(
            f"{name} holds labels in [{low}, {high}], outside [0, {num_classes - 1}] for num_classes={num_classes}."
        )
    return labels


def _check_spacing(spacing: Sequence[float] | None, ndim: int, *, required: bool) -> tuple[float, ...] | None:
    if spacing is None:
        if required:
            raise ValueError(
                "protocol='corrected' measures HD95 in mm and needs spacing: one voxel size per array axis, in the "
                "arrays' axis order."
            )
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a sequence of {ndim} positive numbers, got {spacing!r}.") from None
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (one per array axis), got {spacing!r}.")
    return values


def _empty_mask_rule(protocol: str, *, pred_empty: bool, gt_empty: bool) -> dict[str, float]:
    """The fixed scores of a class whose predicted or ground-truth mask is empty (module docstring table)."""
    if protocol == "legacy":
        # calculate_metric_percase: a prediction without ground truth counts as perfect, an empty one as (0, 0).
        return {"dice": 1.0, "hd95": 0.0} if gt_empty and not pred_empty else {"dice": 0.0, "hd95": 0.0}
    if pred_empty and gt_empty:
        return {"dice": math.nan, "hd95": math.nan}
    return {"dice": 0.0, "hd95": math.nan}


def _union_window(
    box_a: tuple[slice, ...], box_b: tuple[slice, ...], shape: tuple[int, ...], margin: int
) -> tuple[slice, ...]:
    """Bounding box of two boxes, grown by ``margin`` and clipped to the array."""
    return tuple(
        slice(max(min(a.start, b.start) - margin, 0), min(max(a.stop, b.stop) + margin, size))
        for a, b, size in zip(box_a, box_b, shape)
    )


def _dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    overlap = int(np.count_nonzero(pred_mask & gt_mask))
    return 2.0 * overlap / int(np.count_nonzero(pred_mask) + np.count_nonzero(gt_mask))


def _surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of one mask to the other mask's surface, both directions (float64).

    MONAI computes the same quantity as medpy (checked against independent implementations in the tests):
    ``get_mask_edges(..., spacing=None)`` returns ``mask ^ scipy.ndimage.binary_erosion(mask)`` with scipy's
    default structure (connectivity 1), one iteration and border value 0, as medpy does; ``get_surface_distance``
    returns the exact Euclidean distance to the nearest voxel of the other surface (scaled by ``spacing``), which
    is what medpy reads from ``distance_transform_edt(~other_surface)``. The masks are already cropped by the
    caller, so MONAI's own cropping is off; cropping changes neither the surfaces nor the nearest distances
    because all surface voxels lie inside the crop and the array border already counts as background.
    """
    edges_pred, edges_gt = get_mask_edges(pred_mask, gt_mask, crop=False)
    to_gt = np.asarray(get_surface_distance(edges_pred, edges_gt, distance_metric="euclidean", spacing=spacing))
    to_pred = np.asarray(get_surface_distance(edges_gt, edges_pred, distance_metric="euclidean", spacing=spacing))
    to_gt, to_pred = to_gt.astype(np.float64), to_pred.astype(np.float64)
    # MONAI returns float32. In voxel units every distance is the square root of an integer, so while squared
    # distances stay below 2**21 (a float32 error under 0.25) rounding the square recovers medpy's float64 value
    # exactly; beyond that the distances keep float32 precision (relative error about 6e-8).
    if spacing is None and sum((n - 1) ** 2 for n in pred_mask.shape) < _EXACT_SQUARED_DISTANCE_LIMIT:
        to_gt, to_pred = np.sqrt(np.rint(to_gt**2)), np.sqrt(np.rint(to_pred**2))
    return to_gt, to_pred


def _hd95(pred_mask: np.ndarray, gt_mask: np.ndarray, *, spacing: tuple[float, ...] | None, pooled: bool) -> float:
    """HD95 of two non-empty masks: pooled 95th percentile (medpy) or the max of the directed ones (MONAI)."""
    to_gt, to_pred = _surface_distances(pred_mask, gt_mask, spacing)
    if pooled:
        return float(np.percentile(np.concatenate([to_gt, to_pred]), 95))
    return float(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))


def _class_names(class_names: Sequence[str] | None, class_ids: list[int]) -> dict[int, str]:
    if class_names is None:
        return {class_id: f"class_{class_id}" for class_id in class_ids}
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names indexed by class id, not a single string.")
    if len(class_names) <= max(class_ids):
        raise ValueError(
            f"class_names has {len(class_names)} name(s) but class id {max(class_ids)} occurs; give one name per "
            "class id with the background first (class_names[0])."
        )
    return {class_id: str(class_names[class_id]) for class_id in class_ids}


def _metric_value(case: Mapping[int, Mapping[str, float]], class_id: int, metric: str, index: int) -> float:
    scores = case[class_id]
    if metric not in scores:
        raise ValueError(f"case {index}, class {class_id} has no {metric!r} value (keys {sorted(scores)}).")
    value = float(scores[metric])
    if metric == "dice" and not (math.isnan(value) or 0.0 <= value <= 1.0):
        raise ValueError(f"case {index}, class {class_id}: Dice {value} is outside [0, 1] (pass fractions, not %).")
    if metric == "hd95" and value < 0.0:
        raise ValueError(f"case {index}, class {class_id}: HD95 {value} is negative.")
    return value
