"""The overlay grid figure: its size, class colors and legend, the CLI, and prepared volumes with their labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from perspective_unet.cli import main
from perspective_unet.data.layouts import files
from perspective_unet.engine.figures import overlay_from_files
from perspective_unet.viz import (
    CLASS_COLORS,
    overlay,
    overlay_grid_size,
    save_overlay_grid,
    volumes,
)
from perspective_unet.viz.figure import GAP_PX, HEADER_PX, LEFT_PX
from tests.viz.conftest import PANEL, has_exact_color, pixels_of


def test_overlay_grid_has_the_documented_size_class_colors_and_legend(tmp_path, tiny_dataset):
    image, label, _ = files.load_h5(tiny_dataset / "test_vol_h5" / "case0004.npy.h5")
    prediction = np.where(label == 2, 2, 0).astype(np.uint8)
    out = save_overlay_grid(
        image,
        tmp_path / "grid.png",
        label=label,
        prediction=prediction,
        slices=[1, 3],
        class_names=["background", "square", "disc"],
        panel_size=PANEL,
        value_range=(0.0, 1.0),
    )
    pixels = pixels_of(out)
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size(image.shape, 2, 3, 3, PANEL)
    # The legend shows each class in its exact color (panels only show blends of color and gray).
    assert has_exact_color(pixels, CLASS_COLORS[1]) and has_exact_color(pixels, CLASS_COLORS[2])
    # A pixel inside the square of slice 3, in the label column, has the square's blended color.
    scale = PANEL // image.shape[1]
    ys, xs = np.nonzero(label[3] == 1)
    y, x = int(np.median(ys)), int(np.median(xs))
    assert label[3, y, x] == 1
    top = HEADER_PX + 1 * (PANEL + GAP_PX) + y * scale + scale // 2
    left = LEFT_PX + 1 * (PANEL + GAP_PX) + x * scale + scale // 2
    expected = overlay(image[3], label[3], 0.45, (0.0, 1.0))[y, x]
    np.testing.assert_allclose(pixels[top, left].astype(int), expected.astype(int), atol=2)
    assert pixels[top, left][0] > pixels[top, left][2]  # reddish: the color of class 1
    # The prediction column has no square there.
    left_pred = LEFT_PX + 2 * (PANEL + GAP_PX) + x * scale + scale // 2
    gray = overlay(image[3], None, value_range=(0.0, 1.0))[y, x]
    np.testing.assert_allclose(pixels[top, left_pred].astype(int), gray.astype(int), atol=2)


def test_overlay_of_a_prepared_volume_shows_its_own_label_read_once(tmp_path, tiny_dataset, monkeypatch):
    path = tiny_dataset / "test_vol_h5" / "case0004.npy.h5"
    image, label, _ = files.load_h5(path)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return files.load_h5(*args, **kwargs)

    monkeypatch.setattr(volumes, "load_h5", spy)
    out = overlay_from_files(path, tmp_path / "own_label.png", slices=[1, 3], panel_size=PANEL)
    assert len(calls) == 1  # the data layer's reader, once, for the image and its label together
    pixels = pixels_of(out)
    # Columns image and label (no prediction); the legend names the dataset's two classes in their exact colors.
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size(image.shape, 2, 2, 3, PANEL)
    assert has_exact_color(pixels, CLASS_COLORS[1]) and has_exact_color(pixels, CLASS_COLORS[2])
    scale = PANEL // image.shape[1]
    ys, xs = np.nonzero(label[3] == 2)
    y, x = int(np.median(ys)), int(np.median(xs))
    assert label[3, y, x] == 2
    top = HEADER_PX + 1 * (PANEL + GAP_PX) + y * scale + scale // 2
    left = LEFT_PX + 1 * (PANEL + GAP_PX) + x * scale + scale // 2
    expected = overlay(image[3], label[3], 0.45, (0.0, 1.0))[y, x]
    np.testing.assert_allclose(pixels[top, left].astype(int), expected.astype(int), atol=2)
    assert pixels[top, left][1] > pixels[top, left][2]  # greenish: the color of class 2


def test_overlay_cli_on_a_prepared_volume_with_a_checkpoint(tmp_path, tiny_dataset, checkpoint, capsys):
    out = tmp_path / "qualitative.png"
    args = [
        "visualize",
        "overlay",
        "--image",
        str(tiny_dataset / "test_vol_h5" / "case0005.npy.h5"),
        "--checkpoint",
        str(checkpoint),
        "--num-slices",
        "2",
        "--panel-size",
        str(PANEL),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    pixels = pixels_of(out)
    # Columns: image, label (from the h5 file), prediction; a legend with the checkpoint's two classes.
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size((32, 32), 2, 3, 3, PANEL)
    assert has_exact_color(pixels, CLASS_COLORS[1]) and has_exact_color(pixels, CLASS_COLORS[2])
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
    args = [
        "visualize",
        "overlay",
        "--image",
        str(tmp_path / "ct.nii.gz"),
        "--label",
        str(tmp_path / "gt.nii.gz"),
        "--prediction",
        str(tmp_path / "pred.nii.gz"),
        "--slices",
        "2",
        "4",
        "--window",
        "-125",
        "275",
        "--class-names",
        "bg",
        "a",
        "b",
        "c",
        "kidney",
        "--panel-size",
        str(PANEL),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    pixels = pixels_of(out)
    # The stored i axis runs posterior and j to the left: canonical (SPL) slices are 40 x 24 (H x W), and the panels
    # keep that aspect.
    assert (pixels.shape[1], pixels.shape[0]) == overlay_grid_size((40, 24), 2, 3, 5, PANEL)
    assert has_exact_color(pixels, CLASS_COLORS[4])


def test_overlay_errors_are_clear(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(tmp_path / "gt.nii.gz"))
    base = ["visualize", "overlay", "--image", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "f.png")]
    assert main([*base, "--label", str(tmp_path / "gt.nii.gz")]) == 2
    assert "same voxel grid" in capsys.readouterr().err
    assert main([*base, "--slices", "7"]) == 2
    assert "outside 0..2" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()
