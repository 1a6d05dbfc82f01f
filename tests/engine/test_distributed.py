"""DistributedDataParallel through torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch

from perspective_unet.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _tiny_training(data, out) -> list[str]:
    """The training each process of torchrun runs: two epochs of the tiny model, validated after each."""
    return [
        *("-m", "perspective_unet", "train", "--data", str(data), "-o", str(out), "--device", "cpu"),
        *("--model", "perspective_unet_tiny", "--img-size", "32", "32", "--batch-size", "2", "--num-workers", "0"),
        *("--epochs", "2", "--val-every", "1"),
    ]


def test_torchrun_two_processes_on_cpu(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *_tiny_training(tiny_dataset, out),
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_two_nodes_over_localhost_then_one_node_resumes(tiny_dataset, tmp_path):
    """One run across two "nodes" (two torchrun agents of one process each, meeting through a c10d rendezvous on
    127.0.0.1), as the sbatch script of docs/cluster.md starts it on two machines; then resumed on one."""
    out = tmp_path / "two_nodes"
    node = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--rdzv-id",
        "two-nodes",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        "0",
        *_tiny_training(tiny_dataset, out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for _ in range(2)]
    try:
        logs = [n.communicate(timeout=300)[0].decode("utf-8", "replace") for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    written = sorted(p.name for p in out.iterdir() if p.suffix == ".pt" or p.name.startswith("."))
    assert written == ["best.pt", "last.pt"], "one checkpoint (and its best), written by one process, no leftovers"
    state = torch.load(out / "last.pt", weights_only=True)
    # 12 slices, 2 per process per step over 2 nodes: 3 steps per epoch.
    assert (state["epoch"], state["iteration"]) == (2, 6)
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    state = torch.load(out / "last.pt", weights_only=True)
    # One node alone takes 2 slices per step: 6 steps for the third epoch.
    assert (state["epoch"], state["iteration"]) == (3, 12)
