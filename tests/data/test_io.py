"""Reading images, canonical orientation and writing label maps back onto the input's grid."""

from __future__ import annotations

import gzip
import itertools
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK
from nibabel import orientations
from PIL import Image

from perspective_unet.data.dicom import preserved_locale
from perspective_unet.data.io import read_image, write_label_map
from perspective_unet.data.orientation import canonical_spacing, from_canonical, to_canonical, uncrop_canonical
from perspective_unet.errors import InputError
from tests.data.conftest import LPS_AFFINE, leftovers, save_nifti


def _affine_for(codes: tuple[str, str, str], zooms: tuple[float, float, float] = (0.7, 0.8, 2.5)) -> np.ndarray:
    """An affine whose array axes point along ``codes`` with voxel sizes ``zooms``."""
    ornt = orientations.axcodes2ornt(codes)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, (world_axis, flip) in enumerate(ornt):
        affine[int(world_axis), axis] = flip * zooms[axis]
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return affine


def _world_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """(3, *shape) RAS+ coordinates of every voxel."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).reshape(3, *shape)


ORIENTATIONS = [("L", "P", "S"), ("R", "A", "S"), ("A", "S", "R"), ("S", "L", "P"), ("P", "I", "L")]


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_canonical_axes_point_superior_posterior_left(codes: tuple[str, str, str]) -> None:
    shape = (5, 6, 7)
    affine = _affine_for(codes)
    world = _world_coordinates(shape, affine)
    meta = {"affine": affine, "shape": shape}
    x, y, z = (to_canonical(world[i], meta) for i in range(3))
    # RAS+: along Z the superior coordinate grows, along H the anterior one falls, along W the right one falls.
    assert (np.diff(z, axis=0) > 0).all()
    assert (np.diff(y, axis=1) < 0).all()
    assert (np.diff(x, axis=2) < 0).all()


@pytest.mark.parametrize("codes", ORIENTATIONS)
@pytest.mark.parametrize("orientation", ["SPL", "SLA", "stored"])
def test_from_canonical_inverts_to_canonical(codes: tuple[str, str, str], orientation: str) -> None:
    shape = (4, 5, 6)
    volume = np.arange(np.prod(shape)).reshape(shape)
    meta = {"affine": _affine_for(codes), "shape": shape}
    canonical = to_canonical(volume, meta, orientation)
    assert np.array_equal(from_canonical(canonical, meta, orientation), volume)


def test_stored_orientation_only_moves_the_slice_axis_first() -> None:
    volume = np.arange(60).reshape(3, 4, 5)
    meta = {"affine": _affine_for(("P", "I", "L")), "shape": volume.shape}
    assert np.array_equal(to_canonical(volume, meta, "stored"), np.transpose(volume, (2, 0, 1)))


def test_orientation_recorded_in_meta_is_the_default() -> None:
    volume = np.arange(60).reshape(3, 4, 5)
    meta = {"affine": _affine_for(("R", "A", "S")), "shape": volume.shape, "orientation": "stored"}
    assert np.array_equal(to_canonical(volume, meta), np.transpose(volume, (2, 0, 1)))


def test_canonical_spacing_follows_the_axes() -> None:
    meta = {"affine": _affine_for(("S", "L", "P"), zooms=(3.0, 0.7, 0.8)), "spacing": (3.0, 0.7, 0.8)}
    assert canonical_spacing(meta, "SPL") == (3.0, 0.8, 0.7)


def test_bad_orientation_code_is_refused() -> None:
    meta = {"affine": np.eye(4), "shape": (2, 2, 2)}
    with pytest.raises(ValueError, match="axis"):
        to_canonical(np.zeros((2, 2, 2)), meta, "SSL")


def test_read_nifti_meta(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = save_nifti(tmp_path / "a.nii.gz", data)
    array, meta = read_image(path)
    assert np.array_equal(array, data)
    assert np.allclose(meta["affine"], LPS_AFFINE)
    assert meta["spacing"] == pytest.approx((0.8, 0.8, 2.5))
    assert meta["axcodes"] == "LPS"
    assert meta["shape"] == (2, 3, 4)


def test_label_map_round_trip_keeps_geometry_and_header(tmp_path: Path) -> None:
    image = save_nifti(tmp_path / "ct.nii.gz", np.zeros((6, 5, 4), dtype=np.int16))
    _, meta = read_image(image)
    prediction = np.random.default_rng(0).integers(0, 9, (6, 5, 4))
    canonical = to_canonical(prediction, meta)
    out = write_label_map(from_canonical(canonical, meta), meta, tmp_path / "pred" / "ct_pred.nii.gz")
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, LPS_AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), prediction)
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    labels = np.random.default_rng(1).integers(0, 5, (7, 6, 5)).astype(np.uint8)
    meta = {"affine": LPS_AFFINE, "shape": labels.shape}
    path = write_label_map(labels, meta, tmp_path / f"labels{suffix}")
    array, read_meta = read_image(path)
    assert np.array_equal(array, labels)
    assert np.allclose(read_meta["affine"], LPS_AFFINE)


def _write_dicom_series(volume: np.ndarray, folder: Path) -> None:
    writer = SimpleITK.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise every file gets its own series UID
    for z in range(volume.shape[0]):
        slice_image = SimpleITK.GetImageFromArray(volume[z])
        slice_image.SetSpacing((0.5, 0.6))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.3",
            "0020|000e": "1.2.3.4",
            "0020|0013": str(z + 1),
            "0020|0032": f"0\\0\\{2.0 * z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.6\\0.5",
            "0018|0050": "2.0",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{z:02d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).integers(-100, 100, (4, 6, 5)).astype(np.int16)  # (z, y, x) as SimpleITK
    folder = tmp_path / "series"
    folder.mkdir()
    with preserved_locale():
        _write_dicom_series(volume, folder)
    locale_before = locale.setlocale(locale.LC_ALL)
    array, meta = read_image(folder)
    assert locale.setlocale(locale.LC_ALL) == locale_before  # GDCM's switch to the "C" locale is undone
    assert meta["format"] == "dicom"
    assert array.shape == (5, 6, 4)  # (i, j, k) as nibabel orders it
    assert np.array_equal(array, np.transpose(volume, (2, 1, 0)))
    assert meta["spacing"] == pytest.approx((0.5, 0.6, 2.0))
    assert meta["axcodes"] == "LPS"


def test_pictures_gray_palette_and_color_masks(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    gray, meta = read_image(tmp_path / "red.png")
    assert gray.shape == (4, 5) and meta["format"] == "picture"
    assert int(gray[0, 0]) == 76  # ITU-R 601 luma of pure red

    palette = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "mask.png")
    mask, _ = read_image(tmp_path / "mask.png", as_label=True)
    assert mask.tolist() == [[0, 1], [2, 1]]

    with pytest.raises(InputError, match="red.png is a color mask"):
        read_image(tmp_path / "red.png", as_label=True)


def test_truncated_and_missing_files_raise_input_error(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "ok.nii.gz", np.zeros((30, 30, 30), dtype=np.float32))
    data = gzip.decompress(path.read_bytes())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(InputError, match="truncated.nii.gz"):
        read_image(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    with pytest.raises(InputError, match="garbage.nii.gz"):
        read_image(garbage)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "absent.nii.gz")


def test_uncrop_canonical_puts_a_block_back() -> None:
    block = np.ones((2, 3, 4), dtype=np.uint8)
    meta = {"crop_z": np.array([3, 5]), "canonical_shape": np.array([7, 3, 4])}
    full = uncrop_canonical(block, meta)
    assert full.shape == (7, 3, 4)
    assert full[3:5].all() and not full[:3].any() and not full[5:].any()


def test_all_48_orientations_round_trip() -> None:
    shape = (3, 4, 5)
    volume = np.arange(60).reshape(shape)
    for axes in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = 0
            for axis, (world, flip) in enumerate(zip(axes, flips)):
                affine[world, axis] = flip
            meta = {"affine": affine, "shape": shape}
            assert np.array_equal(from_canonical(to_canonical(volume, meta), meta), volume)


def _nifti_with_pixdim(path: Path, pixdim: tuple[float, float, float]) -> Path:
    """A NIfTI file without qform/sform whose header stores ``pixdim`` as given (nibabel would 'fix' it on save)."""
    import struct

    header = nib.Nifti1Header()
    header.set_data_shape((4, 5, 3))
    header.set_data_dtype(np.int16)
    header["pixdim"][1:4] = (1.0, 1.0, 1.0)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), None, header), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:92] = struct.pack("<3f", *pixdim)  # pixdim[1..3] of the 348-byte header
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("pixdim", [(0.0, 0.8, 2.0), (-0.8, 0.8, 2.0), (float("nan"), 0.8, 2.0)])
def test_zero_negative_or_nan_spacing_is_refused_naming_the_file(tmp_path: Path, pixdim) -> None:
    path = _nifti_with_pixdim(tmp_path / "scan.nii", pixdim)
    with pytest.raises(InputError, match=r"scan\.nii: the header gives the voxel spacing .*positive number"):
        read_image(path)
    assert read_image(_nifti_with_pixdim(tmp_path / "good.nii", (0.8, 0.8, 2.0)))[1]["spacing"] == pytest.approx(
        (0.8, 0.8, 2.0)
    )


def test_a_4d_image_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), str(path))
    with pytest.raises(InputError, match=r"series\.nii\.gz has 4 dimensions.*split"):
        read_image(path)
