"""Reading images and writing label maps, with the geometry that puts a prediction back on the input's voxel grid.

Every reader returns ``(array, meta)``. A 3D array keeps the file's own index order ``(i, j, k)`` as nibabel gives
it (SimpleITK and DICOM input is transposed to the same order), and ``meta["affine"]`` maps those indices to RAS+
millimeters. A 2D picture (PNG, JPG, BMP, TIFF) comes back as ``(H, W)``.

DICOM series and the other SimpleITK formats are read in :mod:`perspective_unet.data.dicom`; the canonical ``(Z, H, W)``
slice order (``to_canonical``, ``from_canonical``) lives in :mod:`perspective_unet.data.orientation`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK

from perspective_unet.data.dicom import LPS_TO_RAS, read_dicom_series, sitk_to_array
from perspective_unet.errors import InputError
from perspective_unet.outputs import temporary_path

__all__ = [
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "atomic_write_path",
    "read_image",
    "write_label_map",
    "write_probabilities",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Formats SimpleITK reads that nibabel does not; DICOM series come as folders.
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".gipl.gz", ".dcm", ".hdr", ".img")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """The file's suffix in lower case, ``.nii.gz`` and ``.gipl.gz`` counted as one."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".gipl.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def read_image(
    path: str | os.PathLike[str], as_label: bool = False, series: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NIfTI file, a DICOM series folder, any SimpleITK format or a PNG/JPG picture.

    Args:
        path: The file, or a folder of DICOM files.
        as_label: Read a picture as class ids: palette indices are kept and color pictures whose three channels
            agree are reduced to one channel. Without it color pictures are converted to gray (luminance).
        series: For a DICOM folder, the SeriesInstanceUID of the series to read; needed when the folder holds
            several series. Only a folder takes it.

    Returns:
        The voxel array in the file's stored data type (NIfTI scaling applied) and its meta: ``affine`` (4x4 RAS+
        mm, identity for pictures), ``spacing`` (per array axis, mm), ``shape``, ``axcodes`` (nibabel's codes of
        the array axes), ``format`` ("nifti", "sitk", "dicom", "picture"), ``path``, for NIfTI ``header``
        (the nibabel header, for writing a label map with the same header) and for DICOM ``series`` (the
        SeriesInstanceUID read) and ``files`` (the series' files in the order of the array's last axis).

    Raises:
        InputError: The file does not exist, cannot be read completely (unreadable or truncated), is not 2D/3D, or
            holds complex or non-numeric voxels;
            a DICOM folder holds several series and ``series`` is None, holds no series ``series``, or the chosen
            series has two slices at one position or a missing slice; ``series`` is given for a file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path.")
    if series is not None and not path.is_dir():
        raise InputError(
            f"{path} is not a folder; a DICOM series (--series {series}) can only be chosen in a folder of DICOM files."
        )
    suffix = full_suffix(path)
    try:
        if path.is_dir():
            array, meta = read_dicom_series(path, series)
        elif suffix in NIFTI_SUFFIXES:
            array, meta = _read_nifti(path)
        elif suffix in PICTURE_SUFFIXES:
            array, meta = _read_picture(path, as_label)
        else:
            array, meta = _read_sitk(path)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib, SimpleITK and Pillow each raise their own types
        raise InputError(
            f"Cannot read {path}: {type(exc).__name__}: {exc}. The file is unreadable or truncated; "
            "copy or download it again."
        ) from exc
    if array.dtype.kind not in "biuf":
        # Complex voxels (MR raw data) would lose their imaginary part in a cast with only a NumPy warning.
        what = "complex values" if array.dtype.kind == "c" else "non-numeric voxels (RGB or another record type)"
        raise InputError(
            f"{path} holds {what} of type {array.dtype}; expected real intensities: convert the image to its "
            "magnitude (or to gray) first."
        )
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise InputError(
            f"{path} has {array.ndim} dimensions (shape {array.shape}); expected a 2D or 3D image "
            "(split a time series or a multi-channel image into 3D volumes first)."
        )
    meta["path"] = str(path)
    meta["shape"] = tuple(int(s) for s in array.shape)
    if array.ndim == 3:
        spacing = tuple(float(z) for z in np.sqrt((meta["affine"][:3, :3] ** 2).sum(axis=0)))
        _check_spacing(meta.pop("header_spacing", spacing), path)
        _check_spacing(spacing, path)
        meta["axcodes"] = "".join(nib.aff2axcodes(meta["affine"]))
        meta["spacing"] = spacing
    return array, meta


def _check_spacing(spacing: tuple[float, ...], path: Path) -> None:
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(
            f"{path}: the header gives the voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm; every "
            "spacing must be a positive number. Fix the header (pixdim, qform/sform) with the scan's true voxel size."
        )


