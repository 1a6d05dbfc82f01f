"""Synapse (BTCV abdomen CT) in its two on-disk formats: the raw challenge files, converted to the prepared layout
(:class:`SynapseRaw`), and TransUNet's preprocessed files, read as they are (:class:`SynapseFiles`, written by
:class:`SynapseFilesWriter`).

Raw input: ``RAW/img/img00XX.nii.gz`` and ``RAW/label/label00XX.nii.gz`` (``RAW`` may also be the folder above
``Training/`` or ``RawData/Training/``). Output: the 18 standard training cases as slices, the 12 standard test cases
as volumes, HU clipped to [-125, 275] and scaled to [0, 1], the 13 BTCV labels mapped to the 8 classes that
TransUNet and the papers after it report.

TransUNet's files: ``train_npz/caseXXXX_sliceNNN.npz`` (keys image, label) and ``test_vol_h5/caseXXXX.npy.h5``
(datasets image, label, Z first), already windowed and scaled to [0, 1], without spacing or orientation; list files in
``lists/``, ``lists/lists_Synapse/`` or ``lists_Synapse/`` are used when present.

Slices are cut as TransUNet-style files are: the volume is transposed to (Z, i, j) and its last axis flipped, so a
prepared slice equals the slice of the circulating ``train_npz`` files. That index rule is expressed as an
orientation code computed from the first case's affine (recorded as ``orientation`` in dataset.json); a case stored
in another orientation is reoriented to the same anatomical axes rather than cut by the index rule blindly.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from perspective_unet.data.checks import require_files
from perspective_unet.data.io import read_image
from perspective_unet.data.layouts.base import TEST_DIR, TRAIN_DIR, DatasetLayout, case_of_slice, slice_name
from perspective_unet.data.layouts.files import VOLUME_SUFFIX, FolderWriter, save_h5, save_npz
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import RawDataset, progress, read_pair, volume_attrs
from perspective_unet.errors import InputError
from perspective_unet.intensity import SYNAPSE_HU_WINDOW, IntensitySpec, ct_window, describe_ct_window

__all__ = [
    "SYNAPSE_CLASS_NAMES",
    "SYNAPSE_LABEL_MAP",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "SynapseFiles",
    "SynapseFilesWriter",
    "SynapseRaw",
    "prepare_synapse",
    "transunet_orientation",
]

logger = logging.getLogger(__name__)

SYNAPSE_TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
SYNAPSE_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
SYNAPSE_CLASS_NAMES = (
    "background",
    "aorta",
    "gallbladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
# BTCV id -> Synapse class id; the other BTCV organs (esophagus, IVC, veins, adrenals) become background.
SYNAPSE_LABEL_MAP = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
BTCV_LABEL_VALUES = range(14)
_CASE_PATTERN = re.compile(r"img(\d+)\.nii(\.gz)?$")


def case_name(number: int) -> str:
    """``case0005``: the TransUNet-style name of BTCV case 5."""
    return f"case{number:04d}"


def transunet_orientation(affine: np.ndarray) -> str:
    """Orientation code of the (Z, H, W) axes that the TransUNet-style index rule produces for a file with this affine.

    The rule is ``np.flip(np.transpose(volume, (2, 0, 1)), 2)``: Z is the stored k axis, H the stored i axis, and
    W the stored j axis reversed.
    """
    codes = nib.aff2axcodes(affine)
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
    return codes[2] + codes[0] + opposite[codes[1]]


def _find_raw_folders(raw: Path) -> tuple[Path, Path] | None:
    for base in (raw, raw / "Training", raw / "RawData" / "Training", raw / "RawData"):
        if (base / "img").is_dir() and (base / "label").is_dir():
            return base / "img", base / "label"
    return None


class SynapseRaw(RawDataset):
    """The raw BTCV abdomen files (see the module docstring), converted with TransUNet's split and classes."""

    command = "synapse"
    description = "raw Synapse (BTCV) files"

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return _find_raw_folders(root) is not None

    def _cases(self) -> tuple[dict[int, Path], dict[int, str], Path]:
        """(image file by case number, split of each standard case present, label folder)."""
        folders = _find_raw_folders(self.root)
        if folders is None:
            raise InputError(
                f"{self.root} has no img/ and label/ folders; give the folder that holds img/img00XX.nii.gz and "
                "label/label00XX.nii.gz (the BTCV 'RawData/Training' folder)."
            )
        img_dir, label_dir = folders
        found: dict[int, Path] = {}
        for path in sorted(img_dir.iterdir()):
            match = _CASE_PATTERN.match(path.name)
            if match:
                found[int(match.group(1))] = path
        require_files(list(found.values()), img_dir, "img00XX.nii.gz files")
        wanted = {n: "train" for n in SYNAPSE_TRAIN_CASES} | {n: "test" for n in SYNAPSE_TEST_CASES}
        missing = sorted(set(wanted) - set(found))
        if missing:
            logger.warning("Synapse: %d cases of the standard split are missing and skipped: %s", len(missing), missing)
        ignored = sorted(set(found) - set(wanted))
        if ignored:
            logger.info("Synapse: cases outside the standard split are ignored: %s", ignored)
        present = {n: split for n, split in wanted.items() if n in found}
        for split in ("train", "test"):
            if split not in present.values():
                raise InputError(f"{img_dir} holds none of the standard Synapse {split} cases; nothing to prepare.")
        return found, present, label_dir

    def prepare(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Convert the files into the prepared layout with TransUNet's split and classes.

        Cases of the standard split that are missing are skipped with a warning; at least one training and one test
        case must be present.

        Raises:
            InputError: Missing folders or cases, unreadable files, mismatched image/label, label values above 13,
                NaN voxels.
        """
        found, present, label_dir = self._cases()
        # One orientation for the whole dataset: the one the TransUNet-style index rule gives on most files.
        orientations = Counter(transunet_orientation(read_image_header_affine(found[n])) for n in present)
        orientation = orientations.most_common(1)[0][0]
        if len(orientations) > 1:
            logger.warning(
                "Synapse: files are stored in several orientations %s; all are reoriented to %s",
                dict(orientations),
                orientation,
            )
        with PreparedWriter(out, overwrite=overwrite) as writer:
            for number in progress(sorted(present), "Synapse cases"):
                image_path = found[number]
                label_path = label_dir / image_path.name.replace("img", "label", 1)
                if not label_path.exists():
                    raise InputError(f"{image_path} has no label file {label_path}; every Synapse case needs both.")
                pair = read_pair(image_path, label_path, BTCV_LABEL_VALUES, orientation, SYNAPSE_LABEL_MAP)
                image = ct_window(pair.image, SYNAPSE_HU_WINDOW)
                assert pair.label is not None
                attrs = volume_attrs(pair, image_path.name)
                if present[number] == "train":
                    writer.add_train_volume(
                        case_name(number), image, pair.label, spacing=pair.spacing, attrs=attrs, raw=pair.image
                    )
                else:
                    writer.add_volume("test", case_name(number), image, pair.label, pair.spacing, attrs, raw=pair.image)
            return writer.finish(
                DatasetInfo(
                    name="Synapse",
                    class_names=SYNAPSE_CLASS_NAMES,
                    modality="CT",
                    normalization=describe_ct_window(SYNAPSE_HU_WINDOW, "the TransUNet window"),
                    intensity=IntensitySpec("ct_window", window=SYNAPSE_HU_WINDOW),
                    orientation=orientation,
                    source="Multi-Atlas Labeling Beyond the Cranial Vault (BTCV), MICCAI 2015 challenge, abdomen CT",
                    license="BTCV challenge data terms (Synapse registration); not redistributable with this package",
                    label_map={str(k): v for k, v in SYNAPSE_LABEL_MAP.items()},
                    notes="Split and class mapping of TransUNet / Swin-Unet / MISSFormer / Perspective+ Unet.",
                ),
                protocol="paper",
            )


def prepare_synapse(raw: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``SynapseRaw(raw).prepare(out)``: the raw BTCV files (``raw`` holds ``img/`` and ``label/``) into the prepared
    layout at ``out``, with TransUNet's split and classes (see :meth:`SynapseRaw.prepare`)."""
    return SynapseRaw(raw).prepare(out, overwrite=overwrite)


def read_image_header_affine(path: Path) -> np.ndarray:
    """The affine of an image file, reading only its header when it is NIfTI."""
    try:
        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    except Exception:
        # Not a readable NIfTI: read_image gives the one clear message for it.
        return read_image(path)[1]["affine"]


def _list_file(root: Path, name: str) -> list[str] | None:
    """Names in a TransUNet-style list file (``lists/``, ``lists/lists_Synapse/`` or ``lists_Synapse/``), if any."""
    for folder in (root / "lists", root / "lists" / "lists_Synapse", root / "lists_Synapse"):
        path = folder / name
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


def _train_names(root: Path) -> list[str]:
    return _list_file(root, "train.txt") or sorted(p.stem for p in (root / TRAIN_DIR).glob("*.npz"))


class SynapseFiles(DatasetLayout):
    """TransUNet's preprocessed Synapse files (see the module docstring), read as they are; 9 classes, no geometry."""

    kind = "synapse_files"

    def describe(self) -> str:
        return (
            "circulating Synapse files (TransUNet's layout), read as they are: CT clipped to [-125, 275] HU and "
            "scaled to [0, 1] (the files the released Perspective+ Unet trained on)"
        )

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return (root / TRAIN_DIR).is_dir() or (root / TEST_DIR).is_dir()

    @classmethod
    def open(cls, root: Path) -> SynapseFiles:
        test_names = _list_file(root, "test_vol.txt") or sorted(
            p.name[: -len(VOLUME_SUFFIX)] for p in (root / TEST_DIR).glob(f"*{VOLUME_SUFFIX}")
        )
        info = DatasetInfo(
            name="Synapse",
            class_names=SYNAPSE_CLASS_NAMES,
            modality="CT",
            normalization=describe_ct_window(SYNAPSE_HU_WINDOW, "TransUNet-style files"),
            intensity=IntensitySpec("ct_window", window=SYNAPSE_HU_WINDOW),
            source="Synapse (BTCV) TransUNet-style files, read as they are",
            license="BTCV challenge data terms",
            splits={
                "train": sorted({case_of_slice(n) for n in _train_names(root)}),
                "val": [],
                "test": list(test_names),
            },
        )
        return cls(root, info)

    def train_names(self) -> list[str]:
        """``train.txt`` of the list folders, or every ``train_npz`` file."""
        return _train_names(self.root)

    def volume_folder(self, split: str) -> Path | None:
        return self.root / TEST_DIR if split == "test" else None


class SynapseFilesWriter(FolderWriter):
    """Write data in TransUNet's Synapse format (slices in ``train_npz``, volumes in ``test_vol_h5``, the list files in
    ``lists/lists_Synapse``), atomically as :class:`FolderWriter` does: for code of that line of work.

    Args:
        out: Final folder.
        overwrite: Replace an existing ``out``.
    """

    def __init__(self, out: str | os.PathLike[str], overwrite: bool = False) -> None:
        super().__init__(out, overwrite, folders=(TRAIN_DIR, TEST_DIR, "lists/lists_Synapse"))
        self.train_slices: list[str] = []
        self.test_cases: list[str] = []

    def add_train_slice(self, case: str, index: int, image: np.ndarray, label: np.ndarray) -> str:
        """Write ``train_npz/<case>_slice<index>.npz`` (image in [0, 1], label class ids); returns the slice name."""
        name = slice_name(case, index)
        save_npz(self.tmp / TRAIN_DIR / f"{name}.npz", image, label)
        self.train_slices.append(name)
        return name

    def add_test_volume(self, case: str, image: np.ndarray, label: np.ndarray) -> None:
        """Write ``test_vol_h5/<case>.npy.h5`` ((Z, H, W) image in [0, 1] and label)."""
        save_h5(self.tmp / TEST_DIR / f"{case}{VOLUME_SUFFIX}", image, label)
        self.test_cases.append(case)

    def finish(self) -> Path:
        """Write ``train.txt`` and ``test_vol.txt`` and move the folder into place; returns it."""
        lists = self.tmp / "lists" / "lists_Synapse"
        (lists / "train.txt").write_text("".join(f"{n}\n" for n in self.train_slices))
        (lists / "test_vol.txt").write_text("".join(f"{n}\n" for n in self.test_cases))
        return self.commit()
