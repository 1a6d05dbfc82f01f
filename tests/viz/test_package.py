"""The viz package's place among the layers."""

from __future__ import annotations

from pathlib import Path

import perspective_unet

SRC = Path(perspective_unet.__file__).parent


def test_data_and_models_do_not_import_viz():
    for layer in ("data", "models"):
        for path in (SRC / layer).rglob("*.py"):
            assert "perspective_unet.viz" not in path.read_text(), f"{path} imports the viz package"


def test_viz_reads_h5_only_through_the_data_layer():
    for path in (SRC / "viz").rglob("*.py"):
        assert "h5py" not in path.read_text(), f"{path} reads h5 files itself"
