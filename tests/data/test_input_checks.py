"""Checks on raw input: mask encodings, empty labels, option ranges, DICOM series, tiny images, SIGTERM in prepare."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from PIL import Image

from perspective_unet.cli import main
from perspective_unet.data import prepare_folder_2d, prepare_nnunet, read_image
from perspective_unet.data.dicom import preserved_locale
from perspective_unet.errors import InputError
from tests.data.conftest import (
    leftovers,
    save_nifti,
    write_acdc_raw,
    write_nnunet_raw,
    write_pictures,
    write_synapse_raw,
)

NNUNET_AFFINE = np.diag([0.9, 0.9, 3.0, 1.0])
REPO_ROOT = Path(__file__).resolve().parents[2]


def _write_mask(path: Path, values: tuple[int, ...], size: tuple[int, int] = (18, 22), seed: int = 0) -> np.ndarray:
    mask = np.random.default_rng(seed).choice(list(values), size=size).astype(np.uint8)
    Image.fromarray(mask).save(path)
    return mask


# ---------------------------------------------------------------- 2D mask encodings


def test_masks_mixing_0_1_and_0_255_are_refused_naming_one_of_each(tmp_path: Path, capsys) -> None:
    write_pictures(tmp_path / "raw" / "images", tmp_path / "raw" / "masks", count=4, mask_values=(0, 1))
    _write_mask(tmp_path / "raw" / "masks" / "img2.png", (0, 255))
    with pytest.raises(InputError, match=r"img2\.png holds only 0 and 255.*img0\.png holds class ids") as caught:
        prepare_folder_2d(tmp_path / "raw" / "images", tmp_path / "raw" / "masks", tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perspective-unet prepare: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_masks_mixing_0_255_and_several_class_ids_are_refused(tmp_path: Path) -> None:
    write_pictures(tmp_path / "images", tmp_path / "masks", count=3, mask_values=(0, 255))
    _write_mask(tmp_path / "masks" / "img1.png", (0, 1, 2, 3))
    with pytest.raises(InputError, match=r"img0\.png holds only 0 and 255.*img1\.png holds class ids \[0, 1, 2, 3\]"):
        prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out")


def test_binary_255_rule_holds_with_empty_and_full_masks(tmp_path: Path) -> None:
    arrays = write_pictures(tmp_path / "images", tmp_path / "masks", count=5, mask_values=(0, 255))
    arrays["img1"] = (arrays["img1"][0], _write_mask(tmp_path / "masks" / "img1.png", (0,)))
    arrays["img3"] = (arrays["img3"][0], _write_mask(tmp_path / "masks" / "img3.png", (255,)))
    out = prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out", val_fraction=0, test_fraction=0)
    info = json.loads((out / "dataset.json").read_text())
    assert info["class_names"] == ["background", "class_1"]
    for case, (_, mask) in arrays.items():
        with np.load(out / "train_npz" / f"{case}_slice000.npz") as data:
            assert np.array_equal(data["label"], (mask == 255).astype(np.uint8))


def test_nnunet_png_dataset_mixing_encodings_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    arrays = write_pictures(raw / "imagesTr", raw / "labelsTr", count=4, mask_values=(0, 1))
    for case in arrays:
        (raw / "imagesTr" / f"{case}.png").rename(raw / "imagesTr" / f"{case}_0000.png")
    _write_mask(raw / "labelsTr" / "img3.png", (0, 255))
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "photo"},
                "labels": {"background": 0, "a": 1},
                "file_ending": ".png",
            }
        )
    )
    with pytest.raises(InputError, match=r"img3\.png holds only 0 and 255.*img0\.png holds class ids"):
        prepare_nnunet(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_masks_are_refused_naming_the_file(tmp_path: Path, suffix: str) -> None:
    write_pictures(tmp_path / "images", tmp_path / "masks", count=3, mask_values=(0, 255))
    mask = np.asarray(Image.open(tmp_path / "masks" / "img1.png"))
    (tmp_path / "masks" / "img1.png").unlink()
    Image.fromarray(mask).save(tmp_path / "masks" / f"img1{suffix}", quality=100)
    with pytest.raises(InputError, match=rf"img1\{suffix} .*JPEG.*PNG"):
        prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- datasets without foreground


def test_nnunet_3d_dataset_without_foreground_warns_and_is_prepared(tmp_path: Path, caplog) -> None:
    arrays = write_nnunet_raw(tmp_path / "raw", num_cases=4)
    for case, (_, label) in arrays.items():
        save_nifti(tmp_path / "raw" / "labelsTr" / f"{case}.nii.gz", np.zeros_like(label), NNUNET_AFFINE)
    with caplog.at_level(logging.WARNING):
        out = prepare_nnunet(tmp_path / "raw", tmp_path / "out", ct_window_hu=(-125, 275))
    assert (out / "dataset.json").is_file()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "background" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "raw") in warnings[0].getMessage()


def test_nnunet_3d_dataset_with_foreground_does_not_warn(tmp_path: Path, caplog) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=4)
    with caplog.at_level(logging.WARNING):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out", ct_window_hu=(-125, 275))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_pictures_without_foreground_warn_and_are_prepared(tmp_path: Path, caplog) -> None:
    write_pictures(tmp_path / "raw" / "images", tmp_path / "raw" / "masks", count=4, mask_values=(0,))
    with caplog.at_level(logging.WARNING):
        out = prepare_nnunet(tmp_path / "raw", tmp_path / "out")
    assert json.loads((out / "dataset.json").read_text())["class_names"] == ["background", "class_1"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "background" in r.getMessage()]
    assert len(warnings) == 1 and "raw" in warnings[0].getMessage()


def test_synapse_and_acdc_without_foreground_warn_through_the_cli(tmp_path: Path, caplog) -> None:
    arrays = write_synapse_raw(tmp_path / "syn", cases=(5, 1), shape=(8, 8, 3))
    for number, (_, label) in arrays.items():
        save_nifti(tmp_path / "syn" / "label" / f"label{number:04d}.nii.gz", np.zeros_like(label))
    write_acdc_raw(tmp_path / "acdc")
    for label_path in (tmp_path / "acdc").rglob("*_gt.nii.gz"):
        save_nifti(label_path, np.zeros((14, 12, 4), np.uint8), np.diag([1.5, 1.5, 10.0, 1.0]))
    for kind in ("syn", "acdc"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            command = "synapse" if kind == "syn" else "acdc"
            assert main(["prepare", command, "-i", str(tmp_path / kind), "-o", str(tmp_path / f"{kind}_out")]) == 0
        warnings = [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "background" in r.getMessage()
        ]
        assert len(warnings) == 1 and str(tmp_path / kind) in warnings[0]


# ---------------------------------------------------------------- option ranges


@pytest.mark.parametrize(
    ("option", "values"),
    [
        ("--percentiles", ["99", "1"]),
        ("--percentiles", ["50", "50"]),
        ("--percentiles", ["-1", "99"]),
        ("--percentiles", ["1", "101"]),
        ("--ct-window", ["200", "-100"]),
        ("--ct-window", ["100", "100"]),
        ("--ct-window", ["nan", "100"]),
    ],
)
def test_reversed_or_out_of_range_options_are_refused(tmp_path: Path, capsys, option: str, values: list[str]) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=3)
    argv = ["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out"), option, *values]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"perspective-unet prepare: error: {option}") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_library_refuses_reversed_percentiles_naming_the_argument(tmp_path: Path) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=3, modality="MR")
    with pytest.raises(InputError, match="percentiles"):
        prepare_nnunet(tmp_path / "raw", tmp_path / "out", percentiles=(99.0, 1.0))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- DICOM series


def _write_series(
    folder: Path, positions: list[float], uid: str, prefix: str = "s", description: str | None = None, value: int = 0
) -> None:
    """One DICOM file per slice position (mm along z), all of series ``uid``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = SimpleITK.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise every file gets its own series UID
    with preserved_locale():
        for number, z in enumerate(positions):
            image = SimpleITK.GetImageFromArray(np.full((6, 5), value + number, dtype=np.int16))
            image.SetSpacing((0.5, 0.6))
            tags = {
                "0008|0060": "CT",
                "0020|000d": "1.2.3",
                "0020|000e": uid,
                "0020|0013": str(number + 1),
                "0020|0032": f"0\\0\\{z}",
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": "0.6\\0.5",
            }
            if description:
                tags["0008|103e"] = description
            for tag, text in tags.items():
                image.SetMetaData(tag, text)
            writer.SetFileName(str(folder / f"{prefix}{number:02d}.dcm"))
            writer.Execute(image)


