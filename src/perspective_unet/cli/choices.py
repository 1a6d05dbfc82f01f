"""Choices and defaults the parsers offer whose home is a module that imports PyTorch, MONAI, nibabel or NumPy.

Building the parser (and so every ``--help``) must import only the standard library and the light project modules,
so the parsers read these copies; ``tests/cli/test_choices.py`` checks each against the module that defines it.
"""

from __future__ import annotations

__all__ = [
    "ALLOCATOR_PROFILE_CHOICES",
    "BENCHMARK_MODE_CHOICES",
    "BENCHMARK_PATH_CHOICES",
    "DEFAULT_AFFINE_TOLERANCE_MM",
    "DEFAULT_CALIBRATION_SLICES",
    "DEFAULT_DICE_TOLERANCE",
    "DEFAULT_MAX_PATCH_PIXELS",
    "DEFAULT_NSD_TOLERANCE_MM",
    "DEFAULT_ORIENTATION",
    "METRIC_PROTOCOL_CHOICES",
    "MODEL_CHOICES",
    "OUTPUT_FORMAT_CHOICES",
    "QUANTIZATION_CHOICES",
    "RESAMPLER_CHOICES",
]

MODEL_CHOICES = ("perspective_unet", "perspective_unet_small", "perspective_unet_tiny")
"""``models.registry.list_models()``."""

METRIC_PROTOCOL_CHOICES = ("legacy", "corrected")
"""``metrics.PROTOCOLS``."""

RESAMPLER_CHOICES = ("torch", "scipy")
"""``runtime.inference_settings.RESAMPLERS``."""

OUTPUT_FORMAT_CHOICES = ("auto", "dicom-seg")
"""``runtime.predict.OUTPUT_FORMATS``."""

DEFAULT_ORIENTATION = "SPL"
"""``data.orientation.CANONICAL_ORIENTATION``."""

DEFAULT_MAX_PATCH_PIXELS = 512 * 512
"""``plan.MAX_PATCH_PIXELS``."""

DEFAULT_NSD_TOLERANCE_MM = 2.0
"""``evaluation.DEFAULT_NSD_TOLERANCE_MM``."""

DEFAULT_AFFINE_TOLERANCE_MM = 1e-3
"""``engine.evaluate_folder.AFFINE_TOLERANCE_MM``."""

BENCHMARK_MODE_CHOICES = ("inference", "train", "volume")
"""``bench.measure.MODES``."""

BENCHMARK_PATH_CHOICES = ("baseline", "optimized", "both", "all")
"""``bench.settings.PATH_CHOICES``."""

ALLOCATOR_PROFILE_CHOICES = ("reuse", "release")
"""The names of ``bench.machine.ALLOCATOR_PROFILES``."""

QUANTIZATION_CHOICES = ("int8",)
"""``export.quantize.QUANTIZATIONS``."""

DEFAULT_DICE_TOLERANCE = 0.01
"""``export.quantize.DICE_TOLERANCE``."""

DEFAULT_CALIBRATION_SLICES = 32
"""``export.quantize.CALIBRATION_SLICES``."""
