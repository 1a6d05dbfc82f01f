"""Training patches of the spacing protocol: slices at the plan's pixel spacing, patches centered on foreground.

Each item is one patch of the plan's size, cut out of a training slice that has been resampled to the plan's
in-plane spacing. A share ``foreground_fraction`` of the patches (a third, as nnU-Net) is centered on a labeled
pixel: a class is drawn uniformly among those present in the dataset, then a slice that holds it and one of its
pixels. The other patches come from the slice the sampler asked for, at a random position. Rotation and scaling are
applied while the patch is cut (one interpolation), the appearance augmentation for unseen domains (when switched on)
and the other operations of the augmentation afterwards.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Affine, MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from perspective_unet.channels import apply_stored_channels, channel_ceilings, channel_floors
from perspective_unet.config.augmentation import SpacingAugmentationConfig
from perspective_unet.data.datasets import SliceDataset
from perspective_unet.data.domain_augmentation import DOMAIN_SEED_SALT, RANGE_KEY, build_domain_augmentation
from perspective_unet.data.layouts.base import DatasetLayout
from perspective_unet.data.resample import resample_image, resample_labels, resampled_shape
from perspective_unet.data.spacing_augmentation import build_spacing_augmentation
from perspective_unet.errors import InputError
from perspective_unet.plan import Plan

__all__ = ["PatchDataset", "RandPatchAffined"]

# Resampled slices are kept in memory up to this many bytes per process; beyond it they are resampled at every use.
CACHE_BYTES = 2 * 1024**3


class RandPatchAffined(RandomizableTransform, MapTransform):
    """Cut a patch around ``data["center"]`` with a random rotation and scaling, in one resampling (MONAI ``Affine``).

    The image is interpolated bilinearly and padded outside the slice with ``data["pad"]`` (one value, or a (C, 1, 1)
    tensor of one value per input channel); the label by nearest neighbor, padded with background.

    Args:
        patch_size: (height, width) of the patch.
        rotate_prob: Probability of a rotation.
        rotate_degrees: Rotation drawn from [-rotate_degrees, rotate_degrees].
        scale_prob: Probability of a scaling.
        scale_range: Range of the zoom factor (> 1 enlarges the anatomy).
        image_key: Key of the (C, H, W) image.
        label_key: Key of the (1, H, W) label.
    """

    def __init__(
        self,
        patch_size: tuple[int, int],
        rotate_prob: float = 0.0,
        rotate_degrees: float = 0.0,
        scale_prob: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        RandomizableTransform.__init__(self, 1.0)
        MapTransform.__init__(self, [image_key, label_key])
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.rotate_prob, self.rotate_degrees = rotate_prob, rotate_degrees
        self.scale_prob, self.scale_range = scale_prob, scale_range
        self.image_key, self.label_key = image_key, label_key
        self.angle, self.scale = 0.0, 1.0

    def randomize(self, data: Any = None) -> None:
        rotate = self.R.uniform() < self.rotate_prob
        self.angle = math.radians(self.R.uniform(-self.rotate_degrees, self.rotate_degrees)) if rotate else 0.0
        scale = self.R.uniform() < self.scale_prob
        self.scale = float(self.R.uniform(*self.scale_range)) if scale else 1.0

    def matrix(self, center: tuple[float, float], shape: tuple[int, int]) -> torch.Tensor:
        """Patch pixel (centered) -> slice pixel (centered) as a 3 x 3 matrix, for the current draw."""
        cos, sin = math.cos(self.angle) / self.scale, math.sin(self.angle) / self.scale
        return torch.tensor(
            [
                [cos, -sin, center[0] - (shape[0] - 1) / 2],
                [sin, cos, center[1] - (shape[1] - 1) / 2],
                [0.0, 0.0, 1.0],
            ],
            dtype=torch.float64,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        self.randomize()
        image, label = out[self.image_key], out[self.label_key]
        matrix = self.matrix(out["center"], tuple(image.shape[-2:]))
        pad = out["pad"] if isinstance(out["pad"], torch.Tensor) else float(out["pad"])
        # MONAI pads with zeros: shift the image so that zero is the padding value, then shift back.
        warp = Affine(affine=matrix, spatial_size=self.patch_size, padding_mode="zeros", image_only=True)
        out[self.image_key] = convert_to_tensor(warp(image - pad, mode="bilinear"), track_meta=False) + pad
        out[self.label_key] = convert_to_tensor(warp(label, mode="nearest"), track_meta=False)
        return out


class PatchDataset(Dataset):
    """Training patches of the spacing protocol (see the module docstring).

    Each item is ``{"image": float32 (C, h, w), "label": int64 (h, w), "case": str}`` with (h, w) the plan's patch
    size, the image in network-input units (each input channel's intensity scaling applied) and ``C`` the plan's
    ``in_channels``. Voxels marked with the dataset's ignore label keep it (they are never a foreground center).

    Args:
        root: A prepared dataset (its layout, or its folder) with a fingerprint (the cases' spacings).
        plan: A plan of the ``spacing`` protocol.
        augmentation: Augmentation settings; None for plain patches.
        seed: Seed of the patch positions and the augmentation. ``reseed`` (called per epoch and in each DataLoader
            worker by ``seed_worker``) restarts the draws, so a resumed run draws as an uninterrupted one.
        cases: Only these development cases (a cross-validation fold's training cases).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | DatasetLayout,
        plan: Plan,
        augmentation: SpacingAugmentationConfig | None = None,
        seed: int = 1234,
        *,
        cases: Sequence[str] | None = None,
    ) -> None:
        if plan.protocol != "spacing":
            raise ValueError(f"PatchDataset needs a plan of the spacing protocol, got {plan.protocol!r}.")
        self.plan = plan
        self.seed = int(seed)
        self.slices = SliceDataset(
            root,
            "train",
            context_slices=plan.context_slices,
            intensity=plan.intensity,
            other_channels=plan.other_channels,
            cases=cases,
        )
        self.ignore_label = self.slices.info.ignore_label
        self.root = self.slices.root
        fingerprint = self.slices.layout.fingerprint()
        if fingerprint is None:
            raise InputError(
                f"{self.root} has no fingerprint.json: the spacing protocol needs each case's spacing; "
                "prepare the dataset again with `perspective-unet prepare`."
            )
        self.spacing: dict[str, tuple[float, float]] = {}
        for ref in self.slices.samples:
            case = fingerprint.case(ref.case)
            if case is None or case.spacing is None:
                raise InputError(
                    f"{self.root}/fingerprint.json has no spacing for case {ref.case!r}; prepare it again."
                )
            self.spacing[ref.case] = (case.spacing[1], case.spacing[2])
        self.augmentation_config = augmentation
        if augmentation is None:
            self._patch = RandPatchAffined(plan.patch_size)
            self._augment = None
        else:
            self._patch = RandPatchAffined(
                plan.patch_size,
                augmentation.rotate_prob,
                augmentation.rotate_degrees,
                augmentation.scale_prob,
                augmentation.scale_range,
            )
            self._augment = build_spacing_augmentation(augmentation)
        domain = augmentation is not None and augmentation.domain_generalization
        self._domain = build_domain_augmentation(augmentation) if domain else None
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]] = {}
        self._cached_bytes = 0
        self._classes = self._slices_by_class() if plan.foreground_fraction > 0 else {}
        self.reseed(None)

    def __len__(self) -> int:
        return len(self.slices)

    def _slices_by_class(self) -> dict[int, np.ndarray]:
        found: dict[int, list[int]] = {}
        for index in range(len(self.slices)):
            for value in np.unique(self.slices.load_slice(index)[1]):
                if value > 0 and value != self.ignore_label:
                    found.setdefault(int(value), []).append(index)
        return {c: np.asarray(indices) for c, indices in sorted(found.items())}

    def reseed(self, worker_seed: int | None) -> None:
        """Restart the random draws from the dataset seed and, in a worker, the worker's seed."""
        entropy = [self.seed] if worker_seed is None else [self.seed, int(worker_seed)]
        state = np.random.SeedSequence(entropy).generate_state(2)
        self._rng = np.random.RandomState(int(state[0]))
        self._patch.set_random_state(seed=int(state[1]))
        if self._augment is not None:
            self._augment.set_random_state(seed=int(state[1]) ^ 0x5EED)
        if self._domain is not None:
            self._domain.set_random_state(seed=int(state[1]) ^ DOMAIN_SEED_SALT)

    def resampled(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        """Slice ``index`` at the plan's spacing: image (C, h, w) in network units, label (h, w), padding value (one,
        or a (C, 1, 1) tensor of one per input plane for data of several channels)."""
        if index in self._cache:
            return self._cache[index]
        stack, label = self.slices.load_stack(index)
        stats = self.slices.stats_of(index)
        plan = self.plan
        image = torch.from_numpy(apply_stored_channels(plan.intensities, stack, stats))
        size = resampled_shape(label.shape, self.spacing[self.slices.samples[index].case], plan.spacing)
        image = resample_image(image[None], size)[0]
        labels = resample_labels(torch.from_numpy(label.astype(np.uint8))[None], size)[0]
        floors = channel_floors(plan.intensities, stats, 2 * plan.context_slices + 1)
        pad = floors[0] if plan.num_channels == 1 else torch.tensor(floors, dtype=torch.float32).view(-1, 1, 1)
        entry = (image, labels, pad)
        size_bytes = image.numel() * 4 + labels.numel()
        if self._cached_bytes + size_bytes <= CACHE_BYTES:
            self._cache[index] = entry
            self._cached_bytes += size_bytes
        return entry

    def _choose(self, index: int) -> tuple[int, tuple[float, float]]:
        """The slice and the patch center (row, column) of one draw."""
        rng = self._rng
        forced = bool(self._classes) and rng.uniform() < self.plan.foreground_fraction
        if forced:
            cls = list(self._classes)[rng.randint(len(self._classes))]
            index = int(self._classes[cls][rng.randint(len(self._classes[cls]))])
        _, labels, _ = self.resampled(index)
        height, width = labels.shape
        if forced:
            foreground = (labels > 0) & (labels != self.ignore_label) if self.ignore_label is not None else labels > 0
            pixels = torch.nonzero(labels == cls) if bool((labels == cls).any()) else torch.nonzero(foreground)
            if len(pixels):
                row, column = pixels[rng.randint(len(pixels))].tolist()
                return index, (float(row), float(column))
        center = []
        for side, patch in ((height, self.plan.patch_size[0]), (width, self.plan.patch_size[1])):
            low, high = patch / 2 - 0.5, side - patch / 2 - 0.5
            center.append(rng.uniform(low, high) if high > low else (side - 1) / 2)
        return index, (center[0], center[1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, center = self._choose(index)
        image, labels, pad = self.resampled(index)
        data = {"image": image, "label": labels[None].float(), "center": center, "pad": pad}
        data = self._patch(data)
        if self._domain is not None:
            sample = {"image": data["image"], "label": data["label"], RANGE_KEY: (pad, self._ceiling(index))}
            data["image"] = self._domain(sample)["image"]
        if self._augment is not None:
            data = self._augment({"image": data["image"], "label": data["label"]})
        image_t = convert_to_tensor(data["image"], track_meta=False, dtype=torch.float32)
        label_t = convert_to_tensor(data["label"], track_meta=False, dtype=torch.float32)
        return {
            "image": image_t.contiguous(),
            "label": torch.round(label_t[0]).to(torch.int64),
            "case": self.slices.samples[index].name,
        }

    def _ceiling(self, index: int) -> float | torch.Tensor:
        """Network-input value of the brightest stored value (1) of slice ``index``, the top of its range: one value,
        or a (C, 1, 1) tensor of one per input plane (as the padding value) for data of several channels."""
        plan = self.plan
        ceilings = channel_ceilings(plan.intensities, self.slices.stats_of(index), 2 * plan.context_slices + 1)
        return ceilings[0] if plan.num_channels == 1 else torch.tensor(ceilings, dtype=torch.float32).view(-1, 1, 1)

    def load_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice (as :meth:`SliceDataset.load_slice`), for sampling weights."""
        return self.slices.load_slice(index)
