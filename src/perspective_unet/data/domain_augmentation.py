"""Appearance augmentation for unseen domains: scans of other scanners, contrast phases and modalities.

A model trained on one source learns its intensities: the brightness of each organ, their order, the texture of the
scanner. Three operations change the appearance of a training sample and nothing else (labels and geometry stay
exactly as they are), written for this project from the description of Ouyang et al., "Causality-inspired
single-source domain generalization for medical image segmentation" (IEEE TMI 2022), plus a label-aware shift:

- :class:`RandOrganShiftd`: each labeled structure's intensity moves by its own random amount (a fraction of the
  normalization's range), with edges softened by a small Gaussian: what contrast enhancement does to organs and
  vessels, each by another amount.
- :class:`RandGlobalIntensityNonlineard` (GIN): a shallow convolutional network with random weights, drawn anew for
  every sample, maps the image to a new appearance (non-linear, possibly inverted, with some texture); its output
  is brought to the image's mean and standard deviation, mixed with the image by a random weight and brought back
  to those moments.
- :class:`RandAppearanceMixd` (IPA-style resampling): a smooth random mask blends the current appearance with a
  second random one, so that each region (and so each structure) gets its own mapping and no structure's intensity
  predicts another's.

Every operation clips its result to the sample's intensity range, ``data["intensity_range"]`` (the values the
normalization can produce: [0, 1] in the paper protocol, the network-input values of the stored 0 and 1 in the
spacing protocol), or the input's own minimum and maximum when the sample carries none. The transforms act on
dictionaries holding a (C, H, W) float image (context slices share one mapping) and a (1, H, W) label; they are
MONAI randomizable transforms, reproducible from ``set_random_state``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor
from scipy import ndimage

from perspective_unet.config.augmentation import DomainAugmentationFields

__all__ = [
    "DOMAIN_SEED_SALT",
    "RANGE_KEY",
    "RandAppearanceMixd",
    "RandGlobalIntensityNonlineard",
    "RandOrganShiftd",
    "build_domain_augmentation",
    "match_moments",
    "random_network_appearance",
]

RANGE_KEY = "intensity_range"
# Mixed into a dataset's augmentation seed for these operations, so that switching them on leaves the draws of the
# other operations as they were.
DOMAIN_SEED_SALT = 0xD0A1
# Kernel sizes the random network draws from for each layer: 1 x 1 layers change intensities pixel by pixel, 3 x 3
# layers add texture.
KERNEL_SIZES = (1, 3)
LEAKY_SLOPE = 0.2
_EPS = 1e-6


def match_moments(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``image`` shifted and scaled to the mean and standard deviation of ``reference`` (over all its values).

    A constant ``image`` carries no appearance to keep: ``reference`` is returned instead.
    """
    std = image.std(unbiased=False)
    if float(std) < _EPS:
        return reference.clone()
    return (image - image.mean()) / std * reference.std(unbiased=False) + reference.mean()


