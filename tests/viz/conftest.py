"""Fixtures of the figure tests: the engine tests' tiny prepared dataset, a tiny checkpoint, and pixel helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perspective_unet import create_model, save_model
from tests.engine.conftest import write_tiny_dataset

# Panel height of the figures drawn in these tests: small keeps them fast, and a multiple of 32 keeps pixels whole.
PANEL = 64


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    dataset = {
        "class_names": ["background", "square", "disc"],
        "modality": "CT",
        "intensity": {"kind": "ct_window", "window": [-125.0, 275.0]},
    }
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_model(model, path, train_config={"img_size": [32, 32]}, dataset=dataset)


def pixels_of(path) -> np.ndarray:
    """The (H, W, 3) RGB pixels of a figure file."""
    return np.asarray(Image.open(path).convert("RGB"))


def has_exact_color(pixels: np.ndarray, color: np.ndarray) -> bool:
    """Whether some pixel has exactly this color (panels only show blends; the legend shows the class colors)."""
    return bool((pixels == color).all(axis=-1).any())
