"""Small synthetic raw datasets (NIfTI, PNG, npz, h5) written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

# An LPS-like affine as DICOM converters write it (first two axes pointing to patient left and posterior).
LPS_AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 80.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    """Write ``array`` as NIfTI with ``affine``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def random_volume(seed: int, shape: tuple[int, int, int] = (20, 16, 6)) -> np.ndarray:
    """HU-like values spread beyond the Synapse window on both sides."""
    return np.random.default_rng(seed).uniform(-400, 600, shape).astype(np.int16)


def random_labels(seed: int, shape: tuple[int, int, int], values: range | list[int]) -> np.ndarray:
    return np.random.default_rng(seed + 1000).choice(list(values), size=shape).astype(np.uint8)


def write_synapse_raw(
    root: Path, cases: tuple[int, ...] = (5, 6, 1), shape: tuple[int, int, int] = (20, 16, 6)
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``root/img/img00XX.nii.gz`` and ``root/label/label00XX.nii.gz``; returns the arrays by case number."""
    arrays = {}
    for number in cases:
        image = random_volume(number, shape)
        label = random_labels(number, shape, range(14))
        save_nifti(root / "img" / f"img{number:04d}.nii.gz", image)
        save_nifti(root / "label" / f"label{number:04d}.nii.gz", label)
        arrays[number] = (image, label)
    return arrays


def write_acdc_raw(
    root: Path, patients: tuple[int, ...] = (1, 19, 2), shape: tuple[int, int, int] = (14, 12, 4)
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """``root/training/patientXXX/`` with Info.cfg (ED 1, ES 3), frames and _gt files."""
    arrays = {}
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    for patient in patients:
        folder = root / "training" / f"patient{patient:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        for phase, frame in (("ED", 1), ("ES", 3)):
            rng = np.random.default_rng(patient * 10 + frame)
            image = rng.gamma(2.0, 60.0, shape).astype(np.float32)
            image[0, 0, 0] = 5000.0  # one bright outlier, clipped by the percentile rule
            label = rng.integers(0, 4, shape).astype(np.uint8)
            save_nifti(folder / f"patient{patient:03d}_frame{frame:02d}.nii.gz", image, affine)
            save_nifti(folder / f"patient{patient:03d}_frame{frame:02d}_gt.nii.gz", label, affine)
            arrays[(patient, phase)] = (image, label)
    return arrays


def write_nnunet_raw(
    root: Path,
    num_cases: int = 6,
    modality: str = "CT",
    shape: tuple[int, int, int] = (12, 10, 5),
    labels: dict[str, int] | None = None,
    extra: dict | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An nnU-Net raw dataset with ``num_cases`` training cases of 3 classes."""
    labels = labels or {"background": 0, "liver": 1, "spleen": 2}
    info = {
        "name": "Toy",
        "channel_names": {"0": modality},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        **(extra or {}),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(info))
    arrays = {}
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    for i in range(num_cases):
        case = f"toy_{i:03d}"
        image = random_volume(i, shape).astype(np.float32)
        label = random_labels(i, shape, range(len(labels)))
        save_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
        arrays[case] = (image, label)
    return arrays


def blob_case(seed: int, shape: tuple[int, int, int] = (20, 18, 6)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image and its labels: a bright disc (class 1) through the middle slices and two separate dark squares
    (class 2, two components on purpose), on noise; a model learns it in a few dozen steps."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    xx, yy = np.mgrid[: shape[0], : shape[1]]
    cx, cy = rng.integers(7, 11, 2)
    label[..., 1:5][(xx - cx) ** 2 + (yy - cy) ** 2 <= 12] = 1
    corner = rng.integers(0, 2)
    label[1:4, 1 + corner : 4 + corner, 2:5] = 2
    label[15:18, 13:16, 2:5] = 2
    image = rng.normal(0.0, 20.0, shape) + np.where(label == 1, 250.0, 0.0) - np.where(label == 2, 180.0, 0.0)
    return image.astype(np.float32), label


def write_blob_nnunet_raw(root: Path, num_cases: int = 10, test_cases: int = 2) -> dict[str, tuple[np.ndarray, ...]]:
    """An nnU-Net raw dataset of :func:`blob_case` volumes: ``case_XXX`` in imagesTr/labelsTr, ``test_XXX`` in
    imagesTs/labelsTs; returns the arrays by case."""
    info = {
        "name": "Blobs",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "disc": 1, "squares": 2},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(info))
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    arrays = {}
    names = [("Tr", f"case_{i:03d}", i) for i in range(num_cases)]
    names += [("Ts", f"test_{i:03d}", 100 + i) for i in range(test_cases)]
    for folder, case, seed in names:
        image, label = blob_case(seed)
        save_nifti(root / f"images{folder}" / f"{case}_0000.nii.gz", image, affine)
        save_nifti(root / f"labels{folder}" / f"{case}.nii.gz", label, affine)
        arrays[case] = (image, label)
    return arrays


def write_pictures(
    images: Path,
    masks: Path,
    count: int = 5,
    size: tuple[int, int] = (18, 22),
    mask_values: tuple[int, ...] = (0, 1, 2),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``count`` gray PNG images and masks with the same stems."""
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i in range(count):
        rng = np.random.default_rng(i)
        picture = rng.integers(0, 256, size).astype(np.uint8)
        mask = rng.choice(list(mask_values), size=size).astype(np.uint8)
        Image.fromarray(picture).save(images / f"img{i}.png")
        Image.fromarray(mask).save(masks / f"img{i}.png")
        arrays[f"img{i}"] = (picture, mask)
    return arrays


def leftovers(parent: Path) -> list[str]:
    """Hidden temporary folders or files a writer may have left in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def synapse_raw(tmp_path: Path) -> tuple[Path, dict[int, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path / "raw_synapse"
    return root, write_synapse_raw(root)


@pytest.fixture(scope="module")
def prepared_synapse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """A prepared Synapse dataset (cases 5 and 6 train, 1 test), shared by the tests of one module."""
    from perspective_unet.data import prepare_synapse

    base = tmp_path_factory.mktemp("synapse")
    arrays = write_synapse_raw(base / "raw")
    return prepare_synapse(base / "raw", base / "prepared"), arrays
