"""How a checkpoint transfers to real CT scans it never trained on (TotalSegmentator's test scans, Apache-2.0).

The PyPI sdist totalsegmentator-2.18.0 (the demo's archive) also ships two other scans with reference labels:

- ``dicom_ct``: a contrast CT as a DICOM series (512 x 512 x 20, 0.98 x 0.98 x 2 mm) with TotalSegmentator's
  labels on the same grid; every Synapse organ with at least ``MIN_VOXELS`` reference voxels is scored.
- ``aorta_cta``: a CT angiogram (233 x 167 x 191, 1.5 mm) with an aorta mask on a cropped grid; only the aorta
  is scored.

The labels are TotalSegmentator's output, not manual annotation. Each reference is brought onto the prediction's
grid by the affines, and Dice is computed per organ over the whole volume.

Usage: python benchmarks/transfer.py --checkpoint CKPT [--sdist PATH] [--cache-dir DIR] [-o OUT_DIR] [--tta]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from perspective_unet.data.demo import DEMO_SDIST_NAME, TOTALSEGMENTATOR_TO_SYNAPSE, fetch_demo_sdist
from perspective_unet.data.io import read_image
from perspective_unet.data.layouts.raw import remap_labels
from perspective_unet.data.layouts.synapse import SYNAPSE_CLASS_NAMES
from perspective_unet.errors import InputError
from perspective_unet.models.pretrained import is_model_folder

PREFIX = "totalsegmentator-2.18.0/tests/reference_files/"
DICOM_FILES = [
    f"example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000{n}" for n in range(16573, 16593)
]
MIN_VOXELS = 1000
TOLERANCE_MM = 1e-3
SCANS: dict[str, dict[str, Any]] = {
    "dicom_ct": {
        "image": "example_ct_dicom",
        "files": DICOM_FILES,
        "reference": "example_seg_dicom.nii.gz",
        "label_map": TOTALSEGMENTATOR_TO_SYNAPSE,
        "classes": None,
        "resample": False,
    },
    "aorta_cta": {
        "image": "aorta_report/example_ct.nii.gz",
        "files": ["aorta_report/example_ct.nii.gz"],
        "reference": "aorta_report/test_result/models/aorta.nii.gz",
        "label_map": {1: 1},
        "classes": [1],
        "resample": True,
    },
}


def extract_scans(sdist: Path, dest: Path) -> Path:
    """Copy the scans' files out of the sdist by exact member name into ``dest``; returns ``dest``."""
    names = sorted({f for spec in SCANS.values() for f in [*spec["files"], spec["reference"]]})
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for name in names:
                handle = archive.extractfile(PREFIX + name)
                if handle is None:
                    raise KeyError(PREFIX + name)
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                with handle, open(dest / name, "wb") as f:
                    shutil.copyfileobj(handle, f)
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{sdist} lacks or cannot give {exc}; it is not the expected {DEMO_SDIST_NAME}.") from None
    return dest


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute ``array`` so its axes follow ``axcodes`` (e.g. ``("L", "P", "S")``); returns it and its affine."""
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt(axcodes))
    return orientations.apply_orientation(array, transform), affine @ orientations.inv_ornt_aff(transform, array.shape)


def grid_offset(shape: Sequence[int], affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray | None:
    """The integer voxel offset of a grid inside the target grid, or None unless it is a pure voxel translation.

    A translation counts when every corner of the grid lands within ``TOLERANCE_MM`` of where the target grid,
    shifted by the rounded offset, puts it (same axis order, directions and spacing).
    """
    offset = np.round((np.linalg.inv(target_affine) @ affine)[:3, 3])
    snapped = target_affine.copy()
    snapped[:3, 3] = (target_affine @ np.append(offset, 1.0))[:3]
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])]).T
    error = np.linalg.norm(((affine - snapped) @ corners)[:3], axis=0).max()
    return offset.astype(int) if error <= TOLERANCE_MM else None


def place_on_grid(
    reference: np.ndarray,
    reference_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    resample: bool = True,
) -> np.ndarray:
    """Bring a 3D label map (or image) onto a target grid by the two affines.

    The reference is first reoriented to the target's axis codes. A pure integer translation (a crop of the same
    grid) is pasted at its offset; anything else is resampled with nearest neighbors if ``resample``.

    Raises:
        ValueError: The grids differ by more than a voxel translation and ``resample`` is False, or labeled
            voxels of a translated reference fall outside the target grid.
    """
    array, affine = reorient(reference, reference_affine, nib.aff2axcodes(target_affine))
    offset = grid_offset(array.shape, affine, target_affine)
    if offset is None:
        if not resample:
            raise ValueError(
                f"the reference grid (axes {''.join(nib.aff2axcodes(affine))}, affine "
                f"{np.round(affine, 4).tolist()}) differs from the target grid (affine "
                f"{np.round(target_affine, 4).tolist()}) by more than {TOLERANCE_MM} mm."
            )
        m = np.linalg.inv(affine) @ target_affine  # target voxel -> reference voxel
        return ndimage.affine_transform(
            array, m[:3, :3], offset=m[:3, 3], output_shape=tuple(target_shape), order=0, mode="constant", cval=0
        )
    out = np.zeros(tuple(target_shape), dtype=array.dtype)
    lo = [max(0, int(o)) for o in offset]
    hi = [min(t, int(o) + n) for o, n, t in zip(offset, array.shape, target_shape)]
    if all(h > low for low, h in zip(lo, hi)):
        src = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, offset))
        out[tuple(slice(low, h) for low, h in zip(lo, hi))] = array[src]
        lost = int(np.count_nonzero(array)) - int(np.count_nonzero(array[src]))
    else:
        lost = int(np.count_nonzero(array))
    if lost:
        raise ValueError(f"{lost} labeled voxels of the reference (offset {offset.tolist()}) fall outside the target.")
    return out


def classes_present(labels: np.ndarray, min_voxels: int = MIN_VOXELS) -> list[int]:
    """The non-zero class ids with at least ``min_voxels`` voxels, ascending."""
    values, counts = np.unique(labels, return_counts=True)
    return [int(v) for v, c in zip(values, counts) if v != 0 and c >= min_voxels]


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Dice 2|P∩R| / (|P| + |R|) per class over the whole volume, with the voxel counts.

    Returns:
        ``{class: {"dice", "reference_voxels", "predicted_voxels"}}``; Dice is None where the class is in neither.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape.")
    scores = {}
    for c in classes:
        p, r = prediction == c, reference == c
        n_p, n_r = int(p.sum()), int(r.sum())
        dice = None if n_p + n_r == 0 else 2.0 * int(np.logical_and(p, r).sum()) / (n_p + n_r)
        scores[int(c)] = {"dice": dice, "reference_voxels": n_r, "predicted_voxels": n_p}
    return scores


def mean_dice(scores: dict[int, dict[str, Any]]) -> float | None:
    """Mean Dice over the classes where it is defined; None if there is none."""
    values = [s["dice"] for s in scores.values() if s["dice"] is not None]
    return float(np.mean(values)) if values else None


def format_table(name: str, result: dict[str, Any]) -> str:
    """A plain-text table of one scan's scores."""
    lines = [
        f"{name}  ({' x '.join(map(str, result['shape']))} voxels, spacing {result['spacing_mm']} mm)",
        f"{'organ':<14}{'Dice':>8}{'ref voxels':>12}{'pred voxels':>13}{'ref mean HU':>13}",
    ]
    for organ, s in result["organs"].items():
        dice = "n/a" if s["dice"] is None else f"{s['dice']:.4f}"
        hu = "n/a" if s["reference_mean_hu"] is None else f"{s['reference_mean_hu']:.0f}"
        lines.append(f"{organ:<14}{dice:>8}{s['reference_voxels']:>12}{s['predicted_voxels']:>13}{hu:>13}")
    mean = "n/a" if result["mean_dice"] is None else f"{result['mean_dice']:.4f}"
    return "\n".join([*lines, f"{'mean':<14}{mean:>8}"])


