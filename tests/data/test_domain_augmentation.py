"""Appearance augmentation for unseen domains: each operation on its own, the settings, both protocols' hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from perspective_unet.config.augmentation import AugmentationConfig, SpacingAugmentationConfig
from perspective_unet.config.train import TrainConfig
from perspective_unet.data.datasets import SliceDataset
from perspective_unet.data.domain_augmentation import (
    RANGE_KEY,
    RandAppearanceMixd,
    RandGlobalIntensityNonlineard,
    RandOrganShiftd,
    build_domain_augmentation,
    match_moments,
    random_network_appearance,
)
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.patches import PatchDataset
from perspective_unet.intensity import IntensitySpec

HEIGHT, WIDTH = 37, 42  # odd and unequal sides


def phantom(seed: int = 0, channels: int = 1) -> dict[str, torch.Tensor]:
    """A CT-like sample in stored units: background 0.3, a disc (class 1) at 0.55, a bar (class 2) at 0.55, a square
    (class 3) at 0.7, mild noise, and the label as floats (1, H, W) as the datasets hand it over."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    label = np.zeros((HEIGHT, WIDTH), np.float32)
    label[(rows - 12) ** 2 + (cols - 12) ** 2 <= 36] = 1
    label[24:30, 5:36] = 2
    label[5:15, 25:37] = 3
    image = np.choose(label.astype(int), [0.3, 0.55, 0.55, 0.7]).astype(np.float32)
    image = np.clip(image + rng.normal(0, 0.02, (channels, HEIGHT, WIDTH)), 0, 1).astype(np.float32)
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]}


OPERATIONS = {
    "organ_shift": lambda: RandOrganShiftd(1.0, (-0.3, 0.5), sigma=1.0),
    "gin": lambda: RandGlobalIntensityNonlineard(1.0, layers=4, channels=2, mix_range=(0.5, 1.0)),
    "ipa": lambda: RandAppearanceMixd(1.0, grid=4),
}


def run(name: str, seed: int, data: dict) -> dict:
    return OPERATIONS[name]().set_random_state(seed)(dict(data))


def histogram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Earth mover's distance between the intensity histograms of two images (in their units)."""
    return float(stats.wasserstein_distance(a.flatten().numpy(), b.flatten().numpy()))


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("channels", [1, 3])
def test_labels_and_geometry_are_kept_exactly(name, channels):
    data = phantom(channels=channels)
    label = data["label"].clone()
    out = run(name, 0, {**data, RANGE_KEY: (0.0, 1.0)})
    assert out["label"] is data["label"] and torch.equal(out["label"], label)
    assert out["image"].shape == (channels, HEIGHT, WIDTH) and out["image"].dtype == torch.float32
    assert torch.isfinite(out["image"]).all()


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_reproducible_from_the_seed(name):
    data = {**phantom(), RANGE_KEY: (0.0, 1.0)}
    first, second, other = run(name, 3, data), run(name, 3, data), run(name, 4, data)
    assert torch.equal(first["image"], second["image"])
    assert not torch.equal(first["image"], other["image"])
    # The whole pipeline too, with the switch on and each probability below one.
    cfg = SpacingAugmentationConfig(domain_generalization=True)
    pipeline = [build_domain_augmentation(cfg).set_random_state(9) for _ in range(2)]
    draws = [[p(dict(data))["image"] for _ in range(6)] for p in pipeline]
    assert all(torch.equal(a, b) for a, b in zip(*draws))
    assert not all(torch.equal(draws[0][0], d) for d in draws[0][1:]), "every call draws anew"


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-2.1, 12.4)])
def test_output_stays_within_the_normalizations_range(name, value_range):
    low, high = value_range
    base = phantom()
    for seed in range(12):
        image = low + base["image"] * (high - low)  # the phantom in this range's units
        out = run(name, seed, {"image": image, "label": base["label"], RANGE_KEY: value_range})["image"]
        assert float(out.min()) >= low and float(out.max()) <= high


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_without_a_range_the_inputs_own_extremes_bound_the_output(name):
    data = phantom()
    for seed in range(8):
        out = run(name, seed, data)["image"]
        assert float(out.min()) >= float(data["image"].min()) and float(out.max()) <= float(data["image"].max())


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_appearance_changes(name):
    data = {**phantom(), RANGE_KEY: (0.0, 1.0)}
    distances = [histogram_distance(run(name, seed, data)["image"], data["image"]) for seed in range(10)]
    # The phantom's intensities spread with a standard deviation of about 0.13: most draws move the histogram by a
    # sizable part of it.
    assert np.median(distances) > 0.02, distances


