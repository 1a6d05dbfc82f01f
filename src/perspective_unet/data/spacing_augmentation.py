"""Augmentation of the spacing protocol: nnU-Net's recipe, from MONAI transforms, every probability configurable.

The spatial part (rotation, scaling) happens together with cutting the patch out of the slice, in one resampling
(:class:`~perspective_unet.data.patches.RandPatchAffined`), so the patch never shows the blank corners of a rotated
crop and the image is interpolated once. The other operations act on the patch, in nnU-Net's order: elastic
deformation (off by default), Gaussian noise, Gaussian blur, multiplicative brightness, contrast, simulated low
resolution, inverted gamma, gamma, an additive intensity shift (off by default) and mirroring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from perspective_unet.config import dataclass_from_dict

__all__ = ["SpacingAugmentationConfig", "build_spacing_augmentation"]

_RANGES = ("scale_range", "blur_sigma", "brightness_range", "contrast_range", "low_resolution_range", "gamma_range",
           "shift_range", "elastic_magnitude")


@dataclass
class SpacingAugmentationConfig:
    """Probabilities and ranges of the spacing protocol's augmentation; the defaults are nnU-Net's.

    Attributes:
        rotate_prob: Probability of an in-plane rotation.
        rotate_degrees: Rotation drawn from [-rotate_degrees, rotate_degrees].
        scale_prob: Probability of a scaling.
        scale_range: Zoom factor range (1.4: the anatomy appears 1.4 times larger).
        elastic_prob: Probability of an elastic deformation (MONAI ``Rand2DElastic``).
        elastic_spacing: Distance between the deformation's control points, in pixels.
        elastic_magnitude: Range of the control points' offsets, in pixels.
        noise_prob: Probability of additive Gaussian noise.
        noise_std: Largest noise standard deviation (drawn from [0, noise_std]), in network-input units.
        blur_prob: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's standard deviation, in pixels.
        brightness_prob: Probability of a multiplicative brightness change.
        brightness_range: Range of the factor.
        contrast_prob: Probability of a contrast change around the patch's mean (range kept).
        contrast_range: Range of the factor.
        low_resolution_prob: Probability of simulated low resolution (down- then upsampling).
        low_resolution_range: Range of the downsampling factor.
        gamma_prob: Probability of a gamma change (mean and std kept).
        inverted_gamma_prob: Probability of a gamma change on the inverted image.
        gamma_range: Range of gamma.
        shift_prob: Probability of an additive intensity shift (not in nnU-Net; helps across contrast phases).
        shift_range: Range of the shift, in network-input units (z-scores for CT).
        mirror_rows_prob: Probability of flipping top and bottom.
        mirror_columns_prob: Probability of flipping left and right (this also swaps the sides of paired organs).
    """

    rotate_prob: float = 0.2
    rotate_degrees: float = 180.0
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic_prob: float = 0.0
    elastic_spacing: int = 16
    elastic_magnitude: tuple[float, float] = (0.0, 2.0)
    noise_prob: float = 0.1
    noise_std: float = 0.1
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_prob: float = 0.25
    low_resolution_range: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.3
    inverted_gamma_prob: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    shift_prob: float = 0.0
    shift_range: tuple[float, float] = (-0.5, 0.5)
    mirror_rows_prob: float = 0.5
    mirror_columns_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in _RANGES:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"augmentation {name} must be a pair [low, high], got {value!r}.")
            setattr(self, name, (float(value[0]), float(value[1])))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for name in (item.name for item in dataclasses.fields(self) if item.name.endswith("_prob")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {name} must be a number in [0, 1], got {value!r}.")
        for name in _RANGES:
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"augmentation {name} must be (low, high) with low <= high, got {(low, high)}.")
        positive = ("scale_range", "blur_sigma", "brightness_range", "contrast_range", "low_resolution_range",
                    "gamma_range")
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"augmentation {name} must be positive, got {getattr(self, name)}.")
        if self.low_resolution_range[1] > 1.0:
            raise ValueError(f"augmentation low_resolution_range must lie in (0, 1], got {self.low_resolution_range}.")
        if self.noise_std < 0 or self.rotate_degrees < 0 or self.elastic_spacing < 2:
            raise ValueError("augmentation noise_std and rotate_degrees must be >= 0 and elastic_spacing >= 2.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed fields (lists for pairs), for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpacingAugmentationConfig:
        """Build from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        return dataclass_from_dict(cls, data, "augmentation options")


def build_spacing_augmentation(cfg: SpacingAugmentationConfig, image_key: str = "image", label_key: str = "label"
                               ) -> Compose:
    """Every operation but rotation and scaling (see the module docstring), as one MONAI ``Compose``.

    Returns:
        A randomizable transform of dictionaries holding a (C, H, W) image and a (1, H, W) label.
    """
    both = [image_key, label_key]
    low, high = cfg.elastic_magnitude

    def factors(pair: tuple[float, float]) -> tuple[float, float]:
        # MONAI multiplies by (1 + f); the ranges here are the factors themselves.
        return (pair[0] - 1.0, pair[1] - 1.0)

    return Compose([
        Rand2DElasticd(both, spacing=cfg.elastic_spacing, magnitude_range=(low, high), prob=cfg.elastic_prob,
                       mode=("bilinear", "nearest"), padding_mode="border"),
        RandGaussianNoised(image_key, prob=cfg.noise_prob, std=cfg.noise_std, sample_std=True),
        RandGaussianSmoothd(image_key, sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma, prob=cfg.blur_prob),
        RandScaleIntensityd(image_key, factors=factors(cfg.brightness_range), prob=cfg.brightness_prob),
        RandScaleIntensityFixedMeand(image_key, factors=factors(cfg.contrast_range), fixed_mean=True,
                                     preserve_range=True, prob=cfg.contrast_prob),
        RandSimulateLowResolutiond(image_key, prob=cfg.low_resolution_prob, upsample_mode="bilinear",
                                   zoom_range=cfg.low_resolution_range),
        RandAdjustContrastd(image_key, prob=cfg.inverted_gamma_prob, gamma=cfg.gamma_range, invert_image=True,
                            retain_stats=True),
        RandAdjustContrastd(image_key, prob=cfg.gamma_prob, gamma=cfg.gamma_range, retain_stats=True),
        RandShiftIntensityd(image_key, offsets=cfg.shift_range, prob=cfg.shift_prob),
        RandFlipd(both, prob=cfg.mirror_rows_prob, spatial_axis=0),
        RandFlipd(both, prob=cfg.mirror_columns_prob, spatial_axis=1),
    ])
