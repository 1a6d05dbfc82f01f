"""Figures: the overlay grid (size, class colours, legend) and the feature heat maps (panels, ablations)."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.engine.visualize import (
    CLASS_COLOURS,
    GAP_PX,
    HEADER_PX,
    LEFT_PX,
    choose_slices,
    feature_maps,
    feature_titles,
    overlay,
    overlay_grid_size,
    save_feature_figure,
    save_overlay_grid,
)

PANEL = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    dataset = {"class_names": ["background", "square", "disc"], "modality": "CT",
               "intensity": {"kind": "ct_window", "window": [-125.0, 275.0]}}
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_model(model, path, train_config={"img_size": [32, 32]}, dataset=dataset)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _has_exact_colour(pixels: np.ndarray, colour: np.ndarray) -> bool:
    return bool((pixels == colour).all(axis=-1).any())


def test_choose_slices_prefers_foreground_and_spreads():
    labels = np.zeros((30, 8, 8), dtype=np.uint8)
    labels[10:13, :6] = 1  # the largest organ, on three neighbouring slices
    labels[25, :2] = 2
    chosen = choose_slices(labels, 2)
    assert len(chosen) == 2 and chosen[0] in (10, 11, 12)
    assert chosen == sorted(chosen)
    assert choose_slices(np.zeros((9, 4, 4)), 3) == [1, 4, 7]
    assert choose_slices(labels, 50) == sorted(set(choose_slices(labels, 50)))
    assert len(choose_slices(labels, 50)) == 30


def test_overlay_grid_has_the_documented_size_class_colours_and_legend(tmp_path, tiny_dataset):
    with h5py.File(tiny_dataset / "test_vol_h5" / "case0004.npy.h5", "r") as f:
        image, label = np.asarray(f["image"]), np.asarray(f["label"])
    prediction = np.where(label == 2, 2, 0).astype(np.uint8)
    out = save_overlay_grid(image, tmp_path / "grid.png", label=label, prediction=prediction, slices=[1, 3],
                            class_names=["background", "square", "disc"], panel_size=PANEL, value_range=(0.0, 1.0))
    pixels = _pixels(out)
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size(image.shape, 2, 3, 3, PANEL)
    # The legend shows each class in its exact colour (panels only show blends of colour and gray).
    assert _has_exact_colour(pixels, CLASS_COLOURS[1]) and _has_exact_colour(pixels, CLASS_COLOURS[2])
    # A pixel inside the square of slice 3, in the label column, has the square's blended colour.
    scale = PANEL // image.shape[1]
    ys, xs = np.nonzero(label[3] == 1)
    y, x = int(np.median(ys)), int(np.median(xs))
    assert label[3, y, x] == 1
    top = HEADER_PX + 1 * (PANEL + GAP_PX) + y * scale + scale // 2
    left = LEFT_PX + 1 * (PANEL + GAP_PX) + x * scale + scale // 2
    expected = overlay(image[3], label[3], 0.45, (0.0, 1.0))[y, x]
    np.testing.assert_allclose(pixels[top, left].astype(int), expected.astype(int), atol=2)
    assert pixels[top, left][0] > pixels[top, left][2]  # reddish: the colour of class 1
    # The prediction column has no square there.
    left_pred = LEFT_PX + 2 * (PANEL + GAP_PX) + x * scale + scale // 2
    gray = overlay(image[3], None, value_range=(0.0, 1.0))[y, x]
    np.testing.assert_allclose(pixels[top, left_pred].astype(int), gray.astype(int), atol=2)


def test_overlay_cli_on_a_prepared_volume_with_a_checkpoint(tmp_path, tiny_dataset, checkpoint, capsys):
    out = tmp_path / "qualitative.png"
    args = ["visualize", "overlay", "--image", str(tiny_dataset / "test_vol_h5" / "case0005.npy.h5"),
            "--checkpoint", str(checkpoint), "--num-slices", "2", "--panel-size", str(PANEL), "-o", str(out)]
    assert main(args) == 0
    pixels = _pixels(out)
    # Columns: image, label (from the h5 file), prediction; a legend with the checkpoint's two classes.
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size((32, 32), 2, 3, 3, PANEL)
    assert _has_exact_colour(pixels, CLASS_COLOURS[1]) and _has_exact_colour(pixels, CLASS_COLOURS[2])
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_overlay_cli_with_nifti_files_and_explicit_slices(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-300, 300, (40, 24, 6)).astype(np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[5:15, 4:12, 2] = 4
    affine = np.array([[0, -0.8, 0, 0], [-0.8, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0]])
    for name, data in (("ct.nii.gz", hu), ("gt.nii.gz", labels), ("pred.nii.gz", labels)):
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
    out = tmp_path / "fig.png"
    args = ["visualize", "overlay", "--image", str(tmp_path / "ct.nii.gz"), "--label", str(tmp_path / "gt.nii.gz"),
            "--prediction", str(tmp_path / "pred.nii.gz"), "--slices", "2", "4", "--window", "-125", "275",
            "--class-names", "bg", "a", "b", "c", "kidney", "--panel-size", str(PANEL), "-o", str(out)]
    assert main(args) == 0
    pixels = _pixels(out)
    # The stored i axis runs posterior and j to the left: canonical (SPL) slices are 40 x 24 (H x W), and the panels
    # keep that aspect.
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size((40, 24), 2, 3, 5, PANEL)
    assert _has_exact_colour(pixels, CLASS_COLOURS[4])


def test_overlay_errors_are_clear(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(tmp_path / "gt.nii.gz"))
    base = ["visualize", "overlay", "--image", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "f.png")]
    assert main([*base, "--label", str(tmp_path / "gt.nii.gz")]) == 2
    assert "same voxel grid" in capsys.readouterr().err
    assert main([*base, "--slices", "7"]) == 2
    assert "outside 0..2" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


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
    out = save_feature_figure(image, [image, image ** 2], tmp_path / "f.png", titles=["a", "b"], panel_size=PANEL)
    pixels = _pixels(out)
    panel_w = round(PANEL * 48 / 32)
    assert pixels.shape[:2] == (HEADER_PX + PANEL + GAP_PX, GAP_PX + 3 * (panel_w + GAP_PX))

    out = tmp_path / "scsi.png"
    args = ["visualize", "features", "--checkpoint", str(checkpoint), "--layer", "scsi", "--slice", "2",
            "--image", str(tiny_dataset / "test_vol_h5" / "case0004.npy.h5"), "--panel-size", str(PANEL),
            "-o", str(out)]
    assert main(args) == 0
    assert _pixels(out).shape[:2] == (HEADER_PX + PANEL + GAP_PX, GAP_PX + 4 * (PANEL + GAP_PX))


def test_feature_cli_names_the_ablation(tmp_path, tiny_dataset, capsys):
    model = create_model("perspective_unet_tiny", num_classes=3, use_enltb=False)
    ckpt = save_model(model, tmp_path / "no_enltb.pt", train_config={"img_size": [32, 32]})
    args = ["visualize", "features", "--checkpoint", str(ckpt), "--layer", "enltb", "-o", str(tmp_path / "x.png"),
            "--image", str(tiny_dataset / "test_vol_h5" / "case0004.npy.h5")]
    assert main(args) == 2
    assert "without ENLTB" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