def test_organ_shift_moves_each_structure_by_its_own_amount_and_keeps_the_background():
    data = {**phantom(), RANGE_KEY: (-1.0, 3.0)}  # wide: no clipping, so the shifts are exact
    shifts = []
    for seed in range(6):
        transform = RandOrganShiftd(1.0, (-0.25, 0.25), sigma=0.0).set_random_state(seed)
        delta = (transform(dict(data))["image"] - data["image"])[0]
        label = data["label"][0]
        assert torch.count_nonzero(delta[label == 0]) == 0
        per_class = []
        for c in (1, 2, 3):
            values = delta[label == c]
            assert torch.allclose(values, values[0].expand_as(values), atol=1e-6)  # one shift per structure
            assert abs(float(values[0])) <= 0.25 * 4.0 + 1e-6  # a fraction of the range's width 4
            per_class.append(float(values[0]))
        shifts.append(per_class)
    shifts = np.array(shifts)
    # Disc and bar start equally bright; independent shifts set them apart, by different amounts in different draws.
    assert np.all(np.abs(shifts[:, 0] - shifts[:, 1]) > 1e-4)
    assert np.std(shifts[:, 0] - shifts[:, 2]) > 0.1
    # Softened edges: with sigma 1 the background next to a structure moves a little, the far background not at all.
    soft = RandOrganShiftd(1.0, (0.5, 0.5), sigma=1.0).set_random_state(0)(dict(data))["image"][0] - data["image"][0]
    assert 0 < float(soft[30, 20]) < 0.5 * 4.0 and float(soft[35, 20]) == pytest.approx(0.0, abs=1e-6)


def test_organ_shift_leaves_a_sample_without_structures_alone():
    data = phantom()
    empty = {"image": data["image"], "label": torch.zeros_like(data["label"]), RANGE_KEY: (0.0, 1.0)}
    assert torch.equal(run("organ_shift", 0, empty)["image"], data["image"])


def test_gin_keeps_the_moments_and_is_not_linear():
    data = {**phantom(), RANGE_KEY: (-50.0, 50.0)}  # wide: no clipping
    x = data["image"].flatten().double().numpy()
    residuals = []
    for seed in range(8):
        transform = RandGlobalIntensityNonlineard(1.0, mix_range=(1.0, 1.0)).set_random_state(seed)
        y = transform(dict(data))["image"]
        assert float(y.mean()) == pytest.approx(float(data["image"].mean()), abs=1e-4)
        assert float(y.std()) == pytest.approx(float(data["image"].std()), rel=1e-3)
        fit = np.polyfit(x, y.flatten().double().numpy(), 1)
        residuals.append(np.std(y.flatten().double().numpy() - np.polyval(fit, x)) / np.std(x))
    assert max(residuals) > 0.1, residuals  # some draws are far from any affine map of the input


def test_gin_mixes_the_network_output_with_the_image():
    data = {**phantom(), RANGE_KEY: (-50.0, 50.0)}
    untouched = RandGlobalIntensityNonlineard(1.0, mix_range=(0.0, 0.0)).set_random_state(0)(dict(data))["image"]
    assert torch.allclose(untouched, data["image"], atol=1e-5)
    rng = np.random.RandomState(5)
    network = random_network_appearance(data["image"], rng, layers=3, channels=2)
    expected = match_moments(network, data["image"])
    assert float(expected.mean()) == pytest.approx(float(data["image"].mean()), abs=1e-5)


def test_the_same_network_maps_every_context_slice():
    single = phantom(channels=1)["image"]
    stacked = single.expand(3, HEIGHT, WIDTH).clone()
    out = random_network_appearance(stacked, np.random.RandomState(2), layers=4, channels=2)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_appearance_mix_sets_equal_structures_apart():
    data = {**phantom(), RANGE_KEY: (-50.0, 50.0)}
    label = data["label"][0]
    gaps = []
    for seed in range(10):
        y = run("ipa", seed, data)["image"][0]
        gaps.append(abs(float(y[label == 1].mean() - y[label == 2].mean())))
    # Disc and bar are equally bright in the input; the mask gives them their own appearance in most draws.
    assert np.median(gaps) > 0.02, gaps
    mask = RandAppearanceMixd(1.0, grid=3).set_random_state(0).mask((HEIGHT, WIDTH))
    assert mask.shape == (HEIGHT, WIDTH) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert float(mask.max() - mask.min()) > 0.2
    # Smooth: neighboring pixels differ by far less than the mask's spread.
    assert float((mask[1:] - mask[:-1]).abs().max()) < 0.2


# Settings ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AugmentationConfig, SpacingAugmentationConfig])
def test_settings_are_off_by_default_and_checked(cls):
    cfg = cls()
    assert cfg.domain_generalization is False
    assert cls.from_dict(cls(domain_generalization=True, gin_mix_range=[0.2, 0.9]).to_dict()).gin_mix_range == (
        0.2,
        0.9,
    )
    for bad, message in (
        ({"gin_prob": 1.5}, "gin_prob"),
        ({"gin_layers": 0}, "gin_layers"),
        ({"ipa_grid": 1}, "ipa_grid"),
        ({"organ_shift_range": [0.5, 0.1]}, "organ_shift_range"),
        ({"organ_shift_sigma": -1}, "organ_shift_sigma"),
        ({"domain_generalization": "yes"}, "domain_generalization"),
    ):
        with pytest.raises(ValueError, match=message):
            cls(**bad)


