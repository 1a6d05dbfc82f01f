"""The paper's augmentation: image and label stay aligned under every operation; 0-4 ops in random order; seeds."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from perspective_unet.config.checks import OPERATIONS
from perspective_unet.data import AugmentationConfig, build_augmentation

GEOMETRIC = ("vflip", "hflip", "scale", "rotate", "shear", "piecewise", "translate")


def _blocks(size: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """An image of bright rectangles (0.9) on a dark background (0.1) and the label drawn from it (image > 0.5)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 0.1, dtype=np.float32)
    for _ in range(5):
        top, left = rng.integers(4, size - 16, 2)
        height, width = rng.integers(5, 14, 2)
        image[top : top + height, left : left + width] = 0.9
    return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy((image > 0.5).astype(np.float32))[None]}


def _only(operation: str, **overrides) -> AugmentationConfig:
    """Exactly one operation, always firing."""
    probabilities = {f"{op}_prob": 1.0 for op in OPERATIONS}
    return AugmentationConfig(min_ops=1, max_ops=1, operations=(operation,), **{**probabilities, **overrides})


def _plain(tensor: torch.Tensor) -> np.ndarray:
    return np.asarray(torch.as_tensor(tensor).detach().cpu().numpy())


@pytest.mark.parametrize("operation", GEOMETRIC)
def test_geometric_operations_keep_label_equal_to_image_threshold(operation: str) -> None:
    sample = _blocks()
    augment = build_augmentation(_only(operation, image_mode="nearest")).set_random_state(1)
    for _ in range(3):
        out = augment(dict(sample))
        image, label = _plain(out["image"]), _plain(out["label"])
        assert image.shape == label.shape == (1, 48, 48)
        assert np.array_equal(label, (image > 0.5).astype(np.float32)), operation
        assert not np.array_equal(image, _plain(sample["image"])), f"{operation} changed nothing"
        assert set(np.unique(label)) <= {0.0, 1.0}


@pytest.mark.parametrize("operation", GEOMETRIC)
def test_geometric_operations_with_bilinear_images_stay_aligned(operation: str) -> None:
    sample = _blocks(seed=2)
    out = build_augmentation(_only(operation)).set_random_state(3)(dict(sample))
    agreement = (_plain(out["label"]) == (_plain(out["image"]) > 0.5)).mean()
    assert agreement > 0.97, f"{operation}: label and image disagree on {1 - agreement:.1%} of pixels"


@pytest.mark.parametrize("operation", ["noise", "blur", "contrast"])
def test_intensity_operations_leave_the_label_alone(operation: str) -> None:
    sample = _blocks(seed=4)
    out = build_augmentation(_only(operation, noise_std=0.05)).set_random_state(5)(dict(sample))
    assert np.array_equal(_plain(out["label"]), _plain(sample["label"]))
    assert not np.allclose(_plain(out["image"]), _plain(sample["image"]))
    if operation == "contrast":  # a contrast pivoting on 0.5 keeps the 0.5 threshold
        assert np.array_equal(_plain(out["label"]), (_plain(out["image"]) > 0.5).astype(np.float32))


def test_zero_to_four_distinct_operations_in_random_order() -> None:
    augment = build_augmentation(AugmentationConfig()).set_random_state(0)
    applied: list[str] = []
    augment.transforms = [_Recorder(t, n, applied) for t, n in zip(augment.transforms, OPERATIONS)]
    sample = _blocks(size=24)
    counts = collections.Counter()
    orders = set()
    for _ in range(120):
        applied.clear()
        augment(dict(sample))
        assert len(applied) == len(set(applied)) <= 4
        counts[len(applied)] += 1
        if len(applied) >= 2:
            orders.add(tuple(applied[:2]))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert any(tuple(reversed(pair)) in orders for pair in orders), "both orders of some pair occur"


class _Recorder:
    """Wraps a transform and records its name when called."""

    def __init__(self, transform, name: str, log: list[str]) -> None:
        self.transform, self.name, self.log = transform, name, log

    def __call__(self, data):
        self.log.append(self.name)
        return self.transform(data)


