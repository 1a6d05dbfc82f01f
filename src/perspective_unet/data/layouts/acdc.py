"""ACDC (cardiac cine MRI) in its two on-disk formats: the raw patient folders, converted to the prepared layout
(:class:`AcdcRaw`), and MT-UNet's preprocessed files, read as they are (:class:`AcdcFiles`, written by
:class:`AcdcFilesWriter`).

Raw input: ``RAW/**/patientXXX/patientXXX_frameYY.nii.gz`` with ``..._frameYY_gt.nii.gz`` and ``Info.cfg`` naming
the ED and ES frames. Output, with MT-UNet's 70 / 10 / 20 patient split: training slices of both
frames, validation and test volumes (one case per patient and frame, ``case_XXX_ED`` / ``case_XXX_ES``).

Intensity normalization (the circulating MT-UNet-style npz files do not say how theirs was made): per volume, clip to
the volume's own 0.5th and 99.5th percentiles and min-max scale to [0, 1]. The percentile clip keeps the few very bright
voxels of cine MRI from compressing the myocardium / blood-pool contrast.

Slices are cut along the acquisition's own slice axis (orientation ``"stored"``): short-axis stacks are oblique, so
reorienting them to the nearest anatomical axes could cut across the stack. No resampling is done.

MT-UNet's files: ``train/`` and ``valid/`` with ``case_XXX_slice{ED,ES}_N.npz`` slices and ``test/`` with
``case_XXX_volume_{ED,ES}.npz`` volumes (keys img, label), 4 classes, their own (unpublished) normalization.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.layouts.base import DatasetLayout, SliceRef
from perspective_unet.data.layouts.files import FolderWriter, load_npz, save_npz
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import RawDataset, progress, read_pair, volume_attrs
from perspective_unet.data.orientation import STORED_ORIENTATION
from perspective_unet.errors import InputError
from perspective_unet.intensity import MR_PERCENTILES, IntensitySpec, describe_mr, percentile_minmax

__all__ = [
    "ACDC_CLASS_NAMES",
    "ACDC_FOLDERS",
    "ACDC_TEST_PATIENTS",
    "ACDC_VAL_PATIENTS",
    "AcdcFiles",
    "AcdcFilesWriter",
    "AcdcRaw",
    "acdc_case",
    "acdc_split",
    "prepare_acdc",
]

logger = logging.getLogger(__name__)

ACDC_VAL_PATIENTS = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
ACDC_TEST_PATIENTS = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
ACDC_CLASS_NAMES = ("background", "RV", "myocardium", "LV")
_PATIENT_PATTERN = re.compile(r"patient(\d{3})$")
# Split -> folder of MT-UNet's files.
ACDC_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


def acdc_split(patient: int) -> str | None:
    """The split of a patient number (1..100), or None for patients outside the challenge's 100."""
    if patient in ACDC_VAL_PATIENTS:
        return "val"
    if patient in ACDC_TEST_PATIENTS:
        return "test"
    return "train" if 1 <= patient <= 100 else None


def read_info_cfg(path: Path) -> dict[str, int]:
    """The ED and ES frame numbers from a patient's ``Info.cfg``."""
    if not path.is_file():
        raise InputError(f"{path} is missing; every ACDC patient folder needs Info.cfg naming the ED and ES frames.")
    frames: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("ED", "ES"):
            try:
                frames[key.strip()] = int(float(value.strip()))
            except ValueError:
                raise InputError(f"{path}: '{line.strip()}' is not a frame number.") from None
    missing = [k for k in ("ED", "ES") if k not in frames]
    if missing:
        raise InputError(f"{path} does not name the {' and '.join(missing)} frame; add a line such as 'ED: 1'.")
    return frames


