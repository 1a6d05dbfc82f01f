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
[0, 1] range, the evident intent. ``AugmentationConfig(noise_std=1.275)`` reproduces the released behavior, and
``blur_filter="released"`` and ``piecewise_warp="released"`` build the blur and the warp as the released code's
imgaug does (:class:`RandReflectedGaussianBlurd`, :func:`triangulated_warp_coordinates`).
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
from scipy import ndimage
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

# The settings live in the standard-library config module, so that TrainConfig can check them.
from perspective_unet.config import AugmentationConfig

__all__ = [
    "RandAffineOpd",
    "RandLinearContrastd",
    "RandPiecewiseAffined",
    "RandReflectedGaussianBlurd",
    "build_augmentation",
    "released_blur_kernel_size",
    "triangulated_warp_coordinates",
]


def released_blur_kernel_size(sigma: float) -> int:
    """Side of the released code's Gaussian kernel (imgaug's rule for its OpenCV blur): 3.3 sigma below sigma 3,
    2.9 sigma below 5, 2.6 sigma above, at least 5, truncated to an integer and rounded up to odd.

    Example:
        >>> released_blur_kernel_size(1.0), released_blur_kernel_size(2.0), released_blur_kernel_size(4.0)
        (5, 7, 11)
    """
    factor = 3.3 if sigma < 3.0 else 2.9 if sigma < 5.0 else 2.6
    size = int(max(factor * sigma, 5))
    return size + 1 if size % 2 == 0 else size


class RandReflectedGaussianBlurd(RandomizableTransform, MapTransform):
    """Gaussian blur of each channel as the released code's imgaug does it: a sampled kernel of
    :func:`released_blur_kernel_size` pixels, borders reflected without repeating the edge pixel (OpenCV's
    ``BORDER_REFLECT_101``, SciPy's ``mirror``), computed by ``scipy.ndimage.gaussian_filter``.

    Args:
        keys: Keys of the (C, H, W) images to blur (labels must not be listed).
        prob: Probability of acting.
        sigma: Standard deviation of the kernel, in pixels.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, prob: float, sigma: float) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.sigma = sigma
        self.radius = released_blur_kernel_size(sigma) // 2

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            image = np.asarray(torch.as_tensor(out[key]).detach().cpu(), dtype=np.float64)
            blurred = ndimage.gaussian_filter(
                image, (0.0, self.sigma, self.sigma), mode="mirror", radius=(0, self.radius, self.radius)
            )
            out[key] = torch.from_numpy(blurred.astype(np.float32))
        return out


def triangulated_warp_coordinates(
    shape: Sequence[int], rows: int, columns: int, jitter: np.ndarray
) -> np.ndarray | None:
    """Where each output pixel samples its input under the released code's piecewise affine warp.

    The control points lie on a ``rows`` x ``columns`` grid spread from 0 to the side length (not to the last pixel);
    each is shifted by ``jitter`` times the side and clipped to the pixel range; the grid is cut into triangles
    (Delaunay) and each triangle's affine map sends output positions to input positions (imgaug 0.4's
    ``PiecewiseAffine`` with scikit-image's ``PiecewiseAffineTransform`` as the inverse map of the warp).

    Args:
        shape: (height, width) of the image.
        rows: Control points per column of the grid (>= 2).
        columns: Control points per row of the grid (>= 2).
        jitter: (rows * columns, 2) shifts as fractions of the height (column 0) and width (column 1), row-major.

    Returns:
        (2, height, width) input row and column coordinates of every output pixel, or None when no shift is
        positive (the released code then leaves the image as it is).
    """
    height, width = (int(s) for s in shape)
    jitter = np.asarray(jitter, dtype=np.float64).reshape(rows * columns, 2)
    if not (jitter > 0).any():
        return None
    grid_y, grid_x = np.meshgrid(np.linspace(0, height, rows), np.linspace(0, width, columns), indexing="ij")
    target_y = np.clip(grid_y.ravel() + jitter[:, 0] * height, 0, height - 1)
    target_x = np.clip(grid_x.ravel() + jitter[:, 1] * width, 0, width - 1)
    # Barycentric interpolation over the triangles is each triangle's affine map.
    triangles = Delaunay(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
    warp = LinearNDInterpolator(triangles, np.stack([target_y, target_x], axis=1), fill_value=-1.0)
    out_y, out_x = np.mgrid[0:height, 0:width]
    coordinates = warp(np.stack([out_x.ravel(), out_y.ravel()], axis=1).astype(np.float64))
    return coordinates.T.reshape(2, height, width)


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
        self.randomize()
        return self.warp(data) if self._do_transform else dict(data)

    def warp(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply the current draw (``values``) to every key."""
        out = dict(data)
        for key in self.key_iterator(out):
            affine = self._affine(out[key].shape[1:])
            out[key] = affine(out[key], mode=self.mode_of(key))
        return out


