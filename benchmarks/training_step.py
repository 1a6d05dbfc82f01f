"""The default training step against the released code's, each path in a process of its own, rounds alternating.

The bar (docs/performance.md, "The training step"): the training path that ``perspective-unet train`` runs by default
(eager, fast dropout, the oneDNN route where the processor has AVX-512) takes at most 1/1.3 of the released code's
step time at at most 0.8x its peak memory, measured in one run. The released code's step is the ``baseline`` path of
:mod:`perspective_unet.bench`: the same network and weights computed as the released implementation computes them
(``nn.Linear`` through MKL, ``nn.Dropout``, SDPA with its own dropout, BatchNorm layers, NCHW), with the released SCSI
attention (``scsi_attention="released"``) so that both paths compute one function. The default path is also measured
with the oneDNN route off, which is what it runs where the route is off or gives nothing (processors without AVX-512;
Intel processors whose MKL already runs AVX-512 kernels). ``--extras`` adds channels-last and the ``reuse`` allocator
profile, which are not defaults of training.

Usage:
    python benchmarks/training_step.py [--rounds 2] [--steps 3] [--attention released|tokens] [--extras]
        [--model perspective_unet] [--json OUT.json [--overwrite]]

Figures are medians over the rounds of each path's median step; peak memory is the process's resident high-water
mark. On a shared machine, read the ratios of one run rather than the absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from perspective_unet.bench.isolate import run_isolated
from perspective_unet.bench.machine import ALLOCATOR_PROFILES, machine_info
from perspective_unet.bench.settings import PathSettings, baseline_settings
from perspective_unet.models.ops import get_onednn_linear
from perspective_unet.models.registry import list_models


def paths(extras: bool) -> list[PathSettings]:
    """The released code's path, the default training path with the oneDNN route as this processor has it and off."""
    route = get_onednn_linear() == "always"
    default = PathSettings(name="default", fast_dropout=True, lean_concatenation=True, onednn_linear=route)
    chosen = [
        dataclasses.replace(baseline_settings(), name="released"),
        default,
        dataclasses.replace(default, name="default, oneDNN route off", onednn_linear=False),
    ]
    if extras:
        chosen += [
            dataclasses.replace(default, name="default + channels-last", channels_last=True),
            dataclasses.replace(default, name="default + reuse allocator", allocator="reuse"),
        ]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the paths (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process after one warm-up (default: 3)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--model", default="perspective_unet", help="registered model (default: the paper's)")
    parser.add_argument("--attention", choices=("released", "tokens"), default="released", help="SCSI attention")
    parser.add_argument("--extras", action="store_true", help="also channels-last and the reuse allocator")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.json and Path(args.json).exists() and not args.overwrite:
        parser.error(f"{args.json} exists; pass --overwrite to replace it, or choose another --json")
    if args.model not in list_models():
        parser.error(f"--model {args.model!r} is not a registered model; choose one of {', '.join(list_models())}")

    chosen = paths(args.extras)
    steps: dict[str, list[float]] = {p.name: [] for p in chosen}
    peaks: dict[str, list[float]] = {p.name: [] for p in chosen}
    for round_index in range(args.rounds):
        for settings in chosen:
            result = run_isolated(
                "train",
                {
                    "model_name": args.model,
                    "batch_size": args.batch_size,
                    "settings": dataclasses.asdict(settings),
                    "runs": args.steps,
                    "model_overrides": {"scsi_attention": args.attention},
                },
                env=ALLOCATOR_PROFILES.get(settings.allocator or "", {}),
            )
            if "error" in result:
                print(f"{settings.name}: {result['error']}", file=sys.stderr)
                return 1
            steps[settings.name].append(result["timing"]["median_s"])
            peaks[settings.name].append(result["peak_memory_mb"])
            print(
                f"round {round_index + 1} {settings.name}: {result['timing']['median_s']:.2f} s, "
                f"{result['peak_memory_mb']:.0f} MB",
                flush=True,
            )

    info = machine_info()
    print(
        f"\n{info.cpu_model}, {info.cores} logical CPUs, capabilities {', '.join(info.cpu_capabilities) or 'none'}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, batch {args.batch_size}, "
        f"224 x 224, SCSI attention {args.attention!r}\n"
    )
    released_s, released_mb = statistics.median(steps["released"]), statistics.median(peaks["released"])
    print("| path | step (s) | speed-up | peak memory (MB) | memory x |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name in steps:
        step_s, peak_mb = statistics.median(steps[name]), statistics.median(peaks[name])
        rows.append({"path": name, "step_s": step_s, "speedup": released_s / step_s, "peak_mb": peak_mb})
        print(f"| {name} | {step_s:.2f} | {released_s / step_s:.2f} | {peak_mb:.0f} | {peak_mb / released_mb:.2f} |")
    if args.json:
        # Written whole and then moved into place, so an interrupted run leaves no half-written file.
        target = Path(args.json)
        partial = target.with_name(target.name + ".partial")
        machine = dataclasses.asdict(info)
        payload = {"machine": machine, "args": vars(args), "rows": rows, "steps": steps, "peaks": peaks}
        partial.write_text(json.dumps(payload, indent=1))
        partial.replace(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