def test_same_seed_same_output() -> None:
    sample = _blocks(seed=6)
    first = build_augmentation(AugmentationConfig(min_ops=4)).set_random_state(42)
    second = build_augmentation(AugmentationConfig(min_ops=4)).set_random_state(42)
    for _ in range(5):
        a, b = first(dict(sample)), second(dict(sample))
        assert np.array_equal(_plain(a["image"]), _plain(b["image"]))
        assert np.array_equal(_plain(a["label"]), _plain(b["label"]))


def test_config_validation_and_round_trip() -> None:
    config = AugmentationConfig(rotate_degrees=10.0, operations=("rotate", "hflip"), max_ops=2)
    assert AugmentationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown augmentation operations"):
        AugmentationConfig(operations=("twirl",))
    with pytest.raises(ValueError, match="rotate_prob"):
        AugmentationConfig(rotate_prob=1.5)
    with pytest.raises(ValueError, match="min_ops"):
        AugmentationConfig(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="Unknown augmentation options"):
        AugmentationConfig.from_dict({"rotation": 3})


# The released recipe's options -----------------------------------------------------------------------------------


def test_contrast_pivot_zero_is_a_pure_gain_and_the_default_pivots_on_mid_gray() -> None:
    sample = _blocks(seed=7)
    original = _plain(sample["image"])
    for pivot in (0.0, 0.5):
        out = _plain(
            build_augmentation(_only("contrast", contrast_pivot=pivot)).set_random_state(8)(dict(sample))["image"]
        )
        factor = (out - pivot) / (original - pivot)
        assert np.allclose(factor, factor.flat[0], atol=1e-5) and not np.isclose(factor.flat[0], 1.0), pivot


def test_noise_std_is_the_standard_deviation_in_units_of_the_unit_range() -> None:
    sample = {"image": torch.full((1, 128, 128), 0.5), "label": torch.zeros(1, 128, 128)}
    out = build_augmentation(_only("noise", noise_std=1.275)).set_random_state(9)(dict(sample))
    assert float((out["image"] - 0.5).std()) == pytest.approx(1.275, rel=0.02)


@pytest.mark.parametrize("before_resize", [False, True])
def test_before_resize_augments_the_stored_slice_then_zooms(prepared_synapse, before_resize) -> None:
    from perspective_unet.data import SliceDataset

    root, _ = prepared_synapse
    config = _only("hflip", before_resize=before_resize)
    dataset = SliceDataset(root, "train", img_size=(32, 32), augmentation=config)
    seen = []
    augment = dataset._augment
    dataset._augment = lambda data: seen.append(tuple(data["image"].shape)) or augment(data)
    item = dataset[0]
    stored = dataset.load_slice(0)[0].shape
    assert seen == [(1, *stored)] if before_resize else seen == [(1, 32, 32)]
    assert tuple(item["image"].shape) == (1, 32, 32)
    # A horizontal flip commutes with the zoom: both orders give the same flipped slice.
    plain = SliceDataset(root, "train", img_size=(32, 32))[0]["image"]
    torch.testing.assert_close(item["image"], plain.flip(-1), atol=1e-5, rtol=1e-5)


def test_settings_are_the_config_modules_and_checked_by_type() -> None:
    from perspective_unet import config
    from perspective_unet.config.augmentation import SpacingAugmentationConfig

    assert AugmentationConfig is config.AugmentationConfig and OPERATIONS is config.OPERATIONS
    assert SpacingAugmentationConfig is config.SpacingAugmentationConfig
    with pytest.raises(ValueError, match="^before_resize must be true or false"):
        AugmentationConfig(before_resize="false")
    with pytest.raises(ValueError, match="^rotate_prob must be a number"):
        AugmentationConfig.from_dict({"rotate_prob": "0.5"})
    with pytest.raises(ValueError, match="^blur_sigma must be a list"):
        SpacingAugmentationConfig.from_dict({"blur_sigma": 1.0})
