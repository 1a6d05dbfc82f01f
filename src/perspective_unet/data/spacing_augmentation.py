"""Augmentation of the spacing protocol: nnU-Net's recipe, from MONAI transforms, every probability configurable.

The spatial part (rotation, scaling) happens together with cutting the patch out of the slice, in one resampling
(:class:`~perspective_unet.data.patches.RandPatchAffined`), so the patch never shows the blank corners of a rotated
crop and the image is interpolated once. The other operations act on the patch, in nnU-Net's order: elastic
deformation (off by default), Gaussian noise, Gaussian blur, multiplicative brightness, contrast, simulated low
resolution, inverted gamma, gamma, an additive intensity shift (off by default) and mirroring.
"""

from __future__ import annotations

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

# The settings live in the standard-library config module, so that TrainConfig can check them.
from perspective_unet.config import SpacingAugmentationConfig

__all__ = ["build_spacing_augmentation"]


def build_spacing_augmentation(
    cfg: SpacingAugmentationConfig, image_key: str = "image", label_key: str = "label"
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

    return Compose(
        [
            Rand2DElasticd(
                both,
                spacing=cfg.elastic_spacing,
                magnitude_range=(low, high),
                prob=cfg.elastic_prob,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            RandGaussianNoised(image_key, prob=cfg.noise_prob, std=cfg.noise_std, sample_std=True),
            RandGaussianSmoothd(image_key, sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma, prob=cfg.blur_prob),
            RandScaleIntensityd(image_key, factors=factors(cfg.brightness_range), prob=cfg.brightness_prob),
            RandScaleIntensityFixedMeand(
                image_key,
                factors=factors(cfg.contrast_range),
                fixed_mean=True,
                preserve_range=True,
                prob=cfg.contrast_prob,
            ),
            RandSimulateLowResolutiond(
                image_key, prob=cfg.low_resolution_prob, upsample_mode="bilinear", zoom_range=cfg.low_resolution_range
            ),
            RandAdjustContrastd(
                image_key, prob=cfg.inverted_gamma_prob, gamma=cfg.gamma_range, invert_image=True, retain_stats=True
            ),
            RandAdjustContrastd(image_key, prob=cfg.gamma_prob, gamma=cfg.gamma_range, retain_stats=True),
            RandShiftIntensityd(image_key, offsets=cfg.shift_range, prob=cfg.shift_prob),
            RandFlipd(both, prob=cfg.mirror_rows_prob, spatial_axis=0),
            RandFlipd(both, prob=cfg.mirror_columns_prob, spatial_axis=1),
        ]
    )
