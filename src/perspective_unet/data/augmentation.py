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
[0, 1] range, the evident intent. ``AugmentationConfig(noise_std=1.275)`` reproduces the released behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
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

from perspective_unet.config import dataclass_from_dict

__all__ = [
    "OPERATIONS",
    "AugmentationConfig",
    "RandAffineOpd",
    "RandLinearContrastd",
    "RandPiecewiseAffined",
    "build_augmentation",
]

OPERATIONS = ("vflip", "hflip", "noise", "blur", "contrast", "scale", "rotate", "shear", "piecewise", "translate")
_IMAGE_MODES = ("nearest", "bilinear", "bicubic")


@dataclass
class AugmentationConfig:
    """Probabilities and ranges of the paper's augmentation; the defaults are the paper's.

    Attributes:
        min_ops: Fewest operations drawn per sample.
        max_ops: Most operations drawn per sample.
        operations: The pool to draw from (names of ``OPERATIONS``); leaving one out removes it.
        vflip_prob: Probability that a drawn vertical flip fires.
        hflip_prob: Probability that a drawn horizontal flip fires.
        noise_prob: Probability that drawn Gaussian noise fires.
        noise_std: Standard deviation of the noise, in units of the [0, 1] image range.
        blur_prob: Probability that a drawn blur fires.
        blur_sigma: Standard deviation of the Gaussian blur, in pixels.
        contrast_prob: Probability that a drawn contrast change fires.
        contrast_range: Range of the factor a in pivot + a * (x - pivot).
        contrast_pivot: The value the contrast change keeps fixed: 0.5 (mid-grey, this project's reading of the
            paper) or 0 (the released code: its linear contrast on float images is a pure gain x -> a * x).
        scale_prob: Probability that a drawn scaling fires.
        scale_range: Range of the zoom factor, drawn for each axis (2 = twice as large).
        rotate_prob: Probability that a drawn rotation fires.
        rotate_degrees: Rotation drawn from [-rotate_degrees, rotate_degrees].
        shear_prob: Probability that a drawn shear fires.
        shear_degrees: Horizontal shear angle drawn from [-shear_degrees, shear_degrees].
        piecewise_prob: Probability that a drawn piecewise affine warp fires.
        piecewise_scale: Range of the standard deviation of the control-point shifts, as a fraction of the size.
        piecewise_grid: Control points per side of the regular grid.
        translate_prob: Probability that a drawn translation fires.
        translate_fraction: Shift drawn per axis from [-f, f] times the image side.
        image_mode: Interpolation of the image in geometric operations (the label is always nearest).
        before_resize: Augment each slice at its stored size and zoom the result to the model's size (the released
            code's order) instead of zooming first; blur, noise and warps then act on the native grid.
    """

    min_ops: int = 0
    max_ops: int = 4
    operations: tuple[str, ...] = OPERATIONS
    vflip_prob: float = 0.5
    hflip_prob: float = 0.5
    noise_prob: float = 1.0
    noise_std: float = 0.005
    blur_prob: float = 1.0
    blur_sigma: float = 1.0
    contrast_prob: float = 1.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    contrast_pivot: float = 0.5
    scale_prob: float = 1.0
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_prob: float = 1.0
    rotate_degrees: float = 40.0
    shear_prob: float = 1.0
    shear_degrees: float = 16.0
    piecewise_prob: float = 1.0
    piecewise_scale: tuple[float, float] = (0.008, 0.03)
    piecewise_grid: int = 4
    translate_prob: float = 1.0
    translate_fraction: float = 0.2
    image_mode: str = "bilinear"
    before_resize: bool = False

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        for name in ("contrast_range", "scale_range", "piecewise_scale"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        unknown = sorted(set(self.operations) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"Unknown augmentation operations {unknown}; known: {list(OPERATIONS)}.")
        if len(set(self.operations)) != len(self.operations):
            raise ValueError(f"operations lists an operation twice: {list(self.operations)}.")
        if not 0 <= self.min_ops <= self.max_ops:
            raise ValueError(f"Need 0 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}.")
        for field in dataclasses.fields(self):
            if field.name.endswith("_prob") and not 0.0 <= getattr(self, field.name) <= 1.0:
                raise ValueError(f"{field.name} must lie in [0, 1], got {getattr(self, field.name)}.")
        for name in ("contrast_range", "scale_range", "piecewise_scale"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}.")
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range}.")
        if self.noise_std < 0 or self.blur_sigma <= 0 or self.piecewise_grid < 2:
            raise ValueError("noise_std must be >= 0, blur_sigma > 0 and piecewise_grid >= 2.")
        if self.image_mode not in _IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {_IMAGE_MODES}, got {self.image_mode!r}.")
        if not isinstance(self.before_resize, bool):
            raise ValueError(f"before_resize must be true or false, got {self.before_resize!r}.")
        if isinstance(self.contrast_pivot, bool) or not isinstance(self.contrast_pivot, (int, float)):
            raise ValueError(f"contrast_pivot must be a number, got {self.contrast_pivot!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed fields (lists for tuples), for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentationConfig:
        """Build from ``to_dict`` output; unknown keys raise ``ValueError``."""
        return dataclass_from_dict(cls, data, "augmentation options")


class RandLinearContrastd(RandomizableTransform, MapTransform):
    """Linear contrast around the middle of the [0, 1] range: ``0.5 + a * (x - 0.5)``, ``a`` drawn per call.

    Args:
        keys: Keys of the images to change (labels must not be listed).
        prob: Probability of acting.
        factor_range: Range of ``a``.
        center: The value the contrast pivots on.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, prob: float, factor_range: tuple[float, float],
                 center: float = 0.5) -> None:
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
        label_keys: Keys interpolated by nearest neighbour.
    """

    KINDS = ("scale", "rotate", "shear", "translate")

    def __init__(self, keys: Sequence[Hashable], kind: str, prob: float, value_range: tuple[float, float],
                 image_mode: str = "bilinear", label_keys: Sequence[Hashable] = ("label",)) -> None:
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
    neighbouring cells agree on their shared edge. Resampling is done by MONAI ``Resample``.

    Args:
        keys: Keys to warp (image and label).
        prob: Probability of acting.
        scale_range: Range of ``s``.
        grid_points: Control points per side.
        image_mode: Interpolation of non-label keys.
        label_keys: Keys interpolated by nearest neighbour.
    """

    def __init__(self, keys: Sequence[Hashable], prob: float, scale_range: tuple[float, float], grid_points: int = 4,
                 image_mode: str = "bilinear", label_keys: Sequence[Hashable] = ("label",)) -> None:
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


def build_augmentation(cfg: AugmentationConfig | None = None, image_key: str = "image",
                       label_key: str = "label") -> SomeOf:
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
        "noise": lambda: RandGaussianNoised(image_key, prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std,
                                            sample_std=False),
        "blur": lambda: RandGaussianSmoothd(image_key, sigma_x=(cfg.blur_sigma,) * 2, sigma_y=(cfg.blur_sigma,) * 2,
                                            prob=cfg.blur_prob),
        "contrast": lambda: RandLinearContrastd(image_key, cfg.contrast_prob, cfg.contrast_range, cfg.contrast_pivot),
        "scale": lambda: RandAffineOpd(both, "scale", cfg.scale_prob, cfg.scale_range, mode, [label_key]),
        "rotate": lambda: RandAffineOpd(both, "rotate", cfg.rotate_prob, (-rotate, rotate), mode, [label_key]),
        "shear": lambda: RandAffineOpd(both, "shear", cfg.shear_prob, (-shear, shear), mode, [label_key]),
        "piecewise": lambda: RandPiecewiseAffined(both, cfg.piecewise_prob, cfg.piecewise_scale, cfg.piecewise_grid,
                                                  mode, [label_key]),
        "translate": lambda: RandAffineOpd(both, "translate", cfg.translate_prob, (-translate, translate), mode,
                                           [label_key]),
    }
    transforms = [factories[name]() for name in cfg.operations]
    most = min(cfg.max_ops, len(transforms))
    return SomeOf(transforms, num_transforms=(min(cfg.min_ops, most), most), replace=False)
