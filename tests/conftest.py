"""Shared test settings: small thread counts so the suite behaves the same on any machine."""

from __future__ import annotations

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