def random_network_appearance(
    image: torch.Tensor, rng: np.random.RandomState, layers: int, channels: int
) -> torch.Tensor:
    """``image`` (C, H, W) through one shallow convolutional network with random weights, channel by channel.

    The image is standardized first, so the network's non-linearities fall within its values whatever their unit.
    Each layer draws its kernel size from ``KERNEL_SIZES`` and its weights and biases from a standard normal; a leaky
    ReLU follows every layer but the last, which has one output channel. Borders are padded by replication.

    Returns:
        The raw network output (C, H, W), in no particular unit (:func:`match_moments` brings it to the image's).
    """
    hidden = (image - image.mean()) / image.std(unbiased=False).clamp_min(_EPS)
    hidden = hidden[:, None]
    for layer in range(layers):
        size = int(rng.choice(KERNEL_SIZES))
        out_channels = 1 if layer == layers - 1 else channels
        weight = torch.from_numpy(rng.standard_normal((out_channels, hidden.shape[1], size, size)).astype(np.float32))
        bias = torch.from_numpy(rng.standard_normal(out_channels).astype(np.float32))
        if size > 1:
            hidden = F.pad(hidden, (size // 2,) * 4, mode="replicate")
        hidden = F.conv2d(hidden, weight, bias)
        if layer < layers - 1:
            hidden = F.leaky_relu(hidden, LEAKY_SLOPE)
    return hidden[:, 0]


class _AppearanceOpd(RandomizableTransform, MapTransform):
    """Shared part: read the image (and label), act with the operation's probability, clip to the sample's range."""

    def __init__(self, prob: float, image_key: str, label_key: str, range_key: str) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key])
        self.image_key, self.label_key, self.range_key = image_key, label_key, range_key

    def intensity_range(self, data: Mapping[Hashable, Any], image: torch.Tensor) -> tuple[float, float]:
        """The sample's ``range_key`` entry, or the image's own minimum and maximum."""
        given = data.get(self.range_key)
        if given is not None:
            return float(given[0]), float(given[1])
        return float(image.min()), float(image.max())

    def apply(self, image: torch.Tensor, data: Mapping[Hashable, Any], span: float) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        super().randomize(None)
        if not self._do_transform:
            return out
        image = convert_to_tensor(out[self.image_key], track_meta=False, dtype=torch.float32)
        low, high = self.intensity_range(out, image)
        out[self.image_key] = self.apply(image, out, high - low).clamp(low, high)
        return out


class RandOrganShiftd(_AppearanceOpd):
    """Each labeled structure's intensity shifted by its own draw, as contrast enhancement does; background kept.

    Args:
        prob: Probability of acting.
        shift_range: Range of each structure's shift, as a fraction of the sample's intensity range.
        sigma: Standard deviation in pixels of the Gaussian that softens the shift at the structures' edges (0:
            sharp edges, which a network could take as a cue).
        image_key: Key of the (C, H, W) image.
        label_key: Key of the (1, H, W) or (H, W) label (class ids, possibly as floats).
        range_key: Key of the sample's (low, high) intensity range.
    """

    def __init__(
        self,
        prob: float,
        shift_range: tuple[float, float],
        sigma: float = 1.0,
        image_key: str = "image",
        label_key: str = "label",
        range_key: str = RANGE_KEY,
    ) -> None:
        super().__init__(prob, image_key, label_key, range_key)
        self.shift_range = (float(shift_range[0]), float(shift_range[1]))
        self.sigma = float(sigma)

    def apply(self, image: torch.Tensor, data: Mapping[Hashable, Any], span: float) -> torch.Tensor:
        label = np.rint(convert_to_tensor(data[self.label_key], track_meta=False).numpy()).astype(np.int64)
        label = label.reshape(image.shape[-2:])
        classes = np.unique(label)
        classes = classes[classes > 0]
        if classes.size == 0:
            return image
        lookup = np.zeros(int(classes.max()) + 1, dtype=np.float32)
        lookup[classes] = self.R.uniform(*self.shift_range, size=classes.size) * span
        shift = lookup[label]
        if self.sigma > 0:
            shift = ndimage.gaussian_filter(shift, self.sigma, mode="nearest")
        return image + torch.from_numpy(shift)


class RandGlobalIntensityNonlineard(_AppearanceOpd):
    """GIN: a random shallow network's output, mixed with the image, at the image's mean and standard deviation.

    With ``a`` drawn from ``mix_range`` and ``g`` the network's output brought to the image's moments, the result is
    ``a * g + (1 - a) * x``, brought back to the moments of ``x``.

    Args:
        prob: Probability of acting.
        layers: Convolutional layers of the network.
        channels: Channels between its layers.
        mix_range: Range of ``a``.
        image_key: Key of the (C, H, W) image.
        label_key: Unused (the operation ignores labels); kept for a uniform signature.
        range_key: Key of the sample's (low, high) intensity range.
    """

    def __init__(
        self,
        prob: float,
        layers: int = 4,
        channels: int = 2,
        mix_range: tuple[float, float] = (0.0, 1.0),
        image_key: str = "image",
        label_key: str = "label",
        range_key: str = RANGE_KEY,
    ) -> None:
        super().__init__(prob, image_key, label_key, range_key)
        self.layers, self.channels = int(layers), int(channels)
        self.mix_range = (float(mix_range[0]), float(mix_range[1]))

    def apply(self, image: torch.Tensor, data: Mapping[Hashable, Any], span: float) -> torch.Tensor:
        weight = float(self.R.uniform(*self.mix_range))
        output = match_moments(random_network_appearance(image, self.R, self.layers, self.channels), image)
        return match_moments(weight * output + (1.0 - weight) * image, image)


