"""What every raw dataset format shares: the :class:`RawDataset` interface its converter implements, reading an
image/label pair with every check, and progress bars.

A raw format is converted, never read by training: ``perspective-unet prepare <command>`` (or the converter's
``prepare``) writes it into the prepared layout through
:class:`~perspective_unet.data.layouts.prepared.PreparedWriter`, which records the fingerprint and plan.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from tqdm import tqdm

from perspective_unet.data.checks import (
    check_channel_grid,
    check_finite,
    check_label_values,
    check_same_geometry,
    check_slice_size,
)
from perspective_unet.data.io import read_image
from perspective_unet.data.orientation import CANONICAL_ORIENTATION, canonical_spacing, to_canonical

__all__ = [
    "CanonicalPair",
    "RawDataset",
    "progress",
    "read_channels",
    "read_pair",
    "remap_labels",
    "volume_attrs",
    "warn_if_all_background",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RawDataset(ABC):
    """A raw dataset folder in one format, and its converter to the prepared layout.

    Attributes:
        command: The ``perspective-unet prepare`` sub-command that converts the format.
        description: The format in a few words, for messages.
        root: The raw folder.
    """

    command: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    @abstractmethod
    def recognizes(cls, root: Path) -> bool:
        """Whether ``root`` looks like this format (from names on disk; nothing is read)."""

    @abstractmethod
    def prepare(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Convert the folder into the prepared layout at ``out`` (written atomically); returns ``out``.

        Converters with options take them as further keyword arguments.

        Raises:
            InputError: Bad input files (the message names the file and what to do).
        """


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on a terminal, nothing in logs and tests (``disable=None`` switches it off without a TTY)."""
    return iter(tqdm(items, desc=desc, total=total, unit="case", disable=None, leave=False))


class CanonicalPair:
    """An image and its label map, read, checked and brought to the canonical (Z, H, W) order.

    Attributes:
        image: (Z, H, W) float array, raw intensities; (Z, C, H, W) for several channels.
        label: (Z, H, W) int array of class ids (after ``label_map``), or None.
        meta: The image's meta from ``read_image``.
        orientation: The orientation the canonical arrays are in.
    """

    def __init__(self, image: np.ndarray, label: np.ndarray | None, meta: dict[str, Any], orientation: str) -> None:
        self.image = image
        self.label = label
        self.meta = meta
        self.orientation = orientation

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the canonical arrays."""
        return canonical_spacing(self.meta, self.orientation)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The canonical (Z, H, W) shape, without the channel axis."""
        shape = self.image.shape
        return (shape[0], shape[-2], shape[-1])


def read_pair(
    image_path: Path,
    label_path: Path | None,
    allowed_labels: Iterable[int],
    orientation: str = CANONICAL_ORIENTATION,
    label_map: dict[int, int] | None = None,
) -> CanonicalPair:
    """Read an image and its label, check them, and reorient both to canonical order.

    Args:
        image_path: Image file (or DICOM folder).
        label_path: Label file, or None for an unlabeled image.
        allowed_labels: Label values the file may hold (before ``label_map``).
        orientation: Canonical orientation code (see ``to_canonical``).
        label_map: Source value -> class id; values not in it become 0 (background).

    Raises:
        InputError: Unreadable files, NaN/Inf voxels, slices smaller than 2 x 2 pixels, shape or geometry mismatch,
            undeclared label values.
    """
    image, meta = read_image(image_path)
    check_finite(image, image_path)
    canonical = to_canonical(image.astype(np.float32), meta, orientation)
    check_slice_size(canonical.shape, image_path)
    label = None
    if label_path is not None:
        label, label_meta = read_image(label_path, as_label=True)
        check_same_geometry(meta, label_meta, image_path, label_path)
        check_label_values(label, allowed_labels, label_path)
        label = label.astype(np.int64)
        if label_map is not None:
            label = remap_labels(label, label_map)
        label = to_canonical(label, meta, orientation)
    return CanonicalPair(canonical, label, meta, orientation)


def read_channels(pair: CanonicalPair, first_path: Path, others: Iterable[Path]) -> CanonicalPair:
    """The pair with the case's other channel files read beside its image: image (Z, C, H, W), channel order kept.

    Args:
        pair: The case's first channel and its label (:func:`read_pair`).
        first_path: The first channel's file.
        others: The files of channels 1, 2, ...

    Raises:
        InputError: A file is unreadable, holds NaN/Inf voxels, or lies on another voxel grid than the first.
    """
    channels = [pair.image]
    for path in others:
        image, meta = read_image(path)
        check_finite(image, path)
        check_channel_grid(pair.meta, meta, first_path, path)
        channels.append(to_canonical(image.astype(np.float32), pair.meta, pair.orientation))
    if len(channels) == 1:
        return pair
    return CanonicalPair(np.stack(channels, axis=1), pair.label, pair.meta, pair.orientation)


def remap_labels(label: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Map source label values to class ids with a lookup table; unmapped values become 0."""
    size = max(int(label.max(initial=0)), max(label_map, default=0)) + 1
    table = np.zeros(size, dtype=np.int64)
    for source, target in label_map.items():
        table[source] = target
    return table[label]


def volume_attrs(pair: CanonicalPair, source: str, **extra: Any) -> dict[str, Any]:
    """The h5 attributes that let a prediction on the canonical volume be written back onto the original grid."""
    meta = pair.meta
    attrs: dict[str, Any] = {
        "affine": np.asarray(meta["affine"], dtype=np.float64),
        "original_shape": np.asarray(meta["shape"], dtype=np.int64),
        "original_axcodes": meta.get("axcodes", ""),
        "orientation": pair.orientation,
        "canonical_shape": np.asarray(pair.shape, dtype=np.int64),
        "source": source,
    }
    attrs.update(extra)
    return attrs


def warn_if_all_background(any_foreground: bool, folder: str | Path, what: str = "training label") -> bool:
    """Log a warning naming ``folder`` when no training label holds a foreground voxel; returns whether it warned.

    Such a dataset prepares without error, but a model trained on it only ever learns background: most often the
    label files are the wrong ones (empty exports, masks saved before drawing), which is worth saying before hours
    of training.

    Args:
        any_foreground: Whether any training label holds a class id above 0.
        folder: The raw dataset folder, named in the warning.
        what: What the labels are called in the message ("training label", "training mask").
    """
    if any_foreground:
        return False
    logger.warning(
        "%s: every %s is empty (background only); the dataset is prepared, but a model trained on it "
        "learns only background. Check that the %ss are the right files.",
        folder,
        what,
        what,
    )
    return True