def _read_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    image = nib.load(str(path))
    # Reading every voxel here (not lazily later) is what detects a truncated file while we can still name it.
    array = np.asarray(image.dataobj)
    meta = {"affine": np.asarray(image.affine, dtype=np.float64), "format": "nifti", "header": image.header}
    if int(image.header["sform_code"]) == 0:
        # nibabel quietly replaces zero pixdims by 1 and negative ones by their absolute value; the file's own values
        # decide whether the spacing is known.
        with nib.openers.ImageOpener(str(path)) as handle:
            stored = type(image.header).from_fileobj(handle, check=False)
        meta["header_spacing"] = tuple(float(v) for v in stored["pixdim"][1:4])
    return array, meta


def _read_sitk(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    array, affine = sitk_to_array(SimpleITK.ReadImage(str(path)))
    return array, {"affine": affine, "format": "sitk"}


def _read_picture(path: Path, as_label: bool) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image

    with Image.open(path) as picture:
        picture.load()
        if as_label:
            array = np.asarray(picture)
            if array.ndim == 3:
                if picture.mode in ("RGBA", "LA"):
                    array = array[..., :-1]
                if not (array == array[..., :1]).all():
                    raise InputError(
                        f"{path} is a color mask; masks must hold class ids (0, 1, 2, ...) in one channel or "
                        "as palette indices."
                    )
                array = array[..., 0]
        else:
            if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = np.asarray(picture)
            else:
                array = np.asarray(picture.convert("L"))
    return array, {"affine": np.eye(4), "format": "picture", "spacing": (1.0, 1.0)}


def atomic_write_path(path: Path) -> Path:
    """A temporary name beside ``path`` with the same suffix, to write to and then ``os.replace`` onto ``path``."""
    return temporary_path(path)


def write_label_map(array: np.ndarray, meta: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a label map as uint8 with the geometry (and, for NIfTI input, the header) of the image it belongs to.

    The file is written under a temporary name and renamed, so an interrupted write never leaves half a file.

    Args:
        array: Class ids in the stored order of the original image (``from_canonical`` output), values 0..255.
        meta: The original image's meta from ``read_image`` (at least ``affine``).
        path: Output file; ``.nii``/``.nii.gz`` (nibabel), a picture suffix (Pillow), or any SimpleITK format.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"Label values must lie in 0..255 to be stored as uint8, got {array.min()}..{array.max()}.")
    labels = array.astype(np.uint8)
    expected = tuple(meta.get("shape", labels.shape))
    if labels.shape != expected:
        raise ValueError(f"Label map shape {labels.shape} differs from the image's shape {expected}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_write_path(path)
    suffix = full_suffix(path)
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
    try:
        if suffix in NIFTI_SUFFIXES:
            header = meta.get("header")
            header = header.copy() if isinstance(header, nib.Nifti1Header) else None
            image = nib.Nifti1Image(labels, affine, header=header)
            image.set_data_dtype(np.uint8)
            image.header.set_slope_inter(1.0, 0.0)
            qcode = int(header["qform_code"]) if header is not None and int(header["qform_code"]) > 0 else 1
            scode = int(header["sform_code"]) if header is not None and int(header["sform_code"]) > 0 else 1
            image.set_qform(affine, code=qcode)
            image.set_sform(affine, code=scode)
            nib.save(image, str(tmp))
        elif suffix in PICTURE_SUFFIXES:
            from PIL import Image

            if labels.ndim != 2:
                raise ValueError(f"A picture holds a 2D label map, got shape {labels.shape}.")
            Image.fromarray(labels).save(tmp)
        else:
            _write_sitk(labels, affine, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_sitk(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    if labels.ndim == 2:
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(labels), str(path))
        return
    image = SimpleITK.GetImageFromArray(np.transpose(labels, (2, 1, 0)))
    affine_lps = LPS_TO_RAS @ affine
    spacing = np.sqrt((affine_lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (affine_lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in affine_lps[:3, 3]))
    SimpleITK.WriteImage(image, str(path), useCompression=True)


def write_probabilities(
    probabilities: np.ndarray, meta: dict[str, Any], path: str | os.PathLike[str], class_names: Any = None
) -> Path:
    """Write (C, *image shape) class probabilities to ``path`` (not atomically: see ``outputs.write_all``).

    A ``.npz`` path gets float16 ``probabilities`` (and ``class_names``); any other, a 4D float32 NIfTI with the
    classes along the fourth axis and the image's affine and header.
    """
    path = Path(path)
    if path.name.endswith(".npz"):
        extra = {"class_names": np.asarray(class_names, dtype=str)} if class_names else {}
        np.savez_compressed(path, probabilities=probabilities.astype(np.float16), **extra)
        return path
    data = np.moveaxis(probabilities, 0, -1).astype(np.float32)
    header = meta.get("header")
    header = header.copy() if isinstance(header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(data, np.asarray(meta["affine"], dtype=np.float64), header=header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("vector", (), name="class probabilities")
    nib.save(image, str(path))
    return path
