"""The prepared-data layout shared by every dataset, and its atomic writer.

```
OUT/
  dataset.json                       name, num_classes, class_names, modality, normalization, source, license,
                                     splits {train, val, test}, orientation, img_format_version
  train_npz/<case>_slice<NNN>.npz    image float32 (H, W) in [0, 1]; label uint8 (H, W)
  val_vol_h5/<case>.npy.h5           image float32 (Z, H, W) in [0, 1]; label uint8 (Z, H, W); geometry attrs
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

``PreparedWriter`` writes into a hidden temporary folder beside OUT and renames it to OUT only when everything
succeeded, so a failure (bad input, a full disk, Ctrl-C) never leaves a half-written dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from perspective_unet.data.fingerprint import FingerprintBuilder
from perspective_unet.fingerprint import FINGERPRINT_FILE, write_json_atomic
from perspective_unet.intensity import IntensitySpec
from perspective_unet.plan import PLAN_FILE, PROTOCOLS, derive_plan

__all__ = [
    "IMG_FORMAT_VERSION",
    "LISTS_DIR",
    "TEST_DIR",
    "TRAIN_DIR",
    "VAL_DIR",
    "PreparedWriter",
    "volume_dir",
]

logger = logging.getLogger(__name__)

IMG_FORMAT_VERSION = 1
TRAIN_DIR = "train_npz"
VAL_DIR = "val_vol_h5"
TEST_DIR = "test_vol_h5"
LISTS_DIR = "lists"
VOLUME_SUFFIX = ".npy.h5"
_LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test_vol.txt"}
_REQUIRED_INFO = ("name", "class_names", "modality", "normalization", "source", "license")


def volume_dir(split: str) -> str:
    """Folder of a split's volumes: ``val_vol_h5`` or ``test_vol_h5``."""
    if split not in ("val", "test"):
        raise ValueError(f"Only the val and test splits are stored as volumes, got {split!r}.")
    return VAL_DIR if split == "val" else TEST_DIR


def slice_name(case: str, index: int) -> str:
    """``<case>_slice<NNN>``, the TransUNet-style name of one training slice."""
    return f"{case}_slice{index:03d}"


