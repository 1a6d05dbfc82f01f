"""The augmentation settings of both protocols (their MONAI transforms live in ``perspective_unet.data``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from perspective_unet.config.checks import (
    _IMAGE_MODES,
    _PROBABILITY,
    OPERATIONS,
    Check,
    _check_fields,
    _choice,
    _got,
    _int,
    _key,
    _number,
    _pair,
    check_bool,
    dataclass_from_dict,
)

# Appearance augmentation for unseen domains (both protocols) -------------------------------------------------------


@dataclass
class DomainAugmentationFields:
    """Appearance augmentation for scans of other scanners, contrast phases and modalities; both protocols have it.

    Three operations (``perspective_unet.data.domain_augmentation``), in this order, each with its own probability
    and all off unless ``domain_generalization`` is true: label-aware intensity shifts (each labeled structure moved
    on its own, as contrast enhancement does), GIN (a random shallow convolutional network, mixed with the image and
    brought back to its mean and standard deviation) and IPA-style resampling (a smooth random mask blends the image
    with a second random appearance, so no structure's intensity predicts another's). The results are clipped to
    the range the normalization can produce (the stored [0, 1] of the paper protocol; the network-input values of
    the stored 0 and 1 in the spacing protocol).

    Attributes:
        domain_generalization: The switch: the three operations below act on the training samples.
        organ_shift_prob: Probability of the label-aware shifts.
        organ_shift_range: Range of each structure's shift, as a fraction of the normalization's range (0.25 is
            100 HU for a [-125, 275] HU window).
        organ_shift_sigma: Standard deviation of the Gaussian that softens the shift's edges, in pixels (0: none).
        gin_prob: Probability of GIN.
        gin_layers: Convolutional layers of the random network.
        gin_channels: Channels between its layers.
        gin_mix_range: Range of the weight of the network's output in the mix with the image (1: output alone).
        ipa_prob: Probability of the blend with a second random appearance.
        ipa_grid: Control points per side of the random mask (more: smaller blobs).
    """

    domain_generalization: bool = False
    organ_shift_prob: float = 0.5
    organ_shift_range: tuple[float, float] = (-0.3, 0.5)
    organ_shift_sigma: float = 1.0
    gin_prob: float = 0.3
    gin_layers: int = 4
    gin_channels: int = 2
    gin_mix_range: tuple[float, float] = (0.0, 1.0)
    ipa_prob: float = 0.2
    ipa_grid: int = 4


_DOMAIN_AUGMENTATION_CHECKS: dict[str, Check] = {
    "domain_generalization": check_bool,
    "organ_shift_prob": _PROBABILITY,
    "organ_shift_range": _pair(low=-1, high=1),
    "organ_shift_sigma": _number(low=0),
    "gin_prob": _PROBABILITY,
    "gin_layers": _int(1),
    "gin_channels": _int(1),
    "gin_mix_range": _pair(low=0, high=1),
    "ipa_prob": _PROBABILITY,
    "ipa_grid": _int(2),
}

# Augmentation --------------------------------------------------------------------------------------------------------

# How the paper protocol's blur, piecewise warp and random stream can be built: this project's way, or the released
# code's (imgaug 0.4 as the released training calls it).
BLUR_FILTERS = ("monai", "released")
PIECEWISE_WARPS = ("bilinear", "released")
AUGMENTATION_STREAMS = ("fresh", "released")


@dataclass
class AugmentationConfig(DomainAugmentationFields):
    """Probabilities and ranges of the paper's augmentation; the defaults are the paper's.

    The appearance augmentation for unseen domains (:class:`DomainAugmentationFields`) comes first, off by default.

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
        blur_filter: ``"monai"``: MONAI's Gaussian smoothing (kernel integrated with erf, truncated at 4 sigma, zero
            padding). ``"released"``: the released code's (imgaug through OpenCV): a sampled Gaussian kernel of
            ``int(max(3.3 * sigma, 5))`` pixels rounded up to odd (5 x 5 at sigma 1), borders reflected without
            repeating the edge pixel. They differ most where the image border is not zero (ACDC's MR slices).
        contrast_prob: Probability that a drawn contrast change fires.
        contrast_range: Range of the factor a in pivot + a * (x - pivot).
        contrast_pivot: The value the contrast change keeps fixed: 0.5 (mid-gray, this project's reading of the
            paper) or 0 (the released code: its linear contrast on float images is a pure gain x -> a * x).
        scale_prob: Probability that a drawn scaling fires.
        scale_range: Range of the zoom factor, drawn for each axis (2 = twice as large).
        rotate_prob: Probability that a drawn rotation fires.
        rotate_degrees: Rotation drawn from [-rotate_degrees, rotate_degrees].
        shear_prob: Probability that a drawn shear fires.
        shear_degrees: Horizontal shear angle drawn from [-shear_degrees, shear_degrees].
        piecewise_prob: Probability that a drawn piecewise affine warp fires.
        piecewise_scale: Range of the standard deviation of the control-point shifts, as a fraction of the size.
        piecewise_grid: Control points per side of the regular grid (with ``piecewise_warp: released``, the most
            per side: rows and columns are each drawn from 2 to this number).
        piecewise_warp: ``"bilinear"``: a regular grid of control points over the pixel centers, their shifts
            interpolated bilinearly between them. ``"released"``: the released code's (imgaug's ``PiecewiseAffine``
            through scikit-image): 2 to ``piecewise_grid`` control points per row and per column (drawn per call),
            spread from 0 to the side length, shifted and clipped to the image, the plane cut into triangles
            (Delaunay) each warped by its own affine map; no warp when no shift is positive.
        translate_prob: Probability that a drawn translation fires.
        translate_fraction: Shift drawn per axis from [-f, f] times the image side.
        image_mode: Interpolation of the image in geometric operations (the label is always nearest).
        before_resize: Augment each slice at its stored size and zoom the result to the model's size (the released
            code's order) instead of zooming first; blur, noise and warps then act on the native grid.
        stream: ``"fresh"``: every epoch and every DataLoader worker draws new augmentations. ``"released"``: the
            released training's stream: its workers are forked anew each epoch from a main process whose augmenter
            never draws, and only Python's ``random`` is seeded per worker, so the k-th sample any worker augments
            gets the k-th draw of one fixed sequence, in every worker and every epoch (555 distinct draws per epoch
            on Synapse: 2211 slices, batches of 12, 4 workers). The sequence depends on ``seed`` only; with
            ``num_workers: 0`` the main process is the one worker, so the sequence repeats every epoch.
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
    blur_filter: str = "monai"
    piecewise_warp: str = "bilinear"
    stream: str = "fresh"

    def __post_init__(self) -> None:
        _check_fields(self, _PAPER_AUGMENTATION_CHECKS, normalize=True)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        _check_fields(self, _PAPER_AUGMENTATION_CHECKS, normalize=False)
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops must be <= max_ops, got min_ops {self.min_ops} and max_ops {self.max_ops}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed fields (lists for tuples), for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentationConfig:
        """Build from ``to_dict`` output; unknown keys raise ``ValueError``."""
        return dataclass_from_dict(cls, data, "augmentation options")


