"""Float32 against bfloat16 inference of trained demo models on the demo's held-out slices: labels, Dice and time.

The bar for ``--precision auto`` to choose bfloat16 in inference (docs/performance.md): the bfloat16 labels agree
with float32 on at least 99.5% of the voxels and the mean Dice (legacy protocol, foreground classes) moves by less
than 0.5 points. Each model predicts every held-out volume in both precisions, interleaved, ``--repeats`` times; the
time reported is the median per volume, and the ratio the median of the per-repeat ratios.

Usage:
    python benchmarks/precision_parity.py DEMO_OUT [DEMO_OUT ...] [--split test] [--repeats 3] [--json OUT.json]

Each ``DEMO_OUT`` is a ``perspective-unet demo`` output folder: ``best.pt`` (or ``seed_<S>/best.pt`` for each seed)
and the prepared data in ``data/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from perspective_unet.engine.predictor import Predictor
from perspective_unet.metrics import score_case
from perspective_unet.models.ops.precision import cpu_capabilities
from perspective_unet.runs import load
from perspective_unet.runtime.inference_settings import InferenceSettings

PRECISIONS = ("fp32", "bf16")


def _checkpoints(folder: Path) -> list[Path]:
    found = sorted(folder.glob("seed_*/best.pt")) or sorted(folder.glob("best.pt"))
    if not found:
        sys.exit(f"{folder} holds no best.pt and no seed_*/best.pt; give a demo output folder.")
    return found


def _mean_dice(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    scores = score_case(prediction, label, num_classes)
    return float(np.mean([scores[c]["dice"] for c in sorted(scores)]))


def compare(checkpoint: Path, volumes: list[Path], repeats: int) -> dict:
    """One model's float32 and bfloat16 predictions of ``volumes``: agreement, mean Dice of each, times."""
    loaded = load(checkpoint)
    predictors = {
        p: Predictor.from_model(loaded.model, loaded.info, InferenceSettings(precision=p)) for p in PRECISIONS
    }
    num_classes = int(loaded.model.config.num_classes)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    agree = total = 0
    dice: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for path in volumes:
        with h5py.File(path, "r") as handle:
            image, label, spacing = handle["image"][:], handle["label"][:], tuple(handle.attrs["spacing"])
        labels = {}
        for repeat in range(repeats):
            # Alternate which precision goes first, so a change of the machine's load hits both alike.
            for precision in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:
                started = time.perf_counter()
                labels[precision] = predictors[precision].predict_canonical(image, spacing=spacing[1:])
                times[precision].append(time.perf_counter() - started)
        agree += int((labels["fp32"] == labels["bf16"]).sum())
        total += labels["fp32"].size
        for precision in PRECISIONS:
            dice[precision].append(_mean_dice(labels[precision], label, num_classes))
    ratios = [a / b for a, b in zip(times["fp32"], times["bf16"], strict=True)]
    return {
        "checkpoint": str(checkpoint),
        "voxel_agreement": agree / total,
        "mean_dice_fp32": float(np.mean(dice["fp32"])),
        "mean_dice_bf16": float(np.mean(dice["bf16"])),
        "seconds_fp32": statistics.median(times["fp32"]),
        "seconds_bf16": statistics.median(times["bf16"]),
        "speedup_bf16": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="demo output folders")
    parser.add_argument("--split", default="test", help="which prepared volumes (test_vol_h5, val_vol_h5)")
    parser.add_argument("--repeats", type=int, default=3, help="predictions of each volume in each precision")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    print(cpu_capabilities().describe(), f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for folder in args.folders:
        volumes = sorted((folder / "data" / f"{args.split}_vol_h5").glob("*.h5"))
        if not volumes:
            sys.exit(f"{folder / 'data'} holds no {args.split} volumes.")
        for checkpoint in _checkpoints(folder):
            row = compare(checkpoint, volumes, args.repeats)
            rows.append(row)
            print(
                f"{checkpoint}: agreement {100 * row['voxel_agreement']:.3f}%, mean Dice "
                f"{100 * row['mean_dice_fp32']:.2f} -> {100 * row['mean_dice_bf16']:.2f}, "
                f"{row['seconds_fp32']:.2f} s -> {row['seconds_bf16']:.2f} s ({row['speedup_bf16']:.2f}x)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_capabilities().describe(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