class PreparedWriter:
    """Write one prepared dataset atomically.

    Use as a context manager: files go to a temporary folder beside ``out``; ``finish`` writes the lists and
    ``dataset.json`` and renames the folder to ``out``. Leaving the block without ``finish`` (an exception)
    deletes the temporary folder.

    Args:
        out: Final folder of the dataset.
        overwrite: Replace an existing ``out``; without it an existing ``out`` raises ``FileExistsError``.
    """

    def __init__(self, out: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.out = Path(out).absolute()
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already exists; choose another output folder or pass --overwrite.")
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.train_slices: list[str] = []
        self.splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.geometry: dict[str, dict[str, Any]] = {}
        self.fingerprint = FingerprintBuilder()
        self.finished = False

    def __enter__(self) -> PreparedWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for sub in (TRAIN_DIR, VAL_DIR, TEST_DIR, LISTS_DIR):
            (self.tmp / sub).mkdir(parents=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.finished:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def root(self) -> Path:
        """The temporary folder being written; extra files (README, LICENSE) may be put here before ``finish``."""
        return self.tmp

    def _add_case(self, split: str, case: str) -> None:
        for other, cases in self.splits.items():
            if case in cases and other != split:
                raise ValueError(f"Case {case!r} is already in the {other} split; a case belongs to one split.")
        if case not in self.splits[split]:
            self.splits[split].append(case)

    def _write_train_slice(self, case: str, index: int, image: np.ndarray, label: np.ndarray) -> str:
        self._add_case("train", case)
        name = slice_name(case, index)
        np.savez_compressed(
            self.tmp / TRAIN_DIR / f"{name}.npz",
            image=np.asarray(image, dtype=np.float32),
            label=np.asarray(label, dtype=np.uint8),
        )
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
        """Write every slice of a ``(Z, H, W)`` volume; slice numbers start at ``first_index``.

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
            image: (Z, H, W) in [0, 1].
            label: (Z, H, W) class ids, or None for an unlabeled volume.
            spacing: Voxel size (z, y, x) in mm along the stored axes.
            attrs: Geometry needed to put a prediction back on the original grid (``affine``, ``original_shape``,
                ``orientation``, ...); values must be numbers, strings or arrays of them.
            raw: The volume before normalization, for the fingerprint.
        """
        self._add_case(split, case)
        image = np.asarray(image, dtype=np.float32)
        # One chunk per slice: a slice-wise reader touches one chunk, and gzip keeps the files small.
        chunks = (1, *image.shape[1:])
        with h5py.File(self.tmp / volume_dir(split) / f"{case}{VOLUME_SUFFIX}", "w") as f:
            f.create_dataset("image", data=image, chunks=chunks, compression="gzip", compression_opts=4)
            if label is not None:
                f.create_dataset(
                    "label",
                    data=np.asarray(label, dtype=np.uint8),
                    chunks=chunks,
                    compression="gzip",
                    compression_opts=4,
                )
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        self.record_geometry(case, spacing, attrs)
        self.fingerprint.add(case, split, image, label, spacing, raw)

    def finish(self, info: dict[str, Any], protocol: str = "paper") -> Path:
        """Write the lists, ``dataset.json``, ``fingerprint.json`` and ``plan.json``, then move the dataset to its
        final folder.

        Args:
            info: ``name``, ``class_names`` (index = class id), ``modality``, ``normalization``, ``intensity`` (the
                stored range, see :class:`~perspective_unet.intensity.IntensitySpec`), ``source``, ``license`` and
                any extra keys; ``num_classes``, ``splits`` and ``img_format_version`` are filled in.
            protocol: The protocol of the plan written beside the data (``paper`` or ``spacing``).

        Returns:
            The final folder.
        """
        missing = [key for key in _REQUIRED_INFO if key not in info]
        if missing:
            raise ValueError(f"dataset info lacks {missing}.")
        if not self.splits["train"] and not self.splits["test"]:
            raise ValueError("Nothing was written: the dataset has neither training slices nor test volumes.")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        intensity = IntensitySpec.from_dict(info.get("intensity") or {"kind": "unit"})
        fingerprint = self.fingerprint.build(str(info["modality"]), intensity)
        write_json_atomic(fingerprint.to_dict(), self.tmp / FINGERPRINT_FILE)
        if self.splits["train"]:
            write_json_atomic(derive_plan(fingerprint, protocol).to_dict(), self.tmp / PLAN_FILE)
        dataset = {
            "name": info["name"],
            "num_classes": len(info["class_names"]),
            **{k: v for k, v in info.items() if k not in ("name", "num_classes")},
            "splits": {split: list(cases) for split, cases in self.splits.items()},
            "img_format_version": IMG_FORMAT_VERSION,
        }
        lists = {"train": self.train_slices, "val": self.splits["val"], "test": self.splits["test"]}
        for split, names in lists.items():
            (self.tmp / LISTS_DIR / _LIST_FILES[split]).write_text("".join(f"{n}\n" for n in names))
        (self.tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        # One case per line: readable, and small even for thousands of cases.
        lines = ",\n".join(f"  {json.dumps(case)}: {json.dumps(entry)}" for case, entry in self.geometry.items())
        (self.tmp / "geometry.json").write_text("{\n" + lines + "\n}\n")
        if self.out.exists():
            # Move the old dataset aside and delete it only once the new one is in place.
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        self.finished = True
        logger.info(
            "Wrote %s: %d training slices from %d cases, %d validation and %d test volumes",
            self.out,
            len(self.train_slices),
            len(self.splits["train"]),
            len(self.splits["val"]),
            len(self.splits["test"]),
        )
        return self.out