def _check_operations(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"{name} must be a list of operation names, {_got(value)}; write {_key(name)}: [{value}].")
    if not isinstance(value, (list, tuple)) or not all(isinstance(op, str) for op in value):
        raise ValueError(f"{name} must be a list of operation names among {list(OPERATIONS)}, {_got(value)}.")
    unknown = sorted(set(value) - set(OPERATIONS))
    if unknown:
        raise ValueError(f"{name}: Unknown augmentation operations {unknown}; known: {list(OPERATIONS)}.")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} lists an operation twice: {list(value)}.")
    return tuple(value)


_PAPER_AUGMENTATION_CHECKS: dict[str, Check] = {
    **_DOMAIN_AUGMENTATION_CHECKS,
    **{item.name: _PROBABILITY for item in dataclasses.fields(AugmentationConfig) if item.name.endswith("_prob")},
    "min_ops": _int(0),
    "max_ops": _int(0),
    "operations": _check_operations,
    "noise_std": _number(low=0),
    "blur_sigma": _number(low=0, low_open=True),
    "contrast_range": _pair(low=0),
    "contrast_pivot": _number(),
    "scale_range": _pair(low=0, low_open=True),
    "rotate_degrees": _number(low=0),
    "shear_degrees": _number(low=0),
    "piecewise_scale": _pair(low=0),
    "piecewise_grid": _int(2),
    "translate_fraction": _number(low=0),
    "image_mode": _choice(_IMAGE_MODES),
    "before_resize": check_bool,
    "blur_filter": _choice(BLUR_FILTERS),
    "piecewise_warp": _choice(PIECEWISE_WARPS),
    "stream": _choice(AUGMENTATION_STREAMS),
}


@dataclass
class SpacingAugmentationConfig(DomainAugmentationFields):
    """Probabilities and ranges of the spacing protocol's augmentation; the defaults are nnU-Net's.

    The appearance augmentation for unseen domains (:class:`DomainAugmentationFields`) comes first, off by default;
    it acts on the patch right after it is cut, before the operations below that follow the rotation and scaling.

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
        _check_fields(self, _SPACING_AUGMENTATION_CHECKS, normalize=True)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        _check_fields(self, _SPACING_AUGMENTATION_CHECKS, normalize=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed fields (lists for pairs), for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpacingAugmentationConfig:
        """Build from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        return dataclass_from_dict(cls, data, "augmentation options")


_SPACING_AUGMENTATION_CHECKS: dict[str, Check] = {
    **_DOMAIN_AUGMENTATION_CHECKS,
    **{
        item.name: _PROBABILITY for item in dataclasses.fields(SpacingAugmentationConfig) if item.name.endswith("_prob")
    },
    "rotate_degrees": _number(low=0),
    "scale_range": _pair(low=0, low_open=True),
    "elastic_spacing": _int(2),
    "elastic_magnitude": _pair(),
    "noise_std": _number(low=0),
    "blur_sigma": _pair(low=0, low_open=True),
    "brightness_range": _pair(low=0, low_open=True),
    "contrast_range": _pair(low=0, low_open=True),
    "low_resolution_range": _pair(low=0, low_open=True, high=1),
    "gamma_range": _pair(low=0, low_open=True),
    "shift_range": _pair(),
}

# The augmentation settings of each protocol.
PROTOCOL_AUGMENTATION: dict[str, type] = {"paper": AugmentationConfig, "spacing": SpacingAugmentationConfig}
_AUGMENTATION_CHECKS: dict[str, dict[str, Check]] = {
    "paper": _PAPER_AUGMENTATION_CHECKS,
    "spacing": _SPACING_AUGMENTATION_CHECKS,
}