class RandAppearanceMixd(_AppearanceOpd):
    """IPA-style resampling: a smooth random mask blends the image with a second random appearance of it.

    The mask is a ``grid`` x ``grid`` array of uniform control values in [0, 1], interpolated bicubically over the
    image and clipped to [0, 1]; the second appearance is a fresh random network's output (as in GIN) at the
    image's moments. The blend ``m * x + (1 - m) * g`` is brought back to the moments of ``x``.

    Args:
        prob: Probability of acting.
        grid: Control points per side of the mask.
        layers: Convolutional layers of the second appearance's network.
        channels: Channels between its layers.
        image_key: Key of the (C, H, W) image.
        label_key: Unused (the mask ignores labels, which is what makes the structures' appearances independent).
        range_key: Key of the sample's (low, high) intensity range.
    """

    def __init__(
        self,
        prob: float,
        grid: int = 4,
        layers: int = 4,
        channels: int = 2,
        image_key: str = "image",
        label_key: str = "label",
        range_key: str = RANGE_KEY,
    ) -> None:
        super().__init__(prob, image_key, label_key, range_key)
        self.grid, self.layers, self.channels = int(grid), int(layers), int(channels)

    def mask(self, shape: tuple[int, int]) -> torch.Tensor:
        """One smooth random (H, W) mask in [0, 1] (draws from the transform's random state)."""
        control = torch.from_numpy(self.R.uniform(0.0, 1.0, size=(1, 1, self.grid, self.grid)).astype(np.float32))
        return F.interpolate(control, size=shape, mode="bicubic", align_corners=True)[0, 0].clamp(0.0, 1.0)

    def apply(self, image: torch.Tensor, data: Mapping[Hashable, Any], span: float) -> torch.Tensor:
        mask = self.mask(tuple(image.shape[-2:]))
        other = match_moments(random_network_appearance(image, self.R, self.layers, self.channels), image)
        return match_moments(mask * image + (1.0 - mask) * other, image)


def build_domain_augmentation(
    cfg: DomainAugmentationFields, image_key: str = "image", label_key: str = "label", range_key: str = RANGE_KEY
) -> Compose:
    """The three operations of the module docstring, in order, with the settings of ``cfg`` (whatever its switch).

    Returns:
        A randomizable MONAI ``Compose`` of dictionaries holding a (C, H, W) image, a (1, H, W) label and, ideally,
        the sample's intensity range under ``range_key``.

    Example:
        >>> import torch
        >>> from perspective_unet.config.augmentation import SpacingAugmentationConfig
        >>> augment = build_domain_augmentation(SpacingAugmentationConfig(gin_prob=1.0)).set_random_state(0)
        >>> label = torch.zeros(1, 32, 32)
        >>> out = augment({"image": torch.rand(1, 32, 32), "label": label, "intensity_range": (0.0, 1.0)})
        >>> bool(out["label"] is label), float(out["image"].min()) >= 0.0
        (True, True)
    """
    keys = {"image_key": image_key, "label_key": label_key, "range_key": range_key}
    return Compose(
        [
            RandOrganShiftd(cfg.organ_shift_prob, cfg.organ_shift_range, cfg.organ_shift_sigma, **keys),
            RandGlobalIntensityNonlineard(cfg.gin_prob, cfg.gin_layers, cfg.gin_channels, cfg.gin_mix_range, **keys),
            RandAppearanceMixd(cfg.ipa_prob, cfg.ipa_grid, cfg.gin_layers, cfg.gin_channels, **keys),
        ]
    )