def _frame_file(folder: Path, stem: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    raise InputError(f"{folder / (stem + '.nii.gz')} is missing; each ED/ES frame needs its image and _gt file.")


class AcdcRaw(RawDataset):
    """The raw ACDC patient folders (see the module docstring), converted with MT-UNet's 70 / 10 / 20 split."""

    command = "acdc"
    description = "raw ACDC patient folders"

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return any(
            _PATIENT_PATTERN.match(p.name) and p.is_dir()
            for folder in (root, *_children(root))
            for p in _children(folder)
        )

    def _patients(self) -> dict[int, tuple[Path, str]]:
        """The folder and split of every patient of the challenge's 100 found (searched recursively)."""
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder; give the ACDC folder that holds the patientXXX folders.")
        folders: dict[int, Path] = {}
        for folder in sorted(self.root.rglob("patient*")):
            match = _PATIENT_PATTERN.match(folder.name)
            if match and folder.is_dir():
                folders.setdefault(int(match.group(1)), folder)
        if not folders:
            raise InputError(f"{self.root} holds no patientXXX folders; give the ACDC 'database' or 'training' folder.")
        splits = {p: acdc_split(p) for p in folders}
        ignored = sorted(p for p, s in splits.items() if s is None)
        if ignored:
            logger.info("ACDC: patients outside the challenge's 100 are ignored: %s", ignored)
        missing = sorted(set(range(1, 101)) - set(folders))
        if missing:
            logger.warning("ACDC: %d patients of the 100 are missing and skipped: %s", len(missing), missing)
        used = {p: (folders[p], s) for p, s in splits.items() if s is not None}
        if "train" not in {s for _, s in used.values()}:
            raise InputError(f"{self.root} holds no ACDC training patient (1..100 outside the val and test lists).")
        return used

    def prepare(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Convert the patient folders into the prepared layout with MT-UNet's 70 / 10 / 20 split.

        Patients of the split that are missing are skipped with a warning; patients above 100 are ignored.
        """
        used = self._patients()
        with PreparedWriter(out, overwrite=overwrite) as writer:
            for patient in progress(sorted(used), "ACDC patients"):
                folder, split = used[patient]
                frames = read_info_cfg(folder / "Info.cfg")
                for phase in ("ED", "ES"):
                    stem = f"{folder.name}_frame{frames[phase]:02d}"
                    image_path = _frame_file(folder, stem)
                    label_path = _frame_file(folder, f"{stem}_gt")
                    pair = read_pair(image_path, label_path, range(len(ACDC_CLASS_NAMES)), STORED_ORIENTATION)
                    assert pair.label is not None
                    image = percentile_minmax(pair.image, MR_PERCENTILES)
                    case, attrs = f"case_{patient:03d}_{phase}", volume_attrs(pair, image_path.name)
                    if split == "train":
                        writer.add_train_volume(
                            case, image, pair.label, spacing=pair.spacing, attrs=attrs, raw=pair.image
                        )
                    else:
                        writer.add_volume(split, case, image, pair.label, pair.spacing, attrs, raw=pair.image)
            return writer.finish(
                DatasetInfo(
                    name="ACDC",
                    class_names=ACDC_CLASS_NAMES,
                    modality="MR",
                    normalization=describe_mr(MR_PERCENTILES),
                    intensity=IntensitySpec("percentile_minmax", percentiles=MR_PERCENTILES),
                    orientation=STORED_ORIENTATION,
                    source="Automated Cardiac Diagnosis Challenge (ACDC), MICCAI 2017, cine MRI, ED and ES frames",
                    license=(
                        "ACDC data terms (registration at the challenge site); not redistributable with this package"
                    ),
                    notes="MT-UNet's 70 / 10 / 20 patient split; cases are case_XXX_ED and case_XXX_ES.",
                ),
                protocol="paper",
            )


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def prepare_acdc(raw: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``AcdcRaw(raw).prepare(out)``: raw ACDC patient folders (searched recursively below ``raw``) into the prepared
    layout at ``out``, with MT-UNet's split (see :meth:`AcdcRaw.prepare`)."""
    return AcdcRaw(raw).prepare(out, overwrite=overwrite)


def acdc_case(stem: str) -> str:
    """An ACDC file's case: ``case_001_sliceED_3`` -> ``case_001_ED``; ``case_001_volume_ES`` -> ``case_001_ES``."""
    parts = stem.split("_")
    if len(parts) >= 4 and parts[2].startswith("slice"):
        return f"{parts[0]}_{parts[1]}_{parts[2][len('slice') :]}"
    if len(parts) >= 4 and parts[2] == "volume":
        return f"{parts[0]}_{parts[1]}_{parts[3]}"
    return stem


class AcdcFiles(DatasetLayout):
    """MT-UNet's preprocessed ACDC files (see the module docstring), read as they are; no geometry."""

    kind = "acdc_files"

    def describe(self) -> str:
        return (
            "circulating ACDC files (MT-UNet's layout), read as they are: their own normalization, which was not "
            "published (the files the released Perspective+ Unet trained on)"
        )

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return any(next((root / f).glob("case_*.npz"), None) is not None for f in ACDC_FOLDERS.values())

    @classmethod
    def open(cls, root: Path) -> AcdcFiles:
        splits: dict[str, list[str]] = {}
        for split, folder in ACDC_FOLDERS.items():
            # Slice files are case_XXX_slice{ED,ES}_N, volumes case_XXX_volume_{ED,ES}: both name the case the same way.
            splits[split] = sorted({acdc_case(p.stem) for p in (root / folder).glob("case_*.npz")})
        info = DatasetInfo(
            name="ACDC",
            class_names=ACDC_CLASS_NAMES,
            modality="MR",
            normalization="as baked into the circulating ACDC npz files (not published)",
            source="MT-UNet-style ACDC files, read as they are",
            license="ACDC data terms",
            splits=splits,
        )
        return cls(root, info)

    def case_of(self, name: str) -> str:
        return acdc_case(name)

    def train_names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / ACDC_FOLDERS["train"]).glob("case_*_slice*.npz"))

    def slice_files(self, split: str) -> list[SliceRef] | None:
        """The slice files of ``train/`` and ``valid/``; the test split is stored as volumes."""
        if split == "test":
            return None
        folder = self.root / ACDC_FOLDERS[split]
        return [self.slice_ref(p.stem, p) for p in sorted(folder.glob("case_*_slice*.npz"))]

    def volume_folder(self, split: str) -> Path | None:
        return self.root / ACDC_FOLDERS[split]

    def volume_files(self, split: str) -> list[tuple[str, Path]]:
        """The ``case_XXX_volume_{ED,ES}.npz`` files of the split's folder."""
        folder = self.root / ACDC_FOLDERS[split]
        return [(acdc_case(p.stem), p) for p in sorted(folder.glob("case_*_volume_*.npz"))]

    def read_volume(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        image, label = load_npz(path)
        return image, label, {}

    def read_volume_slice(self, path: Path, z: int) -> tuple[np.ndarray, np.ndarray | None]:
        volume, labels = load_npz(path)
        return volume[z], None if labels is None else labels[z]

    def volume_depth(self, path: Path) -> int:
        return int(load_npz(path)[0].shape[0])


class AcdcFilesWriter(FolderWriter):
    """Write data in MT-UNet's ACDC format (slice files in ``train/`` and ``valid/``, volume files in ``test/``, keys
    img and label), atomically as :class:`FolderWriter` does: for code of that line of work.

    Cases are named ``case_XXX_ED`` / ``case_XXX_ES``.

    Args:
        out: Final folder.
        overwrite: Replace an existing ``out``.
    """

    def __init__(self, out: str | os.PathLike[str], overwrite: bool = False) -> None:
        super().__init__(out, overwrite, folders=tuple(ACDC_FOLDERS.values()))

    def _stem(self, case: str) -> tuple[str, str]:
        prefix, _, phase = case.rpartition("_")
        if not prefix.startswith("case_") or phase not in ("ED", "ES"):
            raise ValueError(f"ACDC case names are case_XXX_ED or case_XXX_ES, got {case!r}.")
        return prefix, phase

    def add_slice(self, split: str, case: str, index: int, image: np.ndarray, label: np.ndarray) -> str:
        """Write ``<train|valid>/case_XXX_slice<phase>_<index>.npz``; returns its name."""
        prefix, phase = self._stem(case)
        name = f"{prefix}_slice{phase}_{index}"
        save_npz(self.tmp / ACDC_FOLDERS[split] / f"{name}.npz", image, label, image_key="img")
        return name

    def add_volume(self, split: str, case: str, image: np.ndarray, label: np.ndarray) -> None:
        """Write ``<folder>/case_XXX_volume_<phase>.npz`` ((Z, H, W) image and label)."""
        prefix, phase = self._stem(case)
        save_npz(self.tmp / ACDC_FOLDERS[split] / f"{prefix}_volume_{phase}.npz", image, label, image_key="img")

    def finish(self) -> Path:
        """Move the folder into place; returns it."""
        return self.commit()
