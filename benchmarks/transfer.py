"""How the demo's model transfers to real scans it never trained on (TotalSegmentator's test scans, Apache-2.0).

The PyPI sdist totalsegmentator-2.18.0 (the demo's archive) ships three other scans with reference labels of the
demo's organs:

- ``dicom_ct``: another patient's contrast CT as a DICOM series (512 x 512 x 20, 0.98 x 0.98 x 2 mm) with
  TotalSegmentator's labels on the same grid; every Synapse organ with at least ``MIN_VOXELS`` reference voxels is
  scored.
- ``aorta_cta``: a CT angiogram (233 x 167 x 191, 1.5 mm) with an aorta mask on a cropped grid; only the aorta
  is scored.
- ``abdominal_mr``: an abdominal MR (117 x 91 x 20, 3 mm) with the labels of TotalSegmentator's MR model
  (``total_mr``); all eight organs are scored. A CT-trained model cannot read MR values through its CT window, so
  the MR is predicted with the MR rule (``--mr-normalize``): each volume clipped to its own 0.5th / 99.5th
  percentiles and scaled to [0, 1]; the plan's z-score, defined in the CT window's units, then becomes a z-score with
  the volume's own mean and standard deviation (``IntensitySpec.with_stored_range``).

(``example_ct_sm.nii.gz`` is a crop of the demo's own CT and is left out.) The labels are TotalSegmentator's output,
not manual annotation. Each reference is brought onto the prediction's grid by the affines, and Dice is computed per
organ over the whole volume.

Usage:
    python benchmarks/transfer.py --checkpoint CKPT [--sdist PATH] [--cache-dir DIR] [-o OUT_DIR] [--tta]
    python benchmarks/transfer.py --runs RUNS [--train] [--seeds 3] [-o OUT_DIR] [--overwrite]

The second form compares the demo recipe without and with the appearance augmentation for unseen domains
(``augmentation.domain_generalization``): the runs ``RUNS/<variant>/seed_<S>/`` (trained there first with
``--train``, each a full ``perspective-unet demo`` run) are scored on every scan, and ``transfer_compare.json`` and
``transfer_compare.md`` report each organ's Dice as mean and sample standard deviation over the seeds, with each
run's held-out Dice on the demo's own slices and its minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
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
from perspective_unet.outputs import text_writer, write_all
from perspective_unet.stats import spread

PREFIX = "totalsegmentator-2.18.0/tests/reference_files/"
DICOM_FILES = [
    f"example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000{n}" for n in range(16573, 16593)
]
MIN_VOXELS = 1000
# TotalSegmentator's total_mr ids -> Synapse class ids (aorta 23, gallbladder 4, kidney_left 3, kidney_right 2, liver 5,
# pancreas 7, spleen 1, stomach 6).
TOTAL_MR_TO_SYNAPSE = {23: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}
TOLERANCE_MM = 1e-3
SCANS: dict[str, dict[str, Any]] = {
    "dicom_ct": {
        "image": "example_ct_dicom",
        "files": DICOM_FILES,
        "reference": "example_seg_dicom.nii.gz",
        "label_map": TOTALSEGMENTATOR_TO_SYNAPSE,
        "classes": None,
        "resample": False,
        "modality": "CT",
    },
    "aorta_cta": {
        "image": "aorta_report/example_ct.nii.gz",
        "files": ["aorta_report/example_ct.nii.gz"],
        "reference": "aorta_report/test_result/models/aorta.nii.gz",
        "label_map": {1: 1},
        "classes": [1],
        "resample": True,
        "modality": "CT",
    },
    "abdominal_mr": {
        "image": "example_mr_sm.nii.gz",
        "files": ["example_mr_sm.nii.gz"],
        "reference": "example_seg_mr.nii.gz",
        "label_map": TOTAL_MR_TO_SYNAPSE,
        "classes": list(range(1, len(SYNAPSE_CLASS_NAMES))),
        "resample": False,
        "modality": "MR",
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
    unit = result.get("intensity_unit", "HU")
    lines = [
        f"{name}  ({' x '.join(map(str, result['shape']))} voxels, spacing {result['spacing_mm']} mm)",
        f"{'organ':<14}{'Dice':>8}{'ref voxels':>12}{'pred voxels':>13}{'ref mean ' + unit:>20}",
    ]
    for organ, s in result["organs"].items():
        dice = "n/a" if s["dice"] is None else f"{s['dice']:.4f}"
        level = "n/a" if s["reference_mean"] is None else f"{s['reference_mean']:.0f}"
        lines.append(f"{organ:<14}{dice:>8}{s['reference_voxels']:>12}{s['predicted_voxels']:>13}{level:>20}")
    mean = "n/a" if result["mean_dice"] is None else f"{result['mean_dice']:.4f}"
    return "\n".join([*lines, f"{'mean':<14}{mean:>8}"])


def evaluate_scan(spec: dict[str, Any], files: Path, checkpoint: Path, out: Path, tta: bool) -> dict[str, Any]:
    """Predict one scan, bring its reference (and the image, for the intensity check) onto the prediction grid and
    score. MR scans are predicted with the MR rule (see the module docstring)."""
    # Here, not at the top: the pure functions need no torch.
    from perspective_unet.engine.predict import predict_path
    from perspective_unet.runtime.inference_settings import InferenceSettings

    mr = spec["modality"] == "MR"
    settings = InferenceSettings(tta=tta, mr_normalize=mr)
    written = predict_path(checkpoint, files / spec["image"], out, settings, overwrite=True, progress=False)
    prediction, meta = read_image(written[0], as_label=True)
    raw, ref_meta = read_image(files / spec["reference"], as_label=True)
    mapped = remap_labels(raw.astype(np.int64), spec["label_map"]).astype(np.uint8)
    reference = place_on_grid(mapped, ref_meta["affine"], prediction.shape, meta["affine"], spec["resample"])
    image, image_meta = read_image(files / spec["image"])
    image = place_on_grid(image, image_meta["affine"], prediction.shape, meta["affine"], resample=False)
    classes = spec["classes"] if spec["classes"] is not None else classes_present(reference)
    scores = dice_per_class(prediction, reference, classes)
    organs = {}
    for c, s in scores.items():
        inside = image[reference == c]
        organs[SYNAPSE_CLASS_NAMES[c]] = {**s, "reference_mean": float(inside.mean()) if inside.size else None}
    oriented, oriented_affine = reorient(mapped, ref_meta["affine"], nib.aff2axcodes(meta["affine"]))
    offset = grid_offset(oriented.shape, oriented_affine, meta["affine"])  # None: resampled
    return {
        "image": PREFIX + spec["image"],
        "reference": PREFIX + spec["reference"],
        "prediction": str(written[0]),
        "modality": spec["modality"],
        "intensity_unit": "MR signal" if mr else "HU",
        "normalization": "MR rule (--mr-normalize)" if mr else "the checkpoint's",
        "shape": list(prediction.shape),
        "spacing_mm": [round(s, 4) for s in meta["spacing"]],
        "axcodes": meta["axcodes"],
        "reference_axcodes": "".join(nib.aff2axcodes(ref_meta["affine"])),
        "reference_shape": list(raw.shape),
        "organs": organs,
        "reference_offset_voxels": None if offset is None else offset.tolist(),
        "mean_dice": mean_dice(scores),
    }


def evaluate_all(files: Path, checkpoint: Path, out: Path, tta: bool) -> dict[str, dict[str, Any]]:
    """Every scan of ``SCANS`` scored for one checkpoint, predictions under ``out/<scan>``."""
    return {name: evaluate_scan(spec, files, checkpoint, out / name, tta) for name, spec in SCANS.items()}


# The demo recipe without and with the appearance augmentation for unseen domains ------------------------------------

# Folder name -> the value of augmentation.domain_generalization on top of the demo's own augmentation.
VARIANTS = {"demo": False, "demo_domain": True}
VARIANT_TITLES = {"demo": "demo recipe", "demo_domain": "demo recipe + domain_generalization"}


def run_variants(
    runs: Path, files: Path, seeds: Sequence[int], train: bool, time_limit: float, tta: bool, cache_dir: Path | None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Each variant's runs ``runs/<variant>/seed_<S>`` (trained first if ``train`` and missing), scored on every scan.

    A run's scores are kept in its ``transfer.json`` and reused while they cover the same scans.

    Returns:
        ``{variant: {seed: {"held_out_mean_dice", "minutes", "epochs", "scans"}}}`` for the runs found.
    """
    from perspective_unet.engine.demo import DEMO_AUGMENTATION, DemoSettings, run_demo

    records: dict[str, dict[int, dict[str, Any]]] = {}
    for variant, domain in VARIANTS.items():
        records[variant] = {}
        for seed in seeds:
            folder = runs / variant / f"seed_{seed}"
            if not (folder / "best.pt").is_file():
                if not train:
                    continue
                augmentation = {**DEMO_AUGMENTATION, "domain_generalization": domain}
                settings = DemoSettings(augmentation=augmentation, seed=seed, time_limit_minutes=time_limit)
                run_demo(folder, settings, overwrite=True, data=runs / "data", cache_dir=cache_dir)
            cached = folder / "transfer.json"
            scans = json.loads(cached.read_text())["scans"] if cached.is_file() else {}
            if set(scans) != set(SCANS):
                scans = evaluate_all(files, folder / "best.pt", folder / "transfer", tta)
                cached.write_text(json.dumps({"checkpoint": str(folder / "best.pt"), "tta": tta, "scans": scans}))
            demo = json.loads((folder / "demo.json").read_text())
            held_out = json.loads((folder / "summary.json").read_text())["mean_dice"]
            records[variant][seed] = {
                "held_out_mean_dice": held_out,
                "minutes": demo["minutes"],
                "epochs": demo["epochs"],
                "scans": scans,
            }
    return records


