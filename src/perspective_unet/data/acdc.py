"""ACDC (cardiac cine MRI) from the raw patient folders to the prepared layout.

Raw input: ``RAW/**/patientXXX/patientXXX_frameYY.nii.gz`` with ``..._frameYY_gt.nii.gz`` and ``Info.cfg`` naming
the ED and ES frames. Output, with MT-UNet's 70 / 10 / 20 patient split: training slices of both
frames, validation and test volumes (one case per patient and frame, ``case_XXX_ED`` / ``case_XXX_ES``).

Intensity normalization (the circulating MT-UNet-style npz files do not say how theirs was made): per volume, clip to
the volume's own 0.5th and 99.5th percentiles and min-max scale to [0, 1]. The percentile clip keeps the few very bright
voxels of cine MRI from compressing the myocardium / blood-pool contrast.

Slices are cut along the acquisition's own slice axis (orientation ``"stored"``): short-axis stacks are oblique, so
reorienting them to the nearest anatomical axes could cut across the stack. No resampling is done.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from perspective_unet.data.common import progress, read_pair, volume_attrs
from perspective_unet.data.layout import PreparedWriter
from perspective_unet.data.orientation import STORED_ORIENTATION
from perspective_unet.errors import InputError
from perspective_unet.intensity import MR_PERCENTILES, IntensitySpec, describe_mr, percentile_minmax

__all__ = ["ACDC_CLASS_NAMES", "ACDC_TEST_PATIENTS", "ACDC_VAL_PATIENTS", "acdc_split", "prepare_acdc"]

logger = logging.getLogger(__name__)

ACDC_VAL_PATIENTS = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
ACDC_TEST_PATIENTS = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
ACDC_CLASS_NAMES = ("background", "RV", "myocardium", "LV")
_PATIENT_PATTERN = re.compile(r"patient(\d{3})$")


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


def prepare_acdc(raw: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Convert raw ACDC patient folders into the prepared layout with MT-UNet's 70 / 10 / 20 split.

    Patients of the split that are missing are skipped with a warning; patients above 100 are ignored.

    Args:
        raw: Folder holding ``patientXXX`` folders (searched recursively, e.g. ``database/training``).
        out: Output folder (written atomically).
        overwrite: Replace an existing ``out``.

    Returns:
        The output folder.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(f"{raw} is not a folder; give the ACDC folder that holds the patientXXX folders.")
    patients: dict[int, Path] = {}
    for folder in sorted(raw.rglob("patient*")):
        match = _PATIENT_PATTERN.match(folder.name)
        if match and folder.is_dir():
            patients.setdefault(int(match.group(1)), folder)
    if not patients:
        raise InputError(f"{raw} holds no patientXXX folders; give the ACDC 'database' or 'training' folder.")
    splits = {p: acdc_split(p) for p in patients}
    ignored = sorted(p for p, s in splits.items() if s is None)
    if ignored:
        logger.info("ACDC: patients outside the challenge's 100 are ignored: %s", ignored)
    missing = sorted(set(range(1, 101)) - set(patients))
    if missing:
        logger.warning("ACDC: %d patients of the 100 are missing and skipped: %s", len(missing), missing)
    used = {p: s for p, s in splits.items() if s is not None}
    if "train" not in used.values():
        raise InputError(f"{raw} holds no ACDC training patient (1..100 outside the val and test lists).")

    with PreparedWriter(out, overwrite=overwrite) as writer:
        for patient in progress(sorted(used), "ACDC patients"):
            folder = patients[patient]
            frames = read_info_cfg(folder / "Info.cfg")
            for phase in ("ED", "ES"):
                stem = f"{folder.name}_frame{frames[phase]:02d}"
                image_path = _frame_file(folder, stem)
                label_path = _frame_file(folder, f"{stem}_gt")
                pair = read_pair(image_path, label_path, range(len(ACDC_CLASS_NAMES)), STORED_ORIENTATION)
                assert pair.label is not None
                image = percentile_minmax(pair.image, MR_PERCENTILES)
                case = f"case_{patient:03d}_{phase}"
                if used[patient] == "train":
                    writer.add_train_volume(
                        case,
                        image,
                        pair.label,
                        spacing=pair.spacing,
                        attrs=volume_attrs(pair, image_path.name),
                        raw=pair.image,
                    )
                else:
                    writer.add_volume(
                        used[patient],
                        case,
                        image,
                        pair.label,
                        pair.spacing,
                        volume_attrs(pair, image_path.name),
                        raw=pair.image,
                    )
        return writer.finish(
            {
                "name": "ACDC",
                "class_names": list(ACDC_CLASS_NAMES),
                "modality": "MR",
                "normalization": describe_mr(MR_PERCENTILES),
                "intensity": IntensitySpec("percentile_minmax", percentiles=MR_PERCENTILES).stored_range(),
                "orientation": STORED_ORIENTATION,
                "source": "Automated Cardiac Diagnosis Challenge (ACDC), MICCAI 2017, cine MRI, ED and ES frames",
                "license": (
                    "ACDC data terms (registration at the challenge site); not redistributable with this package"
                ),
                "notes": "MT-UNet's 70 / 10 / 20 patient split; cases are case_XXX_ED and case_XXX_ES.",
            },
            protocol="paper",
        )
