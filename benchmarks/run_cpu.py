"""The CPU measurements behind benchmarks/README.md and docs/performance.md, through the library behind
`perspective-unet benchmark`. Usage: python benchmarks/run_cpu.py SECTION [SECTION ...] [--out DIR]

Sections: train (released SCSI attention, where the plain path fits in memory), train-tokens (the paper's token
attention), inference, volume, attention. Each writes DIR/<section>.json and DIR/<section>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from perspective_unet import bench

log = logging.getLogger("run_cpu")


def _write(out: Path, name: str, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(bench.report_markdown(report))
    log.info("wrote %s", out / f"{name}.md")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every measurement")
    parser.add_argument("--volume-depth", type=int, default=100, help="slices of the synthetic 512x512 volume")
    parser.add_argument("--volume-batch-size", type=int, default=4, help="slices per forward pass, optimized paths")
    parser.add_argument("--memory-limit-mb", type=float, default=22_000, help="address-space cap, train-tokens")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    baseline = bench.baseline_settings()
    speed = dataclasses.replace(bench.optimized_settings("cpu"), name="optimized (speed)")
    memory = dataclasses.replace(
        bench.optimized_settings("cpu", gradient_checkpointing=("cnn", "enltb"), allocator="release"),
        name="optimized (memory)",
    )
    compiled_train = bench.train_settings("cpu", activation_memory_budget=0.4)
    compiled_infer = dataclasses.replace(bench.optimized_settings("cpu", compile=True), name="optimized (compiled)")
    for section in args.sections:
        if section == "train":
            report = bench.benchmark_model(
                "perspective_unet", modes=("train",), paths=[baseline, speed, compiled_train, memory],
                train_batch_size=2, runs=3, warmup=1, rounds=2, fidelity=False,
                model_overrides={"scsi_attention": "official"}, log=log.info,
            )  # fmt: skip
        elif section == "train-tokens":
            report = bench.benchmark_model(
                "perspective_unet", modes=("train",), paths=[baseline, compiled_train, speed], train_batch_size=2,
                runs=2, warmup=1, rounds=1, fidelity=False, memory_limit_mb=args.memory_limit_mb, log=log.info,
            )  # fmt: skip
        elif section == "inference":
            report = bench.benchmark_model(
                "perspective_unet", modes=("inference",), paths=[baseline, speed, compiled_infer], batch_size=1,
                runs=5, warmup=2, rounds=2, fidelity=True, profile=True, log=log.info,
            )  # fmt: skip
        elif section == "volume":
            report = bench.benchmark_model(
                "perspective_unet", modes=("volume",), paths=[baseline, speed, compiled_infer],
                volume_shape=(args.volume_depth, 512, 512),
                volume_batch_size=args.volume_batch_size, rounds=1, fidelity=False, log=log.info,
            )  # fmt: skip
        elif section == "bf16":
            # Not an exact path: bf16 autocast on the CPU, reported with its accuracy effect.
            bf16 = dataclasses.replace(speed, name="optimized + bf16 autocast", amp="bfloat16")
            report = bench.benchmark_model(
                "perspective_unet", modes=("inference", "volume"), paths=[baseline, speed, bf16], batch_size=1,
                runs=3, warmup=1, rounds=1, volume_shape=(args.volume_depth, 512, 512),
                volume_batch_size=args.volume_batch_size,
                fidelity=True, log=log.info,
            )  # fmt: skip
        elif section == "attention":
            report = bench.benchmark_attention((1024, 4096, 16384, 65536), log=log.info)
            report["scsi"] = bench.benchmark_scsi_memory((224, 448), log=log.info)
        else:
            raise SystemExit(f"unknown section {section!r}")
        _write(args.out, section, report)


if __name__ == "__main__":
    main()
