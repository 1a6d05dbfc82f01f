"""Shared test settings."""

from __future__ import annotations

import os

import torch

# Under pytest-xdist every worker is a process of its own: one thread each keeps the cores from being oversubscribed,
# which makes OpenMP's spinning threads orders of magnitude slower. A single process uses up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
