"""DistributedDataParallel through torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_torchrun_two_processes_on_cpu(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "perspective_unet",
        "train",
        "--data",
        str(tiny_dataset),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--model",
        "perspective_unet_tiny",
        "--img-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--epochs",
        "2",
        "--val-every",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # written once, by rank 0 alone
    assert all(r["val_mean_dice"] != "" for r in rows)
    state = torch.load(out / "last.pt", weights_only=True)
    # 12 slices, 2 per process per step: 3 steps per epoch, so 6 in all.
    assert state["iteration"] == 6
    assert not any(k.startswith("module.") for k in state["model"])
