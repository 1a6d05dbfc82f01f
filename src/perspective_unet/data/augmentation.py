"""The paper's augmentation, built from MONAI transforms.

Each sample gets 0 to 4 of ten operations, drawn without repetition and applied in random order (MONAI ``SomeOf``):
vertical flip, horizontal flip, additive Gaussian noise, Gaussian blur (sigma 1), linear contrast 0.5-1.5,
scaling 0.5-2 per axis, rotation +-40 degrees, horizontal shear +-16 degrees, piecewise affine warp (control-point
jitter 0.008-0.03 of the image size) and translation +-20 % per axis. A drawn operation then fires with its own
probability (0.5 for the flips, 1 for the rest, as in the released code).

Transforms work on dictionaries ``{"image": (1, H, W), "label": (1, H, W)}`` of float tensors; geometric
operations move both with the same parameters (image: ``image_mode`` interpolation, label: nearest), intensity
operations touch the image only. Padding is 0 (air after the CT window).

One deliberate difference from the released code: its noise was ``scale=0.005*255`` written for 8-bit images but
applied to images in [0, 1], a standard deviation of 1.275 that drowns the image; the default here is 0.005 of the
[0, 1] range, the evident intent. ``AugmentationConfig(noise_std=1.275)`` reproduces the released behavior.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Affine,
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    Resample,
    SomeOf,
)
from monai.transforms.utils import create_grid

# The settings live in the standard-library config module, so that TrainConfig can check them.
from perspective_unet.config import AugmentationConfig

__all__ = ["RandAffineOpd", "RandLinearContrastd", "RandPiecewiseAffined", "build_augmentation"]


class RandLinearContrastd(RandomizableTransform, MapTransform):
    """Linear contrast around the middle of the [0, 1] range: ``0.5 + a * (x - 0.5)``, ``a`` drawn per call.

    Args:
        keys: Keys of the images to change (labels must not be listed).
        prob: Probability of acting.
        factor_range: Range of ``a``.
        center: The value the contrast pivots on.
    """

    def __init__(
        self, keys: Sequence[Hashable] | Hashable, prob: float, factor_range: tuple[float, float], center: float = 0.5
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.factor_range = factor_range
        self.center = center
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.factor = float(self.R.uniform(*self.factor_range))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(out):
                out[key] = self.center + self.factor * (out[key] - self.center)
        return out


class _GeometricOpd(RandomizableTransform, MapTransform):
    """Shared part of the geometric operations: same parameters for every key, nearest for the label keys."""

    def __init__(self, keys: Sequence[Hashable], prob: float, image_mode: str, label_keys: Sequence[Hashable]) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.image_mode = image_mode
        self.label_keys = set(label_keys)

    def mode_of(self, key: Hashable) -> str:
        return "nearest" if key in self.label_keys else self.image_mode


class RandAffineOpd(_GeometricOpd):
    """One affine operation of the paper's list, with parameters in natural units, through MONAI ``Affine``.

    Args:
        keys: Keys to move (image and label).
        kind: ``"scale"`` (factor per axis), ``"rotate"`` (degrees), ``"shear"`` (horizontal, degrees) or
            ``"translate"`` (fraction of the side per axis).
        prob: Probability of acting.
        value_range: (low, high) of the drawn parameter.
        image_mode: Interpolation of non-label keys.
        label_keys: Keys interpolated by nearest neighbor.
    """

    KINDS = ("scale", "rotate", "shear", "translate")

    def __init__(
        self,
        keys: Sequence[Hashable],
        kind: str,
        prob: float,
        value_range: tuple[float, float],
        image_mode: str = "bilinear",
        label_keys: Sequence[Hashable] = ("label",),
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}.")
        super().__init__(keys, prob, image_mode, label_keys)
        self.kind = kind
        self.value_range = value_range
        self.values = (0.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.values = (float(self.R.uniform(*self.value_range)), float(self.R.uniform(*self.value_range)))

    def _affine(self, spatial_shape: Sequence[int]) -> Affine:
        first, second = self.values
        # MONAI's Affine maps output to input coordinates, so zoom and shift are given inverted to mean
        # "the content grows by the factor" and "the content moves by the shift".
        if self.kind == "scale":
            return Affine(scale_params=(1.0 / first, 1.0 / second), padding_mode="zeros", image_only=True)
        if self.kind == "rotate":
            return Affine(rotate_params=math.radians(first), padding_mode="zeros", image_only=True)
        if self.kind == "shear":
            return Affine(shear_params=(0.0, math.tan(math.radians(first))), padding_mode="zeros", image_only=True)
        shift = (-first * spatial_shape[0], -second * spatial_shape[1])
        return Affine(translate_params=shift, padding_mode="zeros", image_only=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            affine = self._affine(out[key].shape[1:])
            out[key] = affine(out[key], mode=self.mode_of(key))
        return out


class RandPiecewiseAffined(_GeometricOpd):
    """Piecewise warp: a regular grid of control points is jittered and the displacement interpolated between them.

    The shifts are normal with standard deviation ``s`` times the image side, ``s`` drawn per call from
    ``scale_range``; between control points the displacement is bilinear, so each grid cell is warped smoothly and
    neighboring cells agree on their shared edge. Resampling is done by MONAI ``Resample``.

    Args:
        keys: Keys to warp (image and label).
        prob: Probability of acting.
        scale_range: Range of ``s``.
        grid_points: Control points per side.
        image_mode: Interpolation of non-label keys.
        label_keys: Keys interpolated by nearest neighbor.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        prob: float,
        scale_range: tuple[float, float],
        grid_points: int = 4,
        image_mode: str = "bilinear",
        label_keys: Sequence[Hashable] = ("label",),
    ) -> None:
        super().__init__(keys, prob, image_mode, label_keys)
        self.scale_range = scale_range
        self.grid_points = grid_points
        self.scale = 0.0
        self.jitter = np.zeros((2, grid_points, grid_points))

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.scale = float(self.R.uniform(*self.scale_range))
        self.jitter = self.R.normal(0.0, 1.0, size=(2, self.grid_points, self.grid_points))

    def _grid(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        sides = torch.tensor(spatial_shape, dtype=torch.float32).view(2, 1, 1)
        control = torch.as_tensor(self.jitter, dtype=torch.float32) * self.scale * sides
        dense = F.interpolate(control[None], size=tuple(spatial_shape), mode="bilinear", align_corners=True)[0]
        return torch.as_tensor(create_grid(spatial_shape, homogeneous=False), dtype=torch.float32) + dense

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        grid = None
        for key in self.key_iterator(out):
            if grid is None:
                grid = self._grid(out[key].shape[1:])
            out[key] = Resample(mode=self.mode_of(key), padding_mode="zeros", dtype=torch.float32)(out[key], grid)
        return out


def build_augmentation(
    cfg: AugmentationConfig | None = None, image_key: str = "image", label_key: str = "label"
) -> SomeOf:
    """The paper's augmentation as a MONAI ``SomeOf`` over dictionary transforms.

    Args:
        cfg: Probabilities and ranges (paper defaults if None).
        image_key: Key of the (1, H, W) image.
        label_key: Key of the (1, H, W) label, moved with nearest interpolation.

    Returns:
        A randomisable transform; ``set_random_state(seed)`` makes its draws reproducible.

    Example:
        >>> import torch
        >>> augment = build_augmentation().set_random_state(0)
        >>> out = augment({"image": torch.rand(1, 32, 32), "label": torch.zeros(1, 32, 32)})
        >>> tuple(out["image"].shape)
        (1, 32, 32)
    """
    cfg = cfg or AugmentationConfig()
    both = [image_key, label_key]
    mode = cfg.image_mode
    rotate, shear = cfg.rotate_degrees, cfg.shear_degrees
    translate = cfg.translate_fraction
    factories = {
        "vflip": lambda: RandFlipd(both, prob=cfg.vflip_prob, spatial_axis=0),
        "hflip": lambda: RandFlipd(both, prob=cfg.hflip_prob, spatial_axis=1),
        "noise": lambda: RandGaussianNoised(
            image_key, prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std, sample_std=False
        ),
        "blur": lambda: RandGaussianSmoothd(
            image_key, sigma_x=(cfg.blur_sigma,) * 2, sigma_y=(cfg.blur_sigma,) * 2, prob=cfg.blur_prob
        ),
        "contrast": lambda: RandLinearContrastd(image_key, cfg.contrast_prob, cfg.contrast_range, cfg.contrast_pivot),
        "scale": lambda: RandAffineOpd(both, "scale", cfg.scale_prob, cfg.scale_range, mode, [label_key]),
        "rotate": lambda: RandAffineOpd(both, "rotate", cfg.rotate_prob, (-rotate, rotate), mode, [label_key]),
        "shear": lambda: RandAffineOpd(both, "shear", cfg.shear_prob, (-shear, shear), mode, [label_key]),
        "piecewise": lambda: RandPiecewiseAffined(
            both, cfg.piecewise_prob, cfg.piecewise_scale, cfg.piecewise_grid, mode, [label_key]
        ),
        "translate": lambda: RandAffineOpd(
            both, "translate", cfg.translate_prob, (-translate, translate), mode, [label_key]
        ),
    }
    transforms = [factories[name]() for name in cfg.operations]
    most = min(cfg.max_ops, len(transforms))
    return SomeOf(transforms, num_transforms=(min(cfg.min_ops, most), most), replace=False)