class RandPiecewiseAffined(_GeometricOpd):
    """Piecewise warp: control points are jittered and the displacement interpolated between them.

    ``construction="bilinear"``: a regular ``grid_points`` x ``grid_points`` grid over the pixel centers, shifts
    normal with standard deviation ``s`` times the image side (``s`` drawn per call from ``scale_range``); between
    control points the displacement is bilinear, so each grid cell is warped smoothly and neighboring cells agree on
    their shared edge. ``construction="released"``: the released code's (see
    :func:`triangulated_warp_coordinates`), with 2 to ``grid_points`` control points per column and per row drawn
    per call and the same shifts. Resampling is done by MONAI ``Resample``, zeros outside the image.

    Args:
        keys: Keys to warp (image and label).
        prob: Probability of acting.
        scale_range: Range of ``s``.
        grid_points: Control points per side (the most per side with ``construction="released"``).
        image_mode: Interpolation of non-label keys.
        label_keys: Keys interpolated by nearest neighbor.
        construction: ``"bilinear"`` or ``"released"``.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        prob: float,
        scale_range: tuple[float, float],
        grid_points: int = 4,
        image_mode: str = "bilinear",
        label_keys: Sequence[Hashable] = ("label",),
        construction: str = "bilinear",
    ) -> None:
        if construction not in ("bilinear", "released"):
            raise ValueError(f"construction must be 'bilinear' or 'released', got {construction!r}.")
        super().__init__(keys, prob, image_mode, label_keys)
        self.scale_range = scale_range
        self.grid_points = grid_points
        self.construction = construction
        self.scale = 0.0
        self.grid_shape = (grid_points, grid_points)
        self.jitter = np.zeros((2, grid_points, grid_points))

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self.construction == "released":
            self.grid_shape = (
                int(self.R.randint(2, self.grid_points + 1)),
                int(self.R.randint(2, self.grid_points + 1)),
            )
        self.scale = float(self.R.uniform(*self.scale_range))
        rows, columns = self.grid_shape
        self.jitter = self.R.normal(0.0, 1.0, size=(2, rows, columns))

    def _grid(self, spatial_shape: Sequence[int]) -> torch.Tensor | None:
        if self.construction == "released":
            # (2, rows, columns) -> (rows * columns, 2): one (row, column) shift per control point, row-major.
            jitter = (self.jitter * self.scale).reshape(2, -1).T
            source = triangulated_warp_coordinates(spatial_shape, *self.grid_shape, jitter)
            if source is None:
                return None
            # MONAI's grid is centered: pixel index i of a side n is i - (n - 1) / 2.
            centers = np.array([(n - 1) / 2 for n in spatial_shape]).reshape(2, 1, 1)
            return torch.as_tensor(source - centers, dtype=torch.float32)
        sides = torch.tensor(spatial_shape, dtype=torch.float32).view(2, 1, 1)
        control = torch.as_tensor(self.jitter, dtype=torch.float32) * self.scale * sides
        dense = F.interpolate(control[None], size=tuple(spatial_shape), mode="bilinear", align_corners=True)[0]
        return torch.as_tensor(create_grid(spatial_shape, homogeneous=False), dtype=torch.float32) + dense

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize()
        return self.warp(data) if self._do_transform else dict(data)

    def warp(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply the current draw (``grid_shape``, ``scale``, ``jitter``) to every key."""
        out = dict(data)
        grid: torch.Tensor | None = None
        for key in self.key_iterator(out):
            if grid is None:
                grid = self._grid(out[key].shape[1:])
                if grid is None:
                    return out
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
        "blur": lambda: (
            RandReflectedGaussianBlurd(image_key, cfg.blur_prob, cfg.blur_sigma)
            if cfg.blur_filter == "released"
            else RandGaussianSmoothd(
                image_key, sigma_x=(cfg.blur_sigma,) * 2, sigma_y=(cfg.blur_sigma,) * 2, prob=cfg.blur_prob
            )
        ),
        "contrast": lambda: RandLinearContrastd(image_key, cfg.contrast_prob, cfg.contrast_range, cfg.contrast_pivot),
        "scale": lambda: RandAffineOpd(both, "scale", cfg.scale_prob, cfg.scale_range, mode, [label_key]),
        "rotate": lambda: RandAffineOpd(both, "rotate", cfg.rotate_prob, (-rotate, rotate), mode, [label_key]),
        "shear": lambda: RandAffineOpd(both, "shear", cfg.shear_prob, (-shear, shear), mode, [label_key]),
        "piecewise": lambda: RandPiecewiseAffined(
            both, cfg.piecewise_prob, cfg.piecewise_scale, cfg.piecewise_grid, mode, [label_key], cfg.piecewise_warp
        ),
        "translate": lambda: RandAffineOpd(
            both, "translate", cfg.translate_prob, (-translate, translate), mode, [label_key]
        ),
    }
    transforms = [factories[name]() for name in cfg.operations]
    most = min(cfg.max_ops, len(transforms))
    return SomeOf(transforms, num_transforms=(min(cfg.min_ops, most), most), replace=False)
