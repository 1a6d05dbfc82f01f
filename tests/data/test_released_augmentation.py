"""The released code's blur, piecewise warp and augmentation stream, against outputs recorded from that code
(fixtures/released_outputs, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perspective_unet.config.augmentation import AugmentationConfig
from perspective_unet.data.augmentation import (
    RandAffineOpd,
    RandLinearContrastd,
    RandPiecewiseAffined,
    build_augmentation,
    released_blur_kernel_size,
    triangulated_warp_coordinates,
)
from perspective_unet.data.datasets import SliceDataset

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "released_outputs"


def _only(operation: str, **overrides) -> AugmentationConfig:
    """Exactly one operation, always firing."""
    return AugmentationConfig(min_ops=1, max_ops=1, operations=(operation,), **{f"{operation}_prob": 1.0}, **overrides)


def _sample(image: np.ndarray, label: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    label = np.zeros_like(image) if label is None else label
    return {
        "image": torch.from_numpy(image.astype(np.float32))[None],
        "label": torch.from_numpy(label.astype(np.float32))[None],
    }


def _plain(tensor: torch.Tensor) -> np.ndarray:
    return np.asarray(torch.as_tensor(tensor).detach().cpu().numpy())


@pytest.mark.parametrize(("sigma", "key"), [(1.0, "sigma1"), (2.0, "sigma2")])
def test_released_blur_equals_the_recorded_imgaug_blur(sigma: float, key: str) -> None:
    recorded = np.load(RECORDED / "gaussian_blur.npz")
    image = recorded["image"]
    released = build_augmentation(_only("blur", blur_sigma=sigma, blur_filter="released"))(_sample(image))
    np.testing.assert_allclose(_plain(released["image"])[0], recorded[key], rtol=0, atol=1e-6)
    # The project's default blur pads with zeros: far apart at a bright border, close inside.
    default = _plain(build_augmentation(_only("blur", blur_sigma=sigma))(_sample(image))["image"])[0]
    assert np.abs(default - recorded[key]).max() > 0.3
    assert np.abs(default - recorded[key])[6:-6, 6:-6].max() < 0.02


def test_released_blur_kernel_sizes_follow_imgaug_rule() -> None:
    sizes = {sigma: released_blur_kernel_size(sigma) for sigma in (0.5, 1.0, 1.6, 2.0, 3.0, 4.0, 5.0, 6.0)}
    assert sizes == {0.5: 5, 1.0: 5, 1.6: 5, 2.0: 7, 3.0: 9, 4.0: 11, 5.0: 13, 6.0: 15}


@pytest.mark.parametrize("case", range(5))
def test_released_piecewise_warp_equals_the_recorded_imgaug_warp(case: int) -> None:
    recorded = np.load(RECORDED / "piecewise_affine.npz")
    rows, columns = int(recorded[f"case{case}_rows"]), int(recorded[f"case{case}_cols"])
    jitter = recorded[f"case{case}_jitter"]
    warp = RandPiecewiseAffined(["image", "label"], 1.0, (0.01, 0.01), construction="released")
    # The recorded draw, in this transform's form: unit shifts per axis times the scale.
    warp.grid_shape, warp.scale, warp.jitter = (rows, columns), 1.0, jitter.T.reshape(2, rows, columns)
    out = warp.warp(_sample(recorded["image"], recorded["label"]))
    np.testing.assert_allclose(_plain(out["image"])[0], recorded[f"case{case}_image"], rtol=0, atol=5e-6)
    np.testing.assert_array_equal(_plain(out["label"])[0], recorded[f"case{case}_label"])
    assert not np.array_equal(recorded[f"case{case}_label"], recorded["label"])  # the warp moved the label


def test_triangulated_warp_without_a_positive_shift_leaves_the_image_alone() -> None:
    assert triangulated_warp_coordinates((10, 12), 2, 3, -np.abs(np.random.default_rng(0).normal(size=(6, 2)))) is None


def test_triangulated_warp_with_vanishing_shifts_pulls_the_far_edges_in_by_a_pixel() -> None:
    # The control points span 0 to the side length and are clipped to the last pixel: with a 2 x 2 grid the warp
    # is then the affine map that takes the side length to the last pixel.
    coordinates = triangulated_warp_coordinates((10, 12), 2, 2, np.full((4, 2), 1e-12))
    rows, columns = np.mgrid[0:10, 0:12]
    np.testing.assert_allclose(coordinates, np.stack([rows * 9 / 10, columns * 11 / 12]), atol=1e-9)


def test_released_piecewise_draws_the_recorded_grid_sizes() -> None:
    counts = json.loads((RECORDED / "piecewise_grid_counts.json").read_text())
    warp = RandPiecewiseAffined(["image"], 1.0, (0.008, 0.03), construction="released").set_random_state(0)
    draws = []
    for _ in range(counts["draws"]):
        warp.randomize()
        draws.append(warp.grid_shape)
        assert 0.008 <= warp.scale <= 0.03 and warp.jitter.shape == (2, *warp.grid_shape)
    for axis, name in ((0, "rows"), (1, "cols")):
        ours = {str(v): sum(d[axis] == v for d in draws) for v in (2, 3, 4)}
        assert set(ours) == set(counts[name])
        for value, count in counts[name].items():  # uniform over 2..4: both near 1000 of 3000
            assert abs(ours[value] - count) < 150, (name, value, ours, counts[name])


# The recorded imgaug augmenters' parameters in this project's terms: (kind, (first, second)), where the first value
# acts on rows (y) and the second on columns (x).
AFFINE = {
    "scale": ("scale", (0.8, 1.5)),
    "rotate": ("rotate", (30.0, 0.0)),
    "shear": ("shear", (10.0, 0.0)),
    "translate": ("translate", (-0.05, 0.1)),
}


@pytest.mark.parametrize("name", AFFINE)
def test_affine_operations_match_imgaug_but_for_opencv_resampling(name: str) -> None:
    recorded = np.load(RECORDED / "affine_operations.npz")[name]
    image = np.load(RECORDED / "gaussian_blur.npz")["image"]
    kind, values = AFFINE[name]
    operation = RandAffineOpd(["image"], kind, 1.0, (0.0, 0.0), label_keys=())
    operation.values = values
    difference = np.abs(_plain(operation.warp(_sample(image))["image"])[0] - recorded)
    # Same geometry and direction; OpenCV rounds its bilinear weights to 1/32 (and treats the border its own way).
    assert difference[8:-8, 8:-8].max() < 0.003 and difference.max() < 0.02, name
    if kind in ("rotate", "shear"):
        operation.values = (-values[0], 0.0)
        assert np.abs(_plain(operation.warp(_sample(image))["image"])[0] - recorded).max() > 0.2


def test_flips_and_gain_contrast_equal_imgaugs() -> None:
    recorded = np.load(RECORDED / "affine_operations.npz")
    image = np.load(RECORDED / "gaussian_blur.npz")["image"]
    for name, operation in (("vflip", "flipud"), ("hflip", "fliplr")):
        out = build_augmentation(_only(name))(_sample(image))
        np.testing.assert_array_equal(_plain(out["image"])[0], recorded[operation])
    contrast = RandLinearContrastd("image", 1.0, (1.3, 1.3), center=0.0)
    np.testing.assert_allclose(_plain(contrast(_sample(image))["image"])[0], recorded["contrast"], rtol=0, atol=1e-6)


def _identical_slices(root: Path, count: int, size: int = 16, sizes: dict[int, int] | None = None) -> Path:
    """A Synapse-style folder of ``count`` identical training slices (``sizes`` gives some another side)."""
    (root / "train_npz").mkdir(parents=True)
    for index in range(count):
        side = (sizes or {}).get(index, size)
        image = np.random.default_rng(0).random((side, side)).astype(np.float32)
        np.savez(root / "train_npz" / f"case0005_slice{index:03d}.npz", image=image, label=(image > 0.6) * 1.0)
    return root


NOISE_ONLY = dict(min_ops=1, max_ops=1, operations=("noise",), noise_prob=1.0, noise_std=0.1)


def test_released_stream_restarts_its_sequence_at_every_reseed(tmp_path: Path) -> None:
    root = _identical_slices(tmp_path / "data", 6)
    released = SliceDataset(root, img_size=16, augmentation=AugmentationConfig(**NOISE_ONLY, stream="released"))
    first = [released[i]["image"] for i in range(6)]
    released.reseed(17)  # a worker's or an epoch's seed changes nothing
    again = [released[i]["image"] for i in (5, 4, 3, 2, 1, 0)]  # other slices in another order: the same draws
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({a.numpy().tobytes() for a in first}) == 6
    fresh = SliceDataset(root, img_size=16, augmentation=AugmentationConfig(**NOISE_ONLY))
    one = [fresh[i]["image"] for i in range(3)]
    fresh.reseed(17)
    assert not any(torch.equal(a, fresh[i]["image"]) for i, a in enumerate(one))


def test_released_stream_draws_do_not_depend_on_earlier_images(tmp_path: Path) -> None:
    # Slice 1 is larger: augmenting it first uses more random numbers than slice 0 does.
    root = _identical_slices(tmp_path / "data", 3, sizes={1: 24})
    for stream, same in (("released", True), ("fresh", False)):
        config = AugmentationConfig(**NOISE_ONLY, before_resize=True, stream=stream)
        after_small, after_large = (SliceDataset(root, img_size=16, augmentation=config) for _ in range(2))
        after_small[0], after_large[1]
        assert torch.equal(after_small[2]["image"], after_large[2]["image"]) is same, stream


def test_stream_option_is_checked() -> None:
    with pytest.raises(ValueError, match="stream"):
        AugmentationConfig(stream="per_worker")
    with pytest.raises(ValueError, match="blur_filter"):
        AugmentationConfig(blur_filter="opencv")
    with pytest.raises(ValueError, match="piecewise_warp"):
        AugmentationConfig(piecewise_warp=1)
