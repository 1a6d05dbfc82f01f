"""Feature heat maps: one map per stage on the image grid, ablated parts, the figure's size and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.engine.figures import feature_maps, feature_titles
from perspective_unet.viz import save_feature_figure
from perspective_unet.viz.figure import GAP_PX, HEADER_PX
from tests.viz.conftest import PANEL, pixels_of


def test_feature_maps_one_per_stage_on_the_image_grid():
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    image = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    for layer, count in (("bprb", 5), ("enltb", 3), ("scsi", 3)):
        maps = feature_maps(model, image, layer, img_size=(32, 32))
        assert len(maps) == count == len(feature_titles(model, layer))
        assert all(m.shape == (40, 36) and m.dtype == np.float32 and np.isfinite(m).all() for m in maps)
        assert all(m.min() >= 0 and m.max() > 0 for m in maps)
    l2 = feature_maps(model, image, "bprb", reduction="l2", img_size=(32, 32))
    mean_abs = feature_maps(model, image, "bprb", img_size=(32, 32))
    assert all((a >= b - 1e-5).all() for a, b in zip(l2, mean_abs))  # ||x||_2 >= mean |x| over channels
    assert feature_titles(model, "bprb")[-1] == "BPRB 5 (1/16)"
    model.train()
    again = feature_maps(model, image, "bprb", img_size=(32, 32))
    assert model.training  # the caller's mode is restored; the maps themselves come from eval mode
    assert all(np.array_equal(a, b) for a, b in zip(again, mean_abs))


def test_feature_maps_of_an_ablated_part_raise_a_clear_error():
    model = create_model("perspective_unet_tiny", num_classes=3, use_enltb=False)
    with pytest.raises(ValueError, match="without ENLTB.*bprb or scsi"):
        feature_maps(model, np.zeros((32, 32)), "enltb")
    model = create_model("perspective_unet_tiny", num_classes=3, use_scsi=False)
    with pytest.raises(ValueError, match="without SCSI"):
        feature_maps(model, np.zeros((32, 32)), "scsi")
    with pytest.raises(ValueError, match="layer must be one of"):
        feature_maps(model, np.zeros((32, 32)), "decoder")


def test_feature_figure_size_and_cli(tmp_path, tiny_dataset, checkpoint):
    image = np.random.default_rng(1).random((32, 48)).astype(np.float32)
    out = save_feature_figure(image, [image, image**2], tmp_path / "f.png", titles=["a", "b"], panel_size=PANEL)
    pixels = pixels_of(out)
    panel_w = round(PANEL * 48 / 32)
    assert pixels.shape[:2] == (HEADER_PX + PANEL + GAP_PX, GAP_PX + 3 * (panel_w + GAP_PX))

    out = tmp_path / "scsi.png"
    args = [
        "visualize",
        "features",
        "--checkpoint",
        str(checkpoint),
        "--layer",
        "scsi",
        "--slice",
        "2",
        "--image",
        str(tiny_dataset / "test_vol_h5" / "case0004.npy.h5"),
        "--panel-size",
        str(PANEL),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert pixels_of(out).shape[:2] == (HEADER_PX + PANEL + GAP_PX, GAP_PX + 4 * (PANEL + GAP_PX))


def test_feature_cli_names_the_ablation(tmp_path, tiny_dataset, capsys):
    model = create_model("perspective_unet_tiny", num_classes=3, use_enltb=False)
    ckpt = save_model(model, tmp_path / "no_enltb.pt", train_config={"img_size": [32, 32]})
    args = [
        "visualize",
        "features",
        "--checkpoint",
        str(ckpt),
        "--layer",
        "enltb",
        "-o",
        str(tmp_path / "x.png"),
        "--image",
        str(tiny_dataset / "test_vol_h5" / "case0004.npy.h5"),
    ]
    assert main(args) == 2
    assert "without ENLTB" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
