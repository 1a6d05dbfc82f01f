"""Torch datasets over prepared data and over the files that circulate in this line of work, read as they are.

They read a dataset through its layout (:class:`~perspective_unet.data.layouts.base.DatasetLayout`), given, or found
by :func:`~perspective_unet.data.layouts.detect.open_dataset` from a folder.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy import ndimage
from torch.utils.data import Dataset

from perspective_unet.channels import apply_stored_channels
from perspective_unet.config.augmentation import AugmentationConfig
from perspective_unet.data.augmentation import build_augmentation
from perspective_unet.data.checks import check_finite, check_label_values
from perspective_unet.data.domain_augmentation import DOMAIN_SEED_SALT, RANGE_KEY, build_domain_augmentation
from perspective_unet.data.layouts.base import TRAIN_DIR, DatasetLayout, SliceRef, context_indices
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.data.layouts.info import SPLITS
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats, IntensitySpec

__all__ = ["SliceDataset", "VolumeDataset", "seed_worker"]

logger = logging.getLogger(__name__)


def _as_layout(dataset: str | os.PathLike[str] | DatasetLayout) -> DatasetLayout:
    """The layout given, or the layout of the folder given."""
    return dataset if isinstance(dataset, DatasetLayout) else open_dataset(dataset)


def _require_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def _as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = (int(s) for s in size)
    return (height, width)


class SliceDataset(Dataset):
    """2D slices for the paper's protocol: zoomed to ``img_size``, optionally augmented, then scaled for the network.

    Each item is ``{"image": float32 (C, H, W), "label": int64 (H, W), "case": str}``: the image is zoomed with cubic
    interpolation and the label with nearest neighbor (as TransUNet does, with ``scipy.ndimage.zoom``), then
    augmented, then scaled by ``intensity`` (by default (x - 0.5) / 0.5, the paper's). ``C`` is
    ``2 * context_slices + 1``: the slice between the ``context_slices`` slices below and above it (ends repeated),
    times the data's input channels (channel-major: channel 0's planes, then channel 1's, ...). ``case`` is the
    slice's name, ``<case>_slice<NNN>``. Labels keep the dataset's ignore label (voxels without annotation).

    The training split reads ``train_npz`` (or the ACDC ``train/`` folder); the val and test splits give the slices
    of the volumes (or the ACDC ``valid/`` slice files).

    Args:
        root: A dataset layout, or its folder (a prepared dataset or circulating Synapse / ACDC files).
        split: ``"train"``, ``"val"`` or ``"test"``.
        img_size: Size (H, W) of the items, or one int for a square.
        augmentation: Augmentation settings; None for none (validation, testing).
        seed: Seed of the augmentation's draws. In DataLoader workers ``seed_worker`` combines it with the worker's
            seed, so workers draw differently and the same seeds give the same samples. With the augmentation's
            ``stream: released`` the k-th sample augmented after :meth:`reseed` gets draw k of a sequence fixed by
            ``seed`` alone, in every worker and epoch (the released training's stream).
        context_slices: Neighboring slices on each side taken as extra channels.
        intensity: The plan's intensity normalization (its ``scaling`` is applied to the stored values); None for the
            paper's (x - 0.5) / 0.5. Input channel 0's for data of several channels.
        other_channels: The plan's intensity normalization of input channels 1, 2, ... (``Plan.other_channels``).
        cases: Only these development cases, from the train and val splits both (a cross-validation fold's, see
            :mod:`~perspective_unet.data.folds`); ``split`` is then ignored.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | DatasetLayout,
        split: str = "train",
        img_size: int | Sequence[int] = (224, 224),
        augmentation: AugmentationConfig | None = None,
        seed: int = 1234,
        *,
        context_slices: int = 0,
        intensity: IntensitySpec | None = None,
        other_channels: Sequence[IntensitySpec] = (),
        cases: Sequence[str] | None = None,
    ) -> None:
        _require_split(split)
        self.layout = _as_layout(root)
        self.root = self.layout.root
        self.split = split
        self.img_size = _as_pair(img_size)
        self.info = self.layout.info
        self.seed = int(seed)
        self.augmentation_config = augmentation
        self._augment = build_augmentation(augmentation) if augmentation is not None else None
        domain = augmentation is not None and augmentation.domain_generalization
        self._domain = build_domain_augmentation(augmentation) if domain else None
        self.intensity = intensity or IntensitySpec("unit")
        self.intensities = (self.intensity, *other_channels)
        if len(self.intensities) != self.info.num_channels:
            raise InputError(
                f"{self.root} holds images of {self.info.num_channels} input channel(s) but the plan normalizes "
                f"{len(self.intensities)}; write the plan again with `perspective-unet plan -d {self.root} --reset`."
            )
        self.samples = self.layout.list_slices(split) if cases is None else self.layout.case_slices(cases)
        if not self.samples:
            raise InputError(f"{self.root} has no {split} slices; check the folder or choose another split.")
        self.context = context_indices(self.samples, context_slices)
        self.per_image = any(spec.per_image for spec in self.intensities)
        self.case_stats = self.layout.case_statistics() if self.per_image else {}
        self.released_stream = augmentation is not None and augmentation.stream == "released"
        self.stream_position = 0
        self.reseed(None)

    def reseed(self, worker_seed: int | None) -> None:
        """Reset the augmentation's random state from the dataset seed and, in a worker, the worker's seed.

        With the released stream the worker's seed is ignored: the draws start again from the first of the sequence
        (as every forked worker of the released training does at each epoch).
        """
        if self._augment is None:
            return
        if self.released_stream:
            self.stream_position = 0
            return
        entropy = [self.seed] if worker_seed is None else [self.seed, int(worker_seed)]
        state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        self._augment.set_random_state(seed=state)
        if self._domain is not None:
            self._domain.set_random_state(seed=state ^ DOMAIN_SEED_SALT)

    def _next_draw(self) -> None:
        """With the released stream, set the augmentation to the next draw of the sequence (one seed per draw, so a
        draw does not depend on the images drawn before it)."""
        if not self.released_stream:
            return
        state = np.random.SeedSequence([self.seed, self.stream_position]).generate_state(1)[0]
        self._augment.set_random_state(seed=int(state))
        self.stream_position += 1

    def __len__(self) -> int:
        return len(self.samples)

    def load_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice, before zoom, augmentation and normalization: image float32 (H, W) (or (C, H, W) for
        several channels), label int64 (H, W)."""
        ref = self.samples[index]
        image, label = self.layout.read_slice(ref)
        if label is None:
            raise InputError(f"{ref.path} has no label; slices for training and validation need one.")
        return image, label

    def load_stack(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice with its context slices: image float32 (C, H, W), label int64 (H, W); for data of several
        channels each channel's planes together (channel-major)."""
        image, label = self.load_slice(index)
        if len(self.context[index]) == 1:
            return (image[None] if image.ndim == 2 else image), label
        planes = [image if i == index else self.layout.read_slice(self.samples[i])[0] for i in self.context[index]]
        if any(p.shape != image.shape for p in planes):
            raise InputError(
                f"{self.samples[index].path}: the slices of case {self.samples[index].case!r} differ in "
                "shape; context slices need one in-plane grid per case."
            )
        stack = np.stack(planes)  # (planes, H, W), or (planes, channels, H, W)
        return (stack if stack.ndim == 3 else stack.swapaxes(0, 1).reshape(-1, *image.shape[-2:])), label

    def stats_of(self, index: int) -> tuple[ImageStats, ...] | None:
        """The whole case's statistics per input channel for per-image z-scoring (None when no channel's scaling
        needs them)."""
        if not self.per_image:
            return None
        case = self.samples[index].case
        if case not in self.case_stats:
            raise InputError(f"{self.root} has no fingerprint statistics for case {case!r}; prepare it again.")
        return self.case_stats[case]

    def _zoom(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[-2:]
        if (height, width) == self.img_size:
            return image, label
        factors = (self.img_size[0] / height, self.img_size[1] / width)
        return ndimage.zoom(image, (1.0, *factors), order=3), ndimage.zoom(label, factors, order=0)

    def _augmented(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._next_draw()
        data = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None],
        }
        if self._domain is not None:  # on stored values, whose range is [0, 1] whatever the normalization
            changed = self._domain({**data, RANGE_KEY: (0.0, 1.0)})
            data["image"] = changed["image"]
        out = self._augment(data)
        image_t = convert_to_tensor(out["image"], track_meta=False, dtype=torch.float32)
        label_t = convert_to_tensor(out["label"], track_meta=False, dtype=torch.float32)
        return image_t.numpy(), torch.round(label_t[0]).numpy()

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.load_stack(index)
        first = self._augment is not None and self.augmentation_config.before_resize
        if first:  # the released order: augment the stored slice, then zoom
            image, label = self._augmented(image, label)
        image, label = self._zoom(image, label)
        if self._augment is not None and not first:
            image, label = self._augmented(image, label)
        scaled = apply_stored_channels(self.intensities, image, self.stats_of(index))
        return {
            "image": torch.from_numpy(scaled).contiguous(),
            "label": torch.from_numpy(np.rint(label).astype(np.int64)),
            "case": self.samples[index].name,
        }


class VolumeDataset(Dataset):
    """Whole volumes for evaluation, with their geometry.

    Each item is ``{"image": float32 (Z, H, W) in [0, 1] ((Z, C, H, W) for several channels), "label": uint8 (Z, H, W)
    or None (with the dataset's ignore label where voxels carry no annotation), "case": str,
    "spacing": (z, y, x) mm or None, "meta": dict}`` with numpy arrays. ``meta`` holds the h5 attributes of
    prepared volumes (``affine``, ``original_shape``, ``orientation``, ``canonical_shape``, ``source``, and
    ``crop_z`` for a block cut out of a larger volume): with ``io.from_canonical`` they put a prediction back on
    the original voxel grid. Circulating files carry no geometry: their spacing is None and meta is empty.

    Args:
        root: A dataset layout, or its folder (a prepared dataset or circulating Synapse / ACDC files).
        split: ``"val"`` or ``"test"`` (``"train"`` only for MT-UNet-style ACDC folders, which hold no training
            volumes).
        cases: Only these development cases (a cross-validation fold's validation cases); ``split`` is then ignored.
            A case stored as training slices comes back as the stack of its slices in slice order, with the
            geometry ``geometry.json`` records (spacing, affine, original shape, orientation; nothing in circulating
            files).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | DatasetLayout,
        split: str = "test",
        *,
        cases: Sequence[str] | None = None,
    ) -> None:
        _require_split(split)
        self.layout = _as_layout(root)
        self.root = self.layout.root
        self.split = split
        self.info = self.layout.info
        self.stacked: dict[str, list[SliceRef]] = {}
        self._geometry: dict[str, dict[str, Any]] | None = None
        if cases is None:
            self.volumes = self.layout.volume_files(split)
        else:
            stored = {case: path for case, path in self.layout.volume_files("val") if case in set(cases)}
            for ref in self.layout.case_slices([c for c in cases if c not in stored]):
                self.stacked.setdefault(ref.case, []).append(ref)
            # A stacked case's "file" is where its slices lie (they are read from self.stacked).
            self.volumes = [(case, stored.get(case, self.root / TRAIN_DIR)) for case in cases]
        for case, path in self.volumes:
            if case not in self.stacked and not path.exists():
                raise InputError(f"{path} is missing; the dataset lists case {case!r} in its {split} split.")

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case, path = self.volumes[index]
        image, label, attrs = self._stack(case) if case in self.stacked else self.layout.read_volume(path)
        channels = self.info.num_channels
        spatial = image.shape if image.ndim != 4 else (image.shape[0], *image.shape[2:])
        if (
            image.ndim != (3 if channels == 1 else 4)
            or (channels > 1 and image.shape[1] != channels)
            or (label is not None and label.shape != spatial)
        ):
            shape = None if label is None else label.shape
            form = "(Z, H, W)" if channels == 1 else f"(Z, {channels}, H, W)"
            raise InputError(f"{path}: image {image.shape} and label {shape} must be a {form} image and its label.")
        self._check_values(image, label, f"{path} (case {case!r})")
        spacing = attrs.pop("spacing", None)
        return {
            "image": image.astype(np.float32, copy=False),
            "label": None if label is None else np.rint(label).astype(np.uint8),
            "case": case,
            "spacing": None if spacing is None else tuple(float(s) for s in np.ravel(spacing)),
            "meta": attrs,
        }

    def _check_values(self, image: np.ndarray, label: np.ndarray | None, where: str) -> None:
        """Raise ``InputError`` naming the file and case for NaN or infinite intensities and for labels outside the
        dataset's classes (a model would be blamed for them, or a metric would fail without a name)."""
        check_finite(image, where)
        if label is not None and label.size:
            classes, low, high = self.info.num_classes, label.min(), label.max()
            ignore = self.info.ignore_label
            # The range alone is checked on every volume; the full check (which sorts the values) only names them.
            if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or (high >= classes and high != ignore):
                allowed = [*range(classes), *([ignore] if ignore is not None else [])]
                check_label_values(label, allowed, where)

    def _stack(self, case: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        refs = sorted(self.stacked[case], key=lambda ref: ref.position)
        slices = [self.layout.read_slice(ref) for ref in refs]
        if len({image.shape for image, _ in slices}) > 1:
            raise InputError(
                f"{self.root}: the training slices of case {case!r} differ in shape; they cannot be "
                "stacked into a validation volume."
            )
        if self._geometry is None:
            self._geometry = self.layout.geometry()
        attrs = dict(self._geometry.get(case, {}))
        attrs.setdefault("spacing", None)
        return np.stack([s[0] for s in slices]), np.stack([s[1] for s in slices]), attrs


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: seed Python, NumPy and the dataset's augmentation per worker.

    PyTorch gives each worker the seed ``base_seed + worker_id``, where ``base_seed`` comes from the DataLoader's
    generator (or the global torch seed): seeding everything from it makes workers draw differently from each other
    and the same seeds give the same batches.
    """
    info = torch.utils.data.get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    dataset: Any = info.dataset if info is not None else None
    pending = [dataset]
    while pending:
        current = pending.pop()
        if current is None:
            continue
        if hasattr(current, "reseed"):
            current.reseed(seed)
        elif hasattr(current, "datasets"):  # ConcatDataset
            pending.extend(current.datasets)
        elif hasattr(current, "dataset"):  # Subset and similar wrappers
            pending.append(current.dataset)