def test_folder_with_two_dicom_series_asks_which_one(tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    _write_series(folder, [0.0, 2.0, 4.0, 6.0], "1.2.3.4.1", "a", description="axial 2mm")
    _write_series(folder, [0.0, 3.0, 6.0], "1.2.3.4.2", "b", value=100)
    with pytest.raises(InputError) as caught:
        read_image(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and "--series" in message
    assert "1.2.3.4.1" in message and "axial 2mm" in message and "4 slices" in message
    assert "1.2.3.4.2" in message and "3 slices" in message

    array, meta = read_image(folder, series="1.2.3.4.2")
    assert array.shape == (5, 6, 3) and meta["spacing"] == pytest.approx((0.5, 0.6, 3.0))
    assert int(array[0, 0, 0]) == 100 and meta["series"] == "1.2.3.4.2"
    assert read_image(folder, series="1.2.3.4.1")[0].shape == (5, 6, 4)

    with pytest.raises(InputError, match=r"no DICOM series '9\.9'.*1\.2\.3\.4\.1.*1\.2\.3\.4\.2"):
        read_image(folder, series="9.9")


def test_one_series_needs_no_choice_and_a_file_takes_no_series(tmp_path: Path) -> None:
    _write_series(tmp_path / "dicom", [0.0, 2.0, 4.0], "1.2.3.4.1")
    assert read_image(tmp_path / "dicom")[0].shape == (5, 6, 3)
    assert read_image(tmp_path / "dicom", series="1.2.3.4.1")[1]["series"] == "1.2.3.4.1"
    path = save_nifti(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.int16))
    with pytest.raises(InputError, match=r"a\.nii\.gz is not a folder"):
        read_image(path, series="1.2.3.4.1")


def test_dicom_series_with_a_missing_slice_is_refused_naming_both_sides(tmp_path: Path) -> None:
    _write_series(tmp_path / "dicom", [0.0, 2.0, 4.0, 8.0, 10.0], "1.2.3.4.1")  # the slice at 6 mm is missing
    with pytest.raises(InputError, match=r"gap of 4 mm between s02\.dcm and s03\.dcm") as caught:
        read_image(tmp_path / "dicom")
    assert "\n" not in str(caught.value)


def test_dicom_series_with_a_duplicated_position_is_refused(tmp_path: Path) -> None:
    _write_series(tmp_path / "dicom", [0.0, 2.0, 2.0, 4.0, 6.0], "1.2.3.4.1")
    with pytest.raises(InputError, match=r"s01\.dcm and s02\.dcm .*same slice position"):
        read_image(tmp_path / "dicom")


# ---------------------------------------------------------------- images too small to slice


def test_prepare_refuses_a_1x1x1_volume_naming_the_file(tmp_path: Path, capsys) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=4)
    save_nifti(tmp_path / "raw" / "imagesTr" / "toy_001_0000.nii.gz", np.zeros((1, 1, 1), np.float32), NNUNET_AFFINE)
    save_nifti(tmp_path / "raw" / "labelsTr" / "toy_001.nii.gz", np.ones((1, 1, 1), np.uint8), NNUNET_AFFINE)
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "toy_001_0000.nii.gz" in err and "2 x 2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_prepare_refuses_a_picture_one_pixel_high(tmp_path: Path) -> None:
    write_pictures(tmp_path / "images", tmp_path / "masks", count=3, mask_values=(0, 1))
    Image.fromarray(np.zeros((1, 7), np.uint8)).save(tmp_path / "images" / "img1.png")
    Image.fromarray(np.zeros((1, 7), np.uint8)).save(tmp_path / "masks" / "img1.png")
    with pytest.raises(InputError, match=r"img1\.png.*1 x 7 pixels.*2 x 2"):
        prepare_folder_2d(tmp_path / "images", tmp_path / "masks", tmp_path / "out")


