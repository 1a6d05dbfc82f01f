"""The parsers' copies of choices and defaults (cli/choices.py) against the modules that define them."""

from __future__ import annotations

from perspective_unet.bench.machine import ALLOCATOR_PROFILES
from perspective_unet.bench.measure import MODES
from perspective_unet.bench.settings import PATH_CHOICES
from perspective_unet.cli import choices
from perspective_unet.config.checks import PROTOCOLS
from perspective_unet.data.orientation import CANONICAL_ORIENTATION
from perspective_unet.engine.evaluate_folder import AFFINE_TOLERANCE_MM
from perspective_unet.evaluation import DEFAULT_NSD_TOLERANCE_MM
from perspective_unet.export.quantize import CALIBRATION_SLICES, DICE_TOLERANCE, QUANTIZATIONS
from perspective_unet.metrics import PROTOCOLS as METRIC_PROTOCOLS
from perspective_unet.models.registry import list_models
from perspective_unet.plan import MAX_PATCH_PIXELS
from perspective_unet.plan import PROTOCOLS as PLAN_PROTOCOLS
from perspective_unet.runtime.inference_settings import RESAMPLERS
from perspective_unet.runtime.predict import OUTPUT_FORMATS


def test_model_choices_are_the_registered_models():
    assert list(choices.MODEL_CHOICES) == list_models()


def test_protocol_resampler_and_orientation_copies_equal_their_homes():
    assert choices.METRIC_PROTOCOL_CHOICES == METRIC_PROTOCOLS
    assert choices.RESAMPLER_CHOICES == RESAMPLERS
    assert choices.OUTPUT_FORMAT_CHOICES == OUTPUT_FORMATS
    assert choices.DEFAULT_ORIENTATION == CANONICAL_ORIENTATION
    assert choices.DEFAULT_MAX_PATCH_PIXELS == MAX_PATCH_PIXELS
    assert choices.DEFAULT_NSD_TOLERANCE_MM == DEFAULT_NSD_TOLERANCE_MM
    assert choices.DEFAULT_AFFINE_TOLERANCE_MM == AFFINE_TOLERANCE_MM
    # train and plan offer the training protocols from config (light); the plan module has its own tuple.
    assert PROTOCOLS == PLAN_PROTOCOLS


def test_benchmark_choices_equal_the_bench_modules():
    assert choices.BENCHMARK_MODE_CHOICES == MODES
    assert choices.BENCHMARK_PATH_CHOICES == PATH_CHOICES
    assert tuple(ALLOCATOR_PROFILES) == choices.ALLOCATOR_PROFILE_CHOICES


def test_quantization_choices_and_defaults_equal_the_export_module():
    assert choices.QUANTIZATION_CHOICES == QUANTIZATIONS
    assert choices.DEFAULT_DICE_TOLERANCE == DICE_TOLERANCE
    assert choices.DEFAULT_CALIBRATION_SLICES == CALIBRATION_SLICES
