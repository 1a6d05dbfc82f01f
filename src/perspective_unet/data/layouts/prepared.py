"""The prepared layout every converter writes: :class:`PreparedDataset` reads it, :class:`PreparedWriter` writes it
atomically.

```
OUT/
  dataset.json                       name, num_classes, class_names, modality, normalization, source, license,
                                     splits {train, val, test}, orientation, img_format_version
  train_npz/<case>_slice<NNN>.npz    image float32 (H, W) in [0, 1] ((C, H, W) for C channels); label uint8 (H, W)
  val_vol_h5/<case>.npy.h5           image float32 (Z, H, W) in [0, 1] ((Z, C, H, W)); label uint8 (Z, H, W);
                                     geometry attrs
  test_vol_h5/<case>.npy.h5          the same
  lists/train.txt                    one slice name per line (<case>_slice<NNN>), as in TransUNet's files
  lists/val.txt, lists/test_vol.txt  one case name per line
  geometry.json                      per case (training cases too): spacing (z, y, x) mm, affine, original shape,
                                     orientation: what spacing-aware metrics and writing back in place need
  fingerprint.json                   per case: shape, spacing, intensity statistics; the training foreground's
                                     intensities (stored and raw units): what a plan is derived from
  plan.json                          the plan (protocol, spacing, patch size, intensity, batch size, context
                                     slices), see ``perspective_unet.plan``; editable, `perspective-unet plan`
```

Labels hold class ids; voxels without annotation (nnU-Net's ignore label) hold ``IGNORE_LABEL`` (255), recorded as
``ignore_label`` in ``dataset.json``.

``PreparedWriter`` writes into a hidden temporary folder beside OUT and renames it to OUT only when everything
succeeded, so a failure (bad input, a full disk, Ctrl-C) never leaves a half-written dataset. ``dataset.json`` is
:class:`~perspective_unet.data.layouts.info.DatasetInfo` at the file boundary: read by :meth:`PreparedDataset.open`,
written by :meth:`PreparedWriter.finish`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.layouts.base import GEOMETRY_FILE, TEST_DIR, TRAIN_DIR, DatasetLayout, slice_name
from perspective_unet.data.layouts.files import VOLUME_SUFFIX, FolderWriter, save_h5, save_npz
from perspective_unet.data.layouts.info import IMG_FORMAT_VERSION, SPLITS, DatasetInfo
from perspective_unet.errors import InputError
from perspective_unet.fingerprint import FINGERPRINT_FILE, FingerprintBuilder
from perspective_unet.intensity import IntensitySpec
from perspective_unet.outputs import read_json, write_json_atomic
from perspective_unet.plan import PLAN_FILE, PROTOCOLS, derive_plan

__all__ = [
    "DATASET_FILE",
    "LISTS_DIR",
    "VAL_DIR",
    "PreparedDataset",
    "PreparedWriter",
    "volume_dir",
]

logger = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
VAL_DIR = "val_vol_h5"
LISTS_DIR = "lists"
_LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test_vol.txt"}
_REQUIRED_KEYS = ("name", "num_classes", "class_names", "splits")
_REQUIRED_INFO = ("name", "modality", "normalization", "source", "license")


def volume_dir(split: str) -> str:
    """Folder of a split's volumes: ``val_vol_h5`` or ``test_vol_h5``."""
    if split not in ("val", "test"):
        raise ValueError(f"Only the val and test splits are stored as volumes, got {split!r}.")
    return VAL_DIR if split == "val" else TEST_DIR


class PreparedDataset(DatasetLayout):
    """A prepared folder (see the module docstring), as :class:`PreparedWriter` wrote it."""

    kind = "prepared"

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return (root / DATASET_FILE).is_file()

    @classmethod
    def open(cls, root: Path) -> PreparedDataset:
        return cls(root, read_dataset_json(root / DATASET_FILE))

    def train_names(self) -> list[str]:
        """``lists/train.txt`` (every slice file when it is missing), only the slices of the train split's cases."""
        list_path = self.root / LISTS_DIR / _LIST_FILES["train"]
        if list_path.is_file():
            names = [n.strip() for n in list_path.read_text().splitlines() if n.strip()]
        else:
            names = sorted(p.stem for p in (self.root / TRAIN_DIR).glob("*.npz"))
        cases = set(self.info.cases("train"))
        return [n for n in names if self.case_of(n) in cases]

    def volume_folder(self, split: str) -> Path | None:
        return self.root / volume_dir(split) if split in ("val", "test") else None