def test_thin_volume_with_slices_of_2x2_or_more_is_accepted(tmp_path: Path) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=3, shape=(2, 3, 1))
    info = json.loads((prepare_nnunet(tmp_path / "raw", tmp_path / "out") / "dataset.json").read_text())
    assert info["num_classes"] == 3


# ---------------------------------------------------------------- SIGTERM


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
def test_sigterm_during_prepare_leaves_no_temporary_folder(tmp_path: Path) -> None:
    # Enough slices that writing them takes seconds after the temporary folder appears.
    write_nnunet_raw(tmp_path / "raw", num_cases=40, shape=(48, 48, 40))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "perspective_unet",
            "prepare",
            "nnunet",
            "-i",
            str(tmp_path / "raw"),
            "-o",
            str(tmp_path / "out"),
            "--ct-window",
            "-125",
            "275",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
            assert process.poll() is None, "prepare ended before its temporary folder was seen"
            assert time.monotonic() < deadline, "the temporary folder never appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode not in (0, -signal.SIGTERM), err.decode(errors="replace")
    assert "interrupted" in err.decode(errors="replace")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
def test_sigterm_becomes_keyboard_interrupt_only_while_a_command_runs(tmp_path: Path) -> None:
    from perspective_unet.cli import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; the sleep is only a bound
    assert signal.getsignal(signal.SIGTERM) is before
    write_nnunet_raw(tmp_path / "raw", num_cases=3)
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
