"""The intensity specification, the plan and its derivation from a fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perspective_unet.errors import InputError
from perspective_unet.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from perspective_unet.intensity import ImageStats, IntensitySpec
from perspective_unet.outputs import write_json_atomic
from perspective_unet.plan import Plan, derive_plan, read_plan

CT = IntensitySpec("ct_window", window=(-100.0, 300.0))


def stats(mean: float = 0.5, std: float = 0.1) -> IntensityStats:
    return IntensityStats(100, mean, std, 0.0, 1.0)


def case(
    name: str, shape: tuple[int, int, int], spacing: tuple[float, float, float] | None, split: str = "train"
) -> CaseFingerprint:
    return CaseFingerprint(name, split, shape, spacing, stats())


def fingerprint(*cases: CaseFingerprint, intensity: IntensitySpec = CT) -> Fingerprint:
    return Fingerprint("CT", intensity, tuple(cases), stats(0.4, 0.05))


# Intensity ------------------------------------------------------------------------------------------------------------


def test_ct_window_then_zscore_is_clip_then_zscore_in_hounsfield_units():
    spec = CT.replace(scaling="zscore", mean=0.25, std=0.125)  # 0 HU mean, 50 HU std in stored units
    raw = np.array([-1000.0, -100.0, 0.0, 50.0, 300.0, 2000.0])
    expected = (np.clip(raw, -100, 300) - 0.0) / 50.0
    np.testing.assert_allclose(spec.apply_raw(raw), expected, atol=1e-5)
    assert spec.floor() == pytest.approx(-2.0)


def test_per_image_zscore_uses_the_given_statistics_or_the_image_itself():
    spec = IntensitySpec("unit", scaling="zscore_per_image")
    image = np.array([0.2, 0.4, 0.6])
    np.testing.assert_allclose(spec.apply_stored(image), (image - 0.4) / image.std(), atol=1e-6)
    np.testing.assert_allclose(spec.apply_stored(image, ImageStats(0.5, 0.25)), (image - 0.5) / 0.25, atol=1e-6)
    assert spec.floor(ImageStats(0.5, 0.25)) == pytest.approx(-2.0)


@pytest.mark.parametrize(
    "spec",
    [
        CT,
        CT.replace(scaling="zscore", mean=0.3, std=0.2),
        IntensitySpec("percentile_minmax", percentiles=(1.0, 99.0), scaling="zscore_per_image"),
        IntensitySpec("picture"),
        IntensitySpec("unit"),
    ],
)
def test_intensity_spec_round_trips_through_json(spec):
    assert IntensitySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    "data, field",
    [
        ({"kind": "hu"}, "kind"),
        ({"kind": "ct_window"}, "window"),
        ({"kind": "ct_window", "window": [300, -100]}, "window"),
        ({"kind": "unit", "scaling": "zscore"}, "mean"),
        ({"kind": "unit", "scaling": "zscore", "mean": 0.5, "std": 0.0}, "std"),
        ({"kind": "unit", "scaling": "minmax"}, "scaling"),
        ({"kind": "unit", "gain": 2}, "gain"),
    ],
)
def test_invalid_intensity_specs_name_the_field(data, field):
    with pytest.raises(ValueError, match=field):
        IntensitySpec.from_dict(data)


def test_another_window_keeps_the_zscore_in_hounsfield_units():
    spec = CT.replace(scaling="zscore", mean=0.3, std=0.1)
    wider = spec.with_stored_range(IntensitySpec("ct_window", window=(-200.0, 600.0)))
    raw = np.array([-50.0, 20.0, 150.0, 280.0])  # inside both windows: the same network input
    np.testing.assert_allclose(wider.apply_raw(raw), spec.apply_raw(raw), atol=1e-4)
    assert wider.window == (-200.0, 600.0)


# Plan -----------------------------------------------------------------------------------------------------------------


def test_plan_round_trips_through_its_json_file(tmp_path):
    plan = Plan(
        "spacing",
        (112, 128),
        CT.replace(scaling="zscore", mean=0.4, std=0.07),
        spacing=(0.8, 0.75),
        batch_size=4,
        context_slices=2,
    )
    path = write_json_atomic(plan.to_dict(), tmp_path / "plan.json")
    assert read_plan(path) == plan
    assert '"patch_size": [112, 128]' in path.read_text()  # short lists stay on one line for hand editing
    assert plan.in_channels == 5


@pytest.mark.parametrize(
    "edit, field",
    [
        ({"protocol": "nnunet"}, "protocol"),
        ({"spacing": None}, "spacing"),
        ({"spacing": [0.8, -1.0]}, "spacing"),
        ({"patch_size": [112]}, "patch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"context_slices": -1}, "context_slices"),
        ({"context_slices": 1.5}, "context_slices"),
        ({"foreground_fraction": 2}, "foreground_fraction"),
        ({"overlap": 1.0}, "overlap"),
        ({"intensity": {"kind": "ct_window"}}, "window"),
        ({"patchsize": [64, 64]}, "patchsize"),
    ],
)
def test_an_edited_plan_file_in_an_invalid_state_names_the_file_and_the_field(tmp_path, edit, field):
    plan = Plan("spacing", (64, 64), CT, spacing=(1.0, 1.0))
    path = write_json_atomic({**plan.to_dict(), **edit}, tmp_path / "plan.json")
    with pytest.raises(InputError, match=field) as info:
        read_plan(path)
    assert str(path) in str(info.value)


def test_a_plan_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"protocol": "spacing",')
    with pytest.raises(InputError, match="not valid JSON"):
        read_plan(path)


# Derivation -----------------------------------------------------------------------------------------------------------


def test_spacing_plan_takes_the_median_spacing_and_the_median_shape_there():
    fp = fingerprint(
        case("a", (40, 100, 120), (2.0, 0.5, 0.5)),  # 50 x 60 mm
        case("b", (30, 80, 90), (2.5, 1.0, 1.0)),  # 80 x 90 mm
        case("c", (20, 70, 60), (5.0, 1.5, 1.5)),  # 105 x 90 mm
        case("t", (10, 512, 512), (1.0, 0.3, 0.3), split="test"),  # test cases never shape the plan
    )
    plan = derive_plan(fp, "spacing")
    assert plan.spacing == (1.0, 1.0)
    assert plan.patch_size == (80, 96)  # median 80 x 90 mm at 1 mm, rounded up to multiples of 16
    assert plan.intensity.scaling == "zscore" and plan.intensity.mean == pytest.approx(0.4)
    # The paper's 12 x 224 x 224 pixels per step (78 patches of 80 x 96), capped at 5% of the 525,000 training pixels
    # at 1 mm (26,250 pixels = 3.4 patches): 3.
    assert plan.batch_size == 3
    assert derive_plan(fp, "spacing", spacing=(0.5, 0.5)).patch_size == (160, 192)


def test_patch_shrinks_to_the_pixel_budget_larger_side_first():
    fp = fingerprint(case("a", (10, 600, 400), (3.0, 1.0, 1.0)))
    plan = derive_plan(fp, "spacing", max_patch_pixels=256 * 256)
    assert plan.patch_size[0] * plan.patch_size[1] <= 256 * 256
    assert plan.patch_size == (256, 256)


def test_paper_plan_keeps_the_papers_size_batch_and_scaling():
    fp = fingerprint(
        case("a", (10, 512, 512), (3.0, 0.7, 0.7)), intensity=CT.replace(scaling="zscore", mean=0.1, std=0.1)
    )
    plan = derive_plan(fp, "paper")
    assert (plan.patch_size, plan.batch_size, plan.intensity.scaling) == ((224, 224), 12, "symmetric")


def test_spacing_plan_needs_spacings_and_refuses_patches_larger_than_every_slice():
    with pytest.raises(ValueError, match="spacing"):
        derive_plan(fingerprint(case("a", (10, 64, 64), None)), "spacing")
    fp = fingerprint(case("a", (10, 100, 120), (3.0, 1.0, 1.0)))
    assert derive_plan(fp, "spacing", patch_size=(112, 128)).patch_size == (112, 128)  # rounded-up sizes are fine
    with pytest.raises(ValueError, match="larger than every training slice.*at most 112x128"):
        derive_plan(fp, "spacing", patch_size=(128, 128))


def test_per_image_scaling_for_datasets_without_a_ct_window():
    fp = fingerprint(case("a", (10, 64, 64), (3.0, 1.0, 1.0)), intensity=IntensitySpec("percentile_minmax"))
    assert derive_plan(fp, "spacing").intensity.scaling == "zscore_per_image"
