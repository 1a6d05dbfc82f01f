"""Cost per sample of the appearance augmentation for unseen domains, on one CPU thread (a data-loader worker's share).

Each operation is timed forced on (probability 1), and the whole pipeline with the switch on and the default
probabilities, on synthetic samples of the demo's patch (1 x 112 x 128), a 2.5D patch (3 x 112 x 128) and the paper
protocol's slice (1 x 224 x 224) with eight labeled structures: the median over rounds of the mean processor time
per call (the process's CPU time, which other jobs on a shared machine do not inflate as they do wall time; both are
written).

Usage: python benchmarks/domain_augmentation_cost.py [--rounds 5] [--calls 100] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from perspective_unet.config.augmentation import SpacingAugmentationConfig
from perspective_unet.data.domain_augmentation import RANGE_KEY, build_domain_augmentation

SHAPES = {
    "demo patch 1x112x128": (1, 112, 128),
    "2.5D patch 3x112x128": (3, 112, 128),
    "paper 1x224x224": (1, 224, 224),
}


def sample(shape: tuple[int, int, int], seed: int = 0) -> dict:
    """A z-scored CT-like image and a label map of eight blob-shaped structures."""
    rng = np.random.default_rng(seed)
    height, width = shape[1:]
    rows, cols = np.mgrid[:height, :width]
    label = np.zeros((height, width), np.float32)
    for c in range(1, 9):
        r, q, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 20)
        label[(rows - r) ** 2 + (cols - q) ** 2 < radius**2] = c
    image = rng.normal(0, 1, shape).astype(np.float32) + label / 4
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None], RANGE_KEY: (-2.5, 12.0)}


def time_per_call(transform: Callable[[dict], dict], data: dict, rounds: int, calls: int) -> tuple[float, float]:
    """Median over ``rounds`` of the mean processor seconds and wall seconds per call."""
    for _ in range(3):
        transform(dict(data))
    cpu, wall = [], []
    for _ in range(rounds):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            transform(dict(data))
        cpu.append((time.process_time() - start_cpu) / calls)
        wall.append((time.perf_counter() - start_wall) / calls)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defaults = SpacingAugmentationConfig(domain_generalization=True)
    results: dict[str, dict[str, dict[str, float]]] = {"cpu_ms_per_sample": {}, "wall_ms_per_sample": {}}
    for name, shape in SHAPES.items():
        data = sample(shape)
        pipeline = build_domain_augmentation(defaults).set_random_state(0)
        row = {"pipeline at the default probabilities": time_per_call(pipeline, data, args.rounds, args.calls)}
        for operation in build_domain_augmentation(defaults).set_random_state(0).transforms:
            operation.prob = 1.0
            row[type(operation).__name__] = time_per_call(operation, data, args.rounds, args.calls)
        for index, kind in enumerate(results):
            results[kind][name] = {key: round(seconds[index] * 1e3, 3) for key, seconds in row.items()}
        print(name, "  ".join(f"{key}: {ms:.2f} ms" for key, ms in results["cpu_ms_per_sample"][name].items()))
    if args.output is not None:
        machine = {"processor": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1}
        args.output.write_text(json.dumps({"machine": machine, **results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