def read_dataset_json(path: Path) -> DatasetInfo:
    """A prepared folder's ``dataset.json``, checked.

    Raises:
        InputError: Invalid JSON, a raw nnU-Net description, a newer format, missing or inconsistent entries.
    """
    data = read_json(path, "prepare the dataset again.")
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object; prepare the dataset again.")
    root = path.parent
    if "img_format_version" not in data:
        if "channel_names" in data:
            raise InputError(
                f"{root} is an nnU-Net raw dataset; convert it first with "
                f"`perspective-unet prepare nnunet -i {root} -o OUT`."
            )
        raise InputError(f"{path} lacks img_format_version; it was not written by `perspective-unet prepare`.")
    if int(data["img_format_version"]) > IMG_FORMAT_VERSION:
        raise InputError(
            f"{root} has format version {data['img_format_version']}; this version of "
            f"perspective-unet reads up to {IMG_FORMAT_VERSION}. Upgrade the package."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise InputError(f"{path} lacks {missing}; prepare the dataset again.")
    try:
        info = DatasetInfo.from_dict(data)
        if int(data["num_classes"]) != info.num_classes:
            raise ValueError(f"num_classes is {data['num_classes']} but class_names has {info.num_classes} names.")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: {exc} Prepare the dataset again.") from None
    return info


class PreparedWriter(FolderWriter):
    """Write one prepared dataset atomically.

    Use as a context manager: files go to a temporary folder beside ``out``; ``finish`` writes the lists and
    ``dataset.json`` and renames the folder to ``out``. Leaving the block without ``finish`` (an exception)
    deletes the temporary folder.

    Args:
        out: Final folder of the dataset.
        overwrite: Replace an existing ``out``; without it an existing ``out`` raises ``FileExistsError``.
        channels: Input channels of the images; with several, every image carries a channel axis after the slice
            axis: (Z, C, H, W) volumes, (C, H, W) slices (one channel: (Z, H, W) and (H, W), as always).
        ignore_label: The label value of voxels without annotation (:data:`~.info.IGNORE_LABEL`), or None; the
            fingerprint counts them as no foreground, and ``finish`` checks that the description records it.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        overwrite: bool = False,
        *,
        channels: int = 1,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__(out, overwrite, folders=(TRAIN_DIR, VAL_DIR, TEST_DIR, LISTS_DIR))
        self.train_slices: list[str] = []
        self.splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.geometry: dict[str, dict[str, Any]] = {}
        self.channels = int(channels)
        self.ignore_label = ignore_label
        self.fingerprint = FingerprintBuilder(channels=self.channels, ignore_label=ignore_label)

    def _add_case(self, split: str, case: str) -> None:
        for other, cases in self.splits.items():
            if case in cases and other != split:
                raise ValueError(f"Case {case!r} is already in the {other} split; a case belongs to one split.")
        if case not in self.splits[split]:
            self.splits[split].append(case)

    def _write_train_slice(self, case: str, index: int, image: np.ndarray, label: np.ndarray) -> str:
        self._add_case("train", case)
        name = slice_name(case, index)
        save_npz(self.tmp / TRAIN_DIR / f"{name}.npz", image, label)
        self.train_slices.append(name)
        return name

    def add_train_slice(
        self,
        case: str,
        index: int,
        image: np.ndarray,
        label: np.ndarray,
        spacing: tuple[float, float, float] | None = None,
        raw: np.ndarray | None = None,
    ) -> str:
        """Write ``train_npz/<case>_slice<index>.npz`` and record it in the fingerprint; returns the slice name.

        ``spacing`` (z, y, x) mm and ``raw`` (the slice before normalization) feed the fingerprint when known.
        """
        name = self._write_train_slice(case, index, image, label)
        self.fingerprint.add(case, "train", image, label, spacing, raw)
        return name

    def add_train_volume(
        self,
        case: str,
        image: np.ndarray,
        label: np.ndarray,
        first_index: int = 0,
        spacing: tuple[float, float, float] | None = None,
        attrs: dict[str, Any] | None = None,
        raw: np.ndarray | None = None,
    ) -> None:
        """Write every slice of a ``(Z, H, W)`` (or ``(Z, C, H, W)``) volume; slice numbers start at ``first_index``.

        ``spacing`` and ``attrs`` (as for ``add_volume``), when given, are recorded in ``geometry.json``; ``raw``
        (the volume before normalization, e.g. in HU) feeds the fingerprint's raw foreground statistics.
        """
        for z in range(image.shape[0]):
            self._write_train_slice(case, first_index + z, image[z], label[z])
        self.fingerprint.add(case, "train", image, label, spacing, raw)
        if spacing is not None:
            self.record_geometry(case, spacing, attrs)

    def record_geometry(self, case: str, spacing: tuple[float, float, float], attrs: dict[str, Any] | None) -> None:
        """Keep a case's spacing and geometry attributes for ``geometry.json``."""
        entry: dict[str, Any] = {"spacing": [float(s) for s in spacing]}
        for key, value in (attrs or {}).items():
            entry[key] = np.asarray(value).tolist() if isinstance(value, np.ndarray) else value
        self.geometry[case] = entry

    def add_volume(
        self,
        split: str,
        case: str,
        image: np.ndarray,
        label: np.ndarray | None,
        spacing: tuple[float, float, float],
        attrs: dict[str, Any] | None = None,
        raw: np.ndarray | None = None,
    ) -> None:
        """Write ``<split>_vol_h5/<case>.npy.h5`` and record it in the fingerprint.

        Args:
            split: ``"val"`` or ``"test"``.
            case: Case name.
            image: (Z, H, W) in [0, 1]; (Z, C, H, W) for several channels.
            label: (Z, H, W) class ids, or None for an unlabeled volume.
            spacing: Voxel size (z, y, x) in mm along the stored axes.
            attrs: Geometry needed to put a prediction back on the original grid (``affine``, ``original_shape``,
                ``orientation``, ...); values must be numbers, strings or arrays of them.
            raw: The volume before normalization, for the fingerprint.
        """
        self._add_case(split, case)
        image = np.asarray(image, dtype=np.float32)
        volume_attrs = {"spacing": np.asarray(spacing, dtype=np.float64), **(attrs or {})}
        save_h5(self.tmp / volume_dir(split) / f"{case}{VOLUME_SUFFIX}", image, label, volume_attrs)
        self.record_geometry(case, spacing, attrs)
        self.fingerprint.add(case, split, image, label, spacing, raw)

    def finish(self, info: DatasetInfo, protocol: str = "paper") -> Path:
        """Write the lists, ``dataset.json``, ``fingerprint.json`` and ``plan.json``, then move the dataset to its
        final folder.

        Args:
            info: The description: ``name``, ``class_names``, ``modality``, ``normalization``, ``intensity`` (the
                stored range, see :class:`~perspective_unet.intensity.IntensitySpec`), ``source``, ``license`` and
                the converter's own entries; its ``splits`` are replaced by the cases written.
            protocol: The protocol of the plan written beside the data (``paper`` or ``spacing``).

        Returns:
            The final folder.
        """
        missing = [key for key in _REQUIRED_INFO if not getattr(info, key)]
        if missing or not info.class_names:
            raise ValueError(f"dataset info lacks {missing or ['class_names']}.")
        if info.num_channels != self.channels or info.ignore_label != self.ignore_label:
            raise ValueError(
                f"dataset info describes {info.num_channels} channel(s) and ignore label {info.ignore_label}, but "
                f"{self.channels} and {self.ignore_label} were written."
            )
        if not self.splits["train"] and not self.splits["test"]:
            raise ValueError("Nothing was written: the dataset has neither training slices nor test volumes.")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        fingerprint = self.fingerprint.build(
            info.modality, info.intensity or IntensitySpec("unit"), info.other_channels or ()
        )
        write_json_atomic(fingerprint.to_dict(), self.tmp / FINGERPRINT_FILE)
        if self.splits["train"]:
            write_json_atomic(derive_plan(fingerprint, protocol).to_dict(), self.tmp / PLAN_FILE)
        dataset = info.replace(
            splits={split: self.splits[split] for split in SPLITS}, img_format_version=IMG_FORMAT_VERSION
        )
        lists = {"train": self.train_slices, "val": self.splits["val"], "test": self.splits["test"]}
        for split, names in lists.items():
            (self.tmp / LISTS_DIR / _LIST_FILES[split]).write_text("".join(f"{n}\n" for n in names))
        (self.tmp / DATASET_FILE).write_text(json.dumps(dataset.to_dict(), indent=2) + "\n")
        # One case per line: readable, and small even for thousands of cases.
        lines = ",\n".join(f"  {json.dumps(case)}: {json.dumps(entry)}" for case, entry in self.geometry.items())
        (self.tmp / GEOMETRY_FILE).write_text("{\n" + lines + "\n}\n")
        self.commit()
        logger.info(
            "Wrote %s: %d training slices from %d cases, %d validation and %d test volumes",
            self.out,
            len(self.train_slices),
            len(self.splits["train"]),
            len(self.splits["val"]),
            len(self.splits["test"]),
        )
        return self.out
