"""``perspective-unet benchmark``: speed and memory of the network (baseline against optimized path) and of its
attention kernels."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from perspective_unet.cli.choices import (
    ALLOCATOR_PROFILE_CHOICES,
    BENCHMARK_MODE_CHOICES,
    BENCHMARK_PATH_CHOICES,
    MODEL_CHOICES,
)

log = logging.getLogger("perspective_unet.benchmark")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="measure latency, throughput, FLOP rate and peak memory",
        description="`benchmark` (or `benchmark model`) measures the network on two paths with the same weights: "
        "the straightforward float32 path (baseline) and the optimized one (folded BatchNorm, channels-last, fast "
        "dropout, linear layers and, at inference, the token attention through oneDNN on a CPU, optional "
        "activation checkpointing, an allocator profile; optionally compile and autocast), for "
        "inference, a training step and whole-volume evaluation. On the CPU each measurement runs in its own "
        "process so its peak resident memory is its own. `benchmark attention` times ENLSA against exact "
        "attention (SDPA) from 1k to 64k tokens and measures SCSI memory at 224 and 448.",
    )
    parser.add_argument("target", nargs="?", default="model", choices=("model", "attention"), help="what to measure")
    parser.add_argument("--model", default="perspective_unet", choices=MODEL_CHOICES, help="model variant")
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="input size")
    parser.add_argument("--batch-size", type=int, default=1, help="inference batch")
    parser.add_argument("--train-batch-size", type=int, default=2, help="training-step batch")
    parser.add_argument("--volume-batch-size", type=int, default=16, help="slices per forward pass (optimized path)")
    parser.add_argument(
        "--volume-shape", type=int, nargs=3, default=(100, 512, 512), metavar=("Z", "H", "W"), help="synthetic volume"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median, min, max)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement, alternating the paths")
    parser.add_argument(
        "--mode",
        nargs="+",
        default=["all"],
        choices=(*BENCHMARK_MODE_CHOICES, "all"),
        help="inference, train, volume or all",
    )
    parser.add_argument(
        "--path",
        default="both",
        choices=BENCHMARK_PATH_CHOICES,
        help="paths to measure; all: both, and the optimized path under bfloat16 autocast (--precision bf16)",
    )
    parser.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        metavar="PART",
        help="parts checkpointed on the optimized path: cnn, enltb, scsi (default none; for memory: cnn enltb)",
    )
    parser.add_argument(
        "--allocator",
        default="reuse",
        choices=(*ALLOCATOR_PROFILE_CHOICES, "default"),
        help="allocator profile of the optimized path on the CPU: reuse (speed), release (memory) or default",
    )
    parser.add_argument("--no-channels-last", action="store_true", help="optimized path keeps the default layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile on the optimized path")
    parser.add_argument(
        "--activation-memory-budget",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --compile: share (0, 1] of the activations a training step keeps for backward; the rest is "
        "recomputed (less memory, more compute)",
    )
    parser.add_argument("--amp", choices=("bfloat16", "float16"), default=None, help="autocast on the optimized path")
    parser.add_argument(
        "--scsi-attention", choices=("tokens", "official"), default=None, help="override the model's SCSI attention"
    )
    parser.add_argument("--profile", action="store_true", help="also a torch.profiler breakdown per part")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the output check against plain float32")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (peak memory shared)")
    parser.add_argument(
        "--memory-limit-mb", type=float, default=None, help="cap each measuring process's address space (CPU)"
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="attention lengths")
    parser.add_argument("--dim", type=int, default=256, help="attention width")
    parser.add_argument("--exact-max-tokens", type=int, default=65536, help="longest exact-attention sequence")
    parser.add_argument(
        "--scsi-sizes", type=int, nargs="*", default=[224, 448], help="SCSI memory at these input sides (none: skip)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the full report as JSON")
    parser.add_argument("--markdown", type=Path, default=None, metavar="OUT", help="write the tables as Markdown")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from perspective_unet import bench

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.activation_memory_budget is not None and not args.compile:
        raise ValueError("--activation-memory-budget acts on compiled training steps only; add --compile.")
    isolate = not args.in_process
    if args.target == "attention":
        report = bench.benchmark_attention(
            args.tokens,
            dim=args.dim,
            device=args.device,
            runs=args.runs,
            warmup=args.warmup,
            exact_max_tokens=args.exact_max_tokens,
            isolate=isolate,
            log=log.info,
        )
        print(bench.attention_summary(report))
        if args.scsi_sizes:
            report["scsi"] = bench.benchmark_scsi_memory(
                args.scsi_sizes, device=args.device, isolate=isolate, log=log.info
            )
            print(bench.scsi_table(report["scsi"]["points"]))
    else:
        paths = bench.select_paths(
            args.path,
            args.device,
            gradient_checkpointing=args.checkpoint,
            allocator=None if args.allocator == "default" else args.allocator,
            compile=args.compile,
            activation_memory_budget=args.activation_memory_budget,
            amp=args.amp,
            channels_last=not args.no_channels_last,
        )
        report = bench.benchmark_model(
            args.model,
            modes=bench.MODES if "all" in args.mode else tuple(args.mode),
            paths=paths,
            img_size=args.img_size,
            batch_size=args.batch_size,
            train_batch_size=args.train_batch_size,
            volume_batch_size=args.volume_batch_size,
            volume_shape=args.volume_shape,
            device=args.device,
            runs=args.runs,
            warmup=args.warmup,
            rounds=args.rounds,
            isolate=isolate,
            fidelity=not args.no_fidelity,
            profile=args.profile,
            model_overrides={"scsi_attention": args.scsi_attention} if args.scsi_attention else {},
            memory_limit_mb=args.memory_limit_mb,
            log=log.info,
        )
        print(bench.model_summary(report))
    for path in bench.write_report(report, json_path=args.json, markdown_path=args.markdown):
        print(f"wrote {path}")
    return 0
