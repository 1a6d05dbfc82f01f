"""float32 against int8 in ONNX Runtime, speed and Dice, in one run: the graphs `export --format onnx` writes with and
without ``--quantize int8``, run by the light runtime (no PyTorch in the timed paths).

Measured, the two graphs taking turns round by round (a machine that others share slows both alike; the ratios are
the result, the absolute times are not):

- one forward pass of a window batch at the plan's patch size (batch 1 and the runtime's default batch, 16);
- the light runtime's whole prediction of each held-out volume (resampling, windows, labels back);
- mean Dice on the held-out volumes (the check ``--quantize int8`` runs) and the share of voxels whose labels agree.

Usage: python benchmarks/onnx_int8.py CHECKPOINT --data DATA [--threads 2] [--rounds 3] [--runs 3]
[-o benchmarks/results/onnx_int8.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from perspective_unet.data.datasets import VolumeDataset
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.export.onnx import export_onnx
from perspective_unet.export.quantize import DICE_TOLERANCE, export_quantized_onnx
from perspective_unet.models.onnx_session import OnnxSession
from perspective_unet.runtime.predictor import OnnxPredictor


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "avx_vnni", "amx")))


def _timed(call, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the dataset to calibrate on and check with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calibration-slices", type=int, default=32)
    parser.add_argument("-o", "--output", default="benchmarks/results/onnx_int8.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        float_path, int8_path = Path(folder) / "float" / "model.onnx", Path(folder) / "int8" / "model.onnx"
        export_onnx(args.checkpoint, float_path)
        started = time.perf_counter()
        # Tolerance 1: the graph is written whatever its drop, so that both can be measured; the verdict under the
        # default tolerance is reported below.
        _, check = export_quantized_onnx(
            args.checkpoint, int8_path, data=args.data, tolerance=1.0, calibration_slices=args.calibration_slices
        )
        quantize_seconds = time.perf_counter() - started
        graph_bytes = {"float32": float_path.stat().st_size, "int8": int8_path.stat().st_size}
        sessions = {
            name: OnnxSession(path, providers="cpu", threads=args.threads)
            for name, path in (("float32", float_path), ("int8", int8_path))
        }
        predictors = {name: OnnxPredictor.from_session(s, s.info()) for name, s in sessions.items()}
        plan = predictors["float32"].plan
        volumes = VolumeDataset(open_dataset(args.data), check.split)
        items = [volumes[i] for i in range(len(volumes)) if str(volumes[i]["case"]) in check.cases]
        rng = np.random.default_rng(0)
        batches = {b: rng.normal(size=(b, plan.in_channels, *plan.patch_size)).astype(np.float32) for b in (1, 16)}
        calls = {}
        for name, session in sessions.items():
            for b, batch in batches.items():
                calls[f"{name} forward, batch {b}"] = lambda s=session, x=batch: s(x)
            calls[f"{name} held-out volumes"] = lambda p=predictors[name]: [
                p.predict_canonical(item["image"], spacing=item["spacing"][1:]) for item in items
            ]
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # warm-up
            call()
        for _ in range(args.rounds):
            for name, call in calls.items():
                times[name] += _timed(call, args.runs)
        labels = {
            name: [p.predict_canonical(item["image"], spacing=item["spacing"][1:]) for item in items]
            for name, p in predictors.items()
        }
    agreement = float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(labels["float32"], labels["int8"])])))
    medians = {name: statistics.median(values) for name, values in times.items()}
    speedups = {
        what: medians[f"float32 {what}"] / medians[f"int8 {what}"]
        for what in ("forward, batch 1", "forward, batch 16", "held-out volumes")
    }
    result = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_flags": _cpu_flags(),
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": args.threads,
        "plan": {"protocol": plan.protocol, "patch_size": list(plan.patch_size), "in_channels": plan.in_channels},
        "graph_bytes": graph_bytes,
        "check": check.record(),
        "passes_default_tolerance": check.drop <= DICE_TOLERANCE,
        "quantize_seconds": quantize_seconds,
        "median_seconds": medians,
        "all_seconds": times,
        "int8_speedup": speedups,
        "label_agreement": agreement,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for name, median in medians.items():
        print(f"{name:36s} {median:.4f} s")
    print(
        f"int8 speed-up: {', '.join(f'{k} {v:.2f}x' for k, v in speedups.items())}; mean Dice float32 "
        f"{check.float_dice:.4f}, int8 {check.quantized_dice:.4f} (drop {check.drop:.4f}) on {len(items)} "
        f"{check.split} volume(s); labels agree on {100 * agreement:.2f}% of voxels"
    )


if __name__ == "__main__":
    main()