def evaluate_scan(spec: dict[str, Any], files: Path, checkpoint: Path, out: Path, tta: bool) -> dict[str, Any]:
    """Predict one scan, bring its reference (and the CT, for the HU check) onto the prediction grid and score."""
    from perspective_unet import predict_path  # here, not at the top: the pure functions need no torch

    written = predict_path(checkpoint, files / spec["image"], out, tta=tta, overwrite=True, progress=False)
    prediction, meta = read_image(written[0], as_label=True)
    raw, ref_meta = read_image(files / spec["reference"], as_label=True)
    mapped = remap_labels(raw.astype(np.int64), spec["label_map"]).astype(np.uint8)
    reference = place_on_grid(mapped, ref_meta["affine"], prediction.shape, meta["affine"], spec["resample"])
    ct, ct_meta = read_image(files / spec["image"])
    ct = place_on_grid(ct, ct_meta["affine"], prediction.shape, meta["affine"], resample=False)
    classes = spec["classes"] if spec["classes"] is not None else classes_present(reference)
    scores = dice_per_class(prediction, reference, classes)
    organs = {}
    for c, s in scores.items():
        inside = ct[reference == c]
        organs[SYNAPSE_CLASS_NAMES[c]] = {**s, "reference_mean_hu": float(inside.mean()) if inside.size else None}
    oriented, oriented_affine = reorient(mapped, ref_meta["affine"], nib.aff2axcodes(meta["affine"]))
    offset = grid_offset(oriented.shape, oriented_affine, meta["affine"])  # None: resampled
    return {
        "image": PREFIX + spec["image"],
        "reference": PREFIX + spec["reference"],
        "prediction": str(written[0]),
        "shape": list(prediction.shape),
        "spacing_mm": [round(s, 4) for s in meta["spacing"]],
        "axcodes": meta["axcodes"],
        "reference_axcodes": "".join(nib.aff2axcodes(ref_meta["affine"])),
        "reference_shape": list(raw.shape),
        "organs": organs,
        "reference_offset_voxels": None if offset is None else offset.tolist(),
        "mean_dice": mean_dice(scores),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a checkpoint or model folder trained with Synapse class ids"
    )
    parser.add_argument("--sdist", type=Path, default=None, help=f"a local copy of {DEMO_SDIST_NAME}")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the downloaded sdist is kept")
    parser.add_argument("-o", "--output", type=Path, default=Path("transfer_out"), help="output folder")
    parser.add_argument("--tta", action="store_true", help="average predictions over flips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = {}
    try:
        if not (args.checkpoint.is_file() or is_model_folder(args.checkpoint)):
            raise InputError(f"checkpoint {args.checkpoint} does not exist; give a .pt file or a model folder.")
        sdist = fetch_demo_sdist(args.cache_dir, args.sdist)
        with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
            files = extract_scans(sdist, Path(tmp))
            for name, spec in SCANS.items():
                predictions = args.output / "predictions" / name
                results[name] = evaluate_scan(spec, files, args.checkpoint, predictions, args.tta)
    except ValueError as exc:  # InputError (bad input: 2) or grids that do not line up (1)
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    report = {
        "checkpoint": str(args.checkpoint),
        "tta": args.tta,
        "sdist": str(sdist),
        "min_voxels": MIN_VOXELS,
        "scans": results,
    }
    (args.output / "transfer.json").write_text(json.dumps(report, indent=1))
    for name, result in results.items():
        print(format_table(name, result), end="\n\n")
    print(f"wrote {args.output / 'transfer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