@pytest.mark.parametrize("protocol", ["paper", "spacing"])
def test_train_config_takes_the_switch_in_both_protocols(protocol):
    config = TrainConfig(protocol=protocol, augmentation={"domain_generalization": True, "gin_prob": 0.8})
    assert config.augmentation["domain_generalization"] is True
    with pytest.raises(ValueError, match="augmentation.gin_layers"):
        TrainConfig(protocol=protocol, augmentation={"gin_layers": 0.5})


# The hooks in both protocols ------------------------------------------------------------------------------------------


def write_phantom_dataset(root: Path, window: tuple[float, float] = (-125.0, 275.0)) -> Path:
    """Two training cases of phantom slices (stored units, a CT window) and a test volume."""
    with PreparedWriter(root) as writer:
        for offset, case in ((0, "p"), (10, "q")):
            slices = [phantom(offset + z) for z in range(3)]
            image = np.stack([s["image"][0].numpy() for s in slices])
            label = np.stack([s["label"][0].numpy().astype(np.uint8) for s in slices])
            writer.add_train_volume(case, image, label, spacing=(2.0, 1.0, 1.0))
        test = phantom(99)
        writer.add_volume(
            "test", "t", test["image"].numpy(), test["label"][0].numpy().astype(np.uint8)[None], (2.0, 1.0, 1.0)
        )
        writer.finish(
            DatasetInfo(
                name="phantoms",
                class_names=("background", "disc", "bar", "square"),
                modality="CT",
                normalization="phantom",
                intensity=IntensitySpec("ct_window", window=window),
                source="tests",
                license="CC0",
            ),
            protocol="spacing",
        )
    return root


def test_paper_protocol_hook_changes_images_only(tmp_path):
    root = write_phantom_dataset(tmp_path / "phantoms")
    plain = AugmentationConfig(min_ops=1, max_ops=2, operations=("rotate", "translate", "contrast"))
    on = AugmentationConfig(**{**plain.to_dict(), "domain_generalization": True, "gin_prob": 1.0, "ipa_prob": 1.0})
    datasets = [SliceDataset(root, "train", img_size=(40, 44), augmentation=cfg, seed=2) for cfg in (plain, on)]
    for index in range(len(datasets[0])):
        without, with_domain = datasets[0][index], datasets[1][index]
        # The domain operations draw from their own stream: the geometry of every sample is the same with them.
        assert torch.equal(without["label"], with_domain["label"])
        assert not torch.equal(without["image"], with_domain["image"])
        # Stored values stay in [0, 1] (then (u - 0.5) / 0.5 in [-1, 1]) before the paper's operations, whose
        # contrast change may leave that range as it always did.
    only_domain = AugmentationConfig(**{**on.to_dict(), "min_ops": 0, "max_ops": 0})
    untouched = SliceDataset(root, "train", img_size=(40, 44), augmentation=only_domain)
    for index in range(len(untouched)):
        image = untouched[index]["image"]
        assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0


def test_spacing_protocol_hook_changes_images_only_within_the_planned_range(tmp_path):
    root = write_phantom_dataset(tmp_path / "phantoms")
    plan = open_dataset(root).plan_for_training(patch_size=(32, 32)).replace(foreground_fraction=0.5)
    assert plan.intensity.scaling == "zscore"
    floor, ceiling = plan.intensity.apply_stored(np.array([0.0, 1.0], np.float32))
    quiet = {"noise_prob": 0.0, "blur_prob": 0.0, "brightness_prob": 0.0, "contrast_prob": 0.0}
    quiet |= {"low_resolution_prob": 0.0, "gamma_prob": 0.0, "inverted_gamma_prob": 0.0}
    plain = SpacingAugmentationConfig(rotate_prob=0.5, **quiet)
    on = SpacingAugmentationConfig(**{**plain.to_dict(), "domain_generalization": True, "gin_prob": 1.0})
    datasets = [PatchDataset(root, plan, cfg, seed=4) for cfg in (plain, on)]
    for index in range(len(datasets[0])):
        without, with_domain = datasets[0][index], datasets[1][index]
        assert torch.equal(without["label"], with_domain["label"])
        assert not torch.equal(without["image"], with_domain["image"])
        image = with_domain["image"]
        assert float(image.min()) >= floor - 1e-5 and float(image.max()) <= ceiling + 1e-5
    # Off by default: the settings without the switch give the plain samples.
    again = PatchDataset(
        root, plan, SpacingAugmentationConfig(**{**on.to_dict(), "domain_generalization": False}), seed=4
    )
    fresh = PatchDataset(root, plan, plain, seed=4)
    assert all(torch.equal(again[i]["image"], fresh[i]["image"]) for i in range(len(again)))
