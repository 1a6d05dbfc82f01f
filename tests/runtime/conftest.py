"""Models, graphs and scans for the light runtime's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.export.onnx import export_onnx

SPACING_PLAN = {"protocol": "spacing", "patch_size": [32, 32], "spacing": [1.0, 1.0], "intensity": {"kind": "unit"}}
DATASET = {
    "name": "tiny",
    "class_names": ["background", "square", "disc"],
    "modality": "CT",
    "normalization": "synthetic",
    "intensity": {"kind": "ct_window", "window": [-125.0, 275.0]},
    "orientation": "SPL",
    "license": "CC0",
}


def tiny_checkpoint(path: Path, plan: dict, *, in_channels: int = 1, seed: int = 0) -> Path:
    """A tiny model whose head makes every class win somewhere (so label maps can differ), saved with ``plan``."""
    torch.manual_seed(seed)
    model = create_model("perspective_unet_tiny", num_classes=3, in_channels=in_channels)
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.weight.mul_(1000.0)
    return save_model(model, path, plan=plan, dataset=DATASET, train_config={"model": "perspective_unet_tiny"})


def exported(folder: Path, plan: dict = SPACING_PLAN, in_channels: int = 1) -> tuple[Path, Path]:
    """(checkpoint, exported graph with preprocessing.json and labels.json beside it) in ``folder``."""
    checkpoint = tiny_checkpoint(folder / "best.pt", plan, in_channels=in_channels)
    graph = folder / "onnx" / "model.onnx"
    export_onnx(checkpoint, graph, check_shapes=[(1, in_channels, 32, 32)])
    return checkpoint, graph


@pytest.fixture(scope="module")
def spacing_model(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint of the spacing protocol and its graph, exported once per module (tests must not change them)."""
    return exported(tmp_path_factory.mktemp("spacing_model"))


@pytest.fixture
def graph_copy(spacing_model, tmp_path) -> Path:
    """A copy of the spacing model's graph folder that a test may change."""
    folder = tmp_path / "copy"
    shutil.copytree(spacing_model[1].parent, folder)
    return folder / "model.onnx"


@pytest.fixture
def scan(tmp_path) -> Path:
    """A CT-like NIfTI volume of odd sides in an oblique-free but flipped orientation."""
    volume = np.random.default_rng(0).uniform(-150, 300, (44, 37, 5)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([-0.9, 0.8, 3.0, 1.0])), str(path))
    return path
