"""Torch datasets over prepared data and over the files that circulate in this line of work, read as they are.

The layouts they read are recognized by :func:`~perspective_unet.data.dataset_info.read_dataset_info`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy import ndimage
from torch.utils.data import Dataset

from perspective_unet.config.augmentation import AugmentationConfig
from perspective_unet.data.augmentation import build_augmentation
from perspective_unet.data.dataset_info import read_dataset_info
from perspective_unet.data.domain_augmentation import DOMAIN_SEED_SALT, RANGE_KEY, build_domain_augmentation
from perspective_unet.data.layout import TRAIN_DIR, VOLUME_SUFFIX
from perspective_unet.data.planning import case_statistics
from perspective_unet.data.slices import (
    SliceRef,
    case_slices,
    context_indices,
    list_slices,
    load_h5,
    load_npz,
    load_slice,
    volume_files,
)
from perspective_unet.errors import InputError
from perspective_unet.intensity import ImageStats, IntensitySpec

__all__ = ["SPLITS", "SliceDataset", "VolumeDataset", "seed_worker"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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
    ``2 * context_slices + 1``: the slice between the ``context_slices`` slices below and above it (ends repeated).
    ``case`` is the slice's name, ``<case>_slice<NNN>``.

    The training split reads ``train_npz`` (or the ACDC ``train/`` folder); the val and test splits give the slices
    of the volumes (or the ACDC ``valid/`` slice files).

    Args:
        root: A prepared dataset or a folder of circulating Synapse / ACDC files.
        split: ``"train"``, ``"val"`` or ``"test"``.
        img_size: Size (H, W) of the items, or one int for a square.
        augmentation: Augmentation settings; None for none (validation, testing).
        seed: Seed of the augmentation's draws. In DataLoader workers ``seed_worker`` combines it with the worker's
            seed, so workers draw differently and the same seeds give the same samples.
        context_slices: Neighboring slices on each side taken as extra channels.
        intensity: The plan's intensity normalization (its ``scaling`` is applied to the stored values); None for the
            paper's (x - 0.5) / 0.5.
        cases: Only these development cases, from the train and val splits both (a cross-validation fold's, see
            :mod:`~perspective_unet.data.folds`); ``split`` is then ignored.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        img_size: int | Sequence[int] = (224, 224),
        augmentation: AugmentationConfig | None = None,
        seed: int = 1234,
        *,
        context_slices: int = 0,
        intensity: IntensitySpec | None = None,
        cases: Sequence[str] | None = None,
    ) -> None:
        _require_split(split)
        self.root = Path(root)
        self.split = split
        self.img_size = _as_pair(img_size)
        self.info = read_dataset_info(self.root)
        self.seed = int(seed)
        self.augmentation_config = augmentation
        self._augment = build_augmentation(augmentation) if augmentation is not None else None
        domain = augmentation is not None and augmentation.domain_generalization
        self._domain = build_domain_augmentation(augmentation) if domain else None
        self.intensity = intensity or IntensitySpec("unit")
        self.samples = (
            list_slices(self.root, self.info, split) if cases is None else case_slices(self.root, self.info, cases)
        )
        if not self.samples:
            raise InputError(f"{self.root} has no {split} slices; check the folder or choose another split.")
        self.context = context_indices(self.samples, context_slices)
        self.case_stats = case_statistics(self.root) if self.intensity.per_image else {}
        self.reseed(None)

    def reseed(self, worker_seed: int | None) -> None:
        """Reset the augmentation's random state from the dataset seed and, in a worker, the worker's seed."""
        if self._augment is None:
            return
        entropy = [self.seed] if worker_seed is None else [self.seed, int(worker_seed)]
        state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        self._augment.set_random_state(seed=state)
        if self._domain is not None:
            self._domain.set_random_state(seed=state ^ DOMAIN_SEED_SALT)

    def __len__(self) -> int:
        return len(self.samples)

    def load_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice, before zoom, augmentation and normalization: image float32 (H, W), label int64 (H, W)."""
        ref = self.samples[index]
        image, label = load_slice(ref)
        if label is None:
            raise InputError(f"{ref.path} has no label; slices for training and validation need one.")
        return image, label

    def load_stack(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice with its context slices: image float32 (C, H, W), label int64 (H, W)."""
        image, label = self.load_slice(index)
        if len(self.context[index]) == 1:
            return image[None], label
        channels = [image if i == index else load_slice(self.samples[i])[0] for i in self.context[index]]
        if any(c.shape != image.shape for c in channels):
            raise InputError(
                f"{self.samples[index].path}: the slices of case {self.samples[index].case!r} differ in "
                "shape; context slices need one in-plane grid per case."
            )
        return np.stack(channels), label

    def stats_of(self, index: int) -> ImageStats | None:
        """The whole case's statistics for per-image z-scoring (None when the scaling does not need them)."""
        if not self.intensity.per_image:
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
        scaled = self.intensity.apply_stored(image, self.stats_of(index))
        return {
            "image": torch.from_numpy(scaled).contiguous(),
            "label": torch.from_numpy(np.rint(label).astype(np.int64)),
            "case": self.samples[index].name,
        }


class VolumeDataset(Dataset):
    """Whole volumes for evaluation, with their geometry.

    Each item is ``{"image": float32 (Z, H, W) in [0, 1], "label": uint8 (Z, H, W) or None, "case": str,
    "spacing": (z, y, x) mm or None, "meta": dict}`` with numpy arrays. ``meta`` holds the h5 attributes of
    prepared volumes (``affine``, ``original_shape``, ``orientation``, ``canonical_shape``, ``source``, and
    ``crop_z`` for a block cut out of a larger volume): with ``io.from_canonical`` they put a prediction back on
    the original voxel grid. Circulating files carry no geometry: their spacing is None and meta is empty.

    Args:
        root: A prepared dataset or a folder of circulating Synapse / ACDC files.
        split: ``"val"`` or ``"test"`` (``"train"`` only for MT-UNet-style ACDC folders, which hold no training
            volumes).
        cases: Only these development cases (a cross-validation fold's validation cases); ``split`` is then ignored.
            A case stored as training slices comes back as the stack of its slices in slice order, with the
            spacing ``geometry.json`` records (None in circulating files) and no other geometry.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str = "test", *, cases: Sequence[str] | None = None
    ) -> None:
        _require_split(split)
        self.root = Path(root)
        self.split = split
        self.info = read_dataset_info(self.root)
        self.stacked: dict[str, list[SliceRef]] = {}
        if cases is None:
            self.volumes = volume_files(self.info, split)
        else:
            stored = {case: path for case, path in volume_files(self.info, "val") if case in set(cases)}
            for ref in case_slices(self.root, self.info, [c for c in cases if c not in stored]):
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
        if case in self.stacked:
            image, label, attrs = self._stack(case)
        elif path.name.endswith(VOLUME_SUFFIX):
            image, label, attrs = load_h5(path)
        else:
            image, label = load_npz(path)
            attrs = {}
        if image.ndim != 3 or (label is not None and label.shape != image.shape):
            shape = None if label is None else label.shape
            raise InputError(f"{path}: image {image.shape} and label {shape} must be equal (Z, H, W) volumes.")
        spacing = attrs.pop("spacing", None)
        return {
            "image": image.astype(np.float32, copy=False),
            "label": None if label is None else np.rint(label).astype(np.uint8),
            "case": case,
            "spacing": None if spacing is None else tuple(float(s) for s in np.ravel(spacing)),
            "meta": attrs,
        }

    def _stack(self, case: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        refs = sorted(self.stacked[case], key=lambda ref: ref.position)
        slices = [load_slice(ref) for ref in refs]
        if len({image.shape for image, _ in slices}) > 1:
            raise InputError(
                f"{self.root}: the training slices of case {case!r} differ in shape; they cannot be "
                "stacked into a validation volume."
            )
        spacing = _geometry(self.root).get(case, {}).get("spacing")
        return np.stack([s[0] for s in slices]), np.stack([s[1] for s in slices]), {"spacing": spacing}


def _geometry(root: Path) -> dict[str, Any]:
    path = root / "geometry.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); prepare the dataset again.") from None


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
