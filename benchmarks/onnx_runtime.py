"""Inference per slice: ONNX Runtime on the exported graph against this package's PyTorch paths, in one run.

Paths, same weights, batch 1, eval mode, the same number of threads:

- ``torch_plain``: the model as built, float32, ``F.linear`` and SDPA (oneDNN routes off);
- ``torch_optimized``: the package's eager inference path: BatchNorm folded (``fuse_for_inference``), channels-last,
  the oneDNN routes on;
- ``onnxruntime``: the graph ``perspective-unet export --format onnx`` writes, on ONNX Runtime's CPU provider with
  all graph optimizations.

The paths take turns round by round, so a machine that others share slows them alike; the medians of all rounds are
compared as ratios. Usage: python benchmarks/onnx_runtime.py [--model perspective_unet] [--size 224 224] [--rounds 3]
[--runs 3] [--threads N] [-o benchmarks/results/onnx_runtime.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from perspective_unet import create_model, save_model
from perspective_unet.export.onnx import export_onnx
from perspective_unet.models.onnx_runtime import OnnxRuntimeModel
from perspective_unet.models.ops import onednn_linear


def _time(call, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perspective_unet")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("-o", "--output", default="benchmarks/results/onnx_runtime.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.size
    model = create_model(args.model, num_classes=9).eval()
    x = torch.randn(1, 1, height, width)
    with tempfile.TemporaryDirectory() as folder:
        plan = {"protocol": "paper", "patch_size": [height, width], "intensity": {"kind": "unit"}}
        checkpoint = save_model(model, Path(folder) / "m.pt", plan=plan)
        started = time.perf_counter()
        parity = export_onnx(checkpoint, Path(folder) / "model.onnx")
        export_seconds = time.perf_counter() - started
        runtime = OnnxRuntimeModel(Path(folder) / "model.onnx", num_classes=9, threads=args.threads)
        fused = model.fuse_for_inference()
        x_last = x.contiguous(memory_format=torch.channels_last)

        def plain() -> torch.Tensor:
            with torch.inference_mode(), onednn_linear("off"):
                return model(x)

        def optimized() -> torch.Tensor:
            with torch.inference_mode():
                return fused(x_last)

        def onnx() -> torch.Tensor:
            return runtime(x)

        paths = {"torch_plain": plain, "torch_optimized": optimized, "onnxruntime": onnx}
        reference = plain()
        agreement = {
            name: float((call().argmax(1) == reference.argmax(1)).float().mean()) for name, call in paths.items()
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for call in paths.values():  # warm-up
            call()
        for _ in range(args.rounds):
            for name, call in paths.items():
                times[name] += _time(call, args.runs)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model,
        "input": [1, 1, height, width],
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "median_seconds": medians,
        "all_seconds": times,
        "speedup_vs_plain": {name: medians["torch_plain"] / m for name, m in medians.items()},
        "onnxruntime_vs_torch_optimized": medians["torch_optimized"] / medians["onnxruntime"],
        "label_agreement_with_plain": agreement,
        "export_seconds": export_seconds,
        "parity": [{"shape": list(p.shape), "relative_difference": p.relative_difference} for p in parity],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for name, median in medians.items():
        print(f"{name:16s} {median:.3f} s per slice ({medians['torch_plain'] / median:.2f}x the plain path)")
    print(
        f"ONNX Runtime vs the optimized torch path: {result['onnxruntime_vs_torch_optimized']:.2f}x; labels agree "
        f"with the plain path on {100 * agreement['onnxruntime']:.3f}% of pixels; parity "
        + ", ".join(f"{p.relative_difference:.1e}" for p in parity)
    )


if __name__ == "__main__":
    main()