def compare(records: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: held-out Dice, minutes, and each scan's organs' Dice as mean, sample std and count over seeds."""
    out: dict[str, Any] = {}
    for variant, by_seed in records.items():
        runs = list(by_seed.values())
        scans: dict[str, Any] = {}
        for name in SCANS:
            organs = list(dict.fromkeys(organ for run in runs for organ in run["scans"][name]["organs"]))
            scans[name] = {
                organ: asdict(spread([_nan(run["scans"][name]["organs"].get(organ, {}).get("dice")) for run in runs]))
                for organ in organs
            }
            scans[name]["mean"] = asdict(spread([_nan(run["scans"][name]["mean_dice"]) for run in runs]))
        out[variant] = {
            "seeds": list(by_seed),
            "held_out_mean_dice": asdict(spread([run["held_out_mean_dice"] for run in runs])),
            "minutes": asdict(spread([run["minutes"] for run in runs])),
            "scans": scans,
        }
    return out


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _cell(value: dict[str, Any], scale: float = 100.0) -> str:
    if value["n"] == 0:
        return "not run"
    if value["n"] == 1:
        return f"{value['mean'] * scale:.1f} (1 seed)"
    return f"{value['mean'] * scale:.1f} ± {value['std'] * scale:.1f} ({value['n']})"


def format_comparison(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per scan and organ, one column per variant (Dice x 100, mean ± std (seeds))."""
    variants = list(summary)
    lines = [
        "| scan | organ | " + " | ".join(VARIANT_TITLES.get(v, v) for v in variants) + " |",
        "|---|---|" + "---:|" * len(variants),
        "| demo CT, held-out slices | mean of 8 | "
        + " | ".join(_cell(summary[v]["held_out_mean_dice"]) for v in variants)
        + " |",
    ]
    for name in SCANS:
        organs = list(dict.fromkeys(organ for v in variants for organ in summary[v]["scans"].get(name, {})))
        for organ in [o for o in organs if o != "mean"] + ["mean"]:
            empty = {"mean": math.nan, "std": math.nan, "n": 0}
            cells = [_cell(summary[v]["scans"].get(name, {}).get(organ, empty)) for v in variants]
            lines.append(f"| {name} | {organ} | " + " | ".join(cells) + " |")
    minutes = [_cell(summary[v]["minutes"], scale=1.0) for v in variants]
    lines.append("| training and evaluation | minutes | " + " | ".join(minutes) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="a checkpoint or model folder trained with Synapse class ids")
    what.add_argument("--runs", type=Path, help="compare the demo recipe without and with domain_generalization")
    parser.add_argument("--train", action="store_true", help="with --runs: train the missing runs first")
    parser.add_argument("--seeds", type=int, default=3, help="with --runs: seeds 1234, 1235, ... (default 3)")
    parser.add_argument(
        "--time-limit-minutes", type=float, default=60.0, help="with --train: each run's safety stop (default 60)"
    )
    parser.add_argument("--overwrite", action="store_true", help="with --runs: replace an earlier comparison")
    parser.add_argument("--sdist", type=Path, default=None, help=f"a local copy of {DEMO_SDIST_NAME}")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the downloaded sdist is kept")
    parser.add_argument("-o", "--output", type=Path, default=Path("transfer_out"), help="output folder")
    parser.add_argument("--tta", action="store_true", help="average predictions over flips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.checkpoint is not None and not (args.checkpoint.is_file() or is_model_folder(args.checkpoint)):
            raise InputError(f"checkpoint {args.checkpoint} does not exist; give a .pt file or a model folder.")
        report_files = [args.output / "transfer_compare.json", args.output / "transfer_compare.md"]
        if args.runs is not None and any(f.exists() for f in report_files) and not args.overwrite:
            raise InputError(f"{report_files[0]} exists; pass --overwrite to replace it, or choose another -o.")
        if args.seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {args.seeds}.")
        sdist = fetch_demo_sdist(args.cache_dir, args.sdist)
        with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
            files = extract_scans(sdist, Path(tmp))
            if args.runs is None:
                results = evaluate_all(files, args.checkpoint, args.output / "predictions", args.tta)
            else:
                seeds = range(1234, 1234 + args.seeds)
                records = run_variants(
                    args.runs, files, seeds, args.train, args.time_limit_minutes, args.tta, args.cache_dir
                )
    except ValueError as exc:  # InputError (bad input: 2) or grids that do not line up (1)
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    if args.runs is not None:
        summary = compare(records)
        table = format_comparison(summary)
        report = {
            "runs": str(args.runs),
            "tta": args.tta,
            "sdist": str(sdist),
            "variants": VARIANTS,
            "summary": summary,
        }
        report["runs_scores"] = records
        write_all(
            {report_files[0]: text_writer(json.dumps(report, indent=1)), report_files[1]: text_writer(table + "\n")}
        )
        print(table)
        print(f"\nwrote {report_files[0]} and {report_files[1]}")
        return 0
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
