"""Reading images and writing label maps, with the geometry that puts a prediction back on the input's voxel grid.

Every reader returns ``(array, meta)``. A 3D array keeps the file's own index order ``(i, j, k)`` as nibabel gives
it (SimpleITK and DICOM input is transposed to the same order), and ``meta["affine"]`` maps those indices to RAS+
millimetres. A 2D picture (PNG, JPG, BMP, TIFF) comes back as ``(H, W)``.

``to_canonical`` brings a volume to the ``(Z, H, W)`` order used in prepared data by reorienting it (flips and axis
permutations only, never resampling) to a target orientation code, and ``from_canonical`` undoes exactly that.
The default code ``"SPL"`` means: Z runs from inferior to superior, rows from anterior to posterior, columns from
the patient's right to left, so ``plt.imshow(volume[z])`` shows the usual radiological axial view. The code
``"stored"`` keeps the file's slice axis (its third index) as Z and only moves it to the front: for oblique
acquisitions such as cardiac short-axis MRI, where the nearest anatomical axes are not the acquisition's.
"""

from __future__ import annotations

import contextlib
import locale
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK
from nibabel import orientations

from perspective_unet.errors import InputError

__all__ = [
    "CANONICAL_ORIENTATION",
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "atomic_write_path",
    "canonical_spacing",
    "from_canonical",
    "read_image",
    "to_canonical",
    "uncrop_canonical",
    "write_label_map",
]

CANONICAL_ORIENTATION = "SPL"
STORED_ORIENTATION = "stored"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Formats SimpleITK reads that nibabel does not; DICOM series come as folders.
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".gipl.gz", ".dcm", ".hdr", ".img")
# RAS+ <-> LPS+ (ITK and DICOM) flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
        as_label: Read a picture as class ids: palette indices are kept and colour pictures whose three channels
            agree are reduced to one channel. Without it colour pictures are converted to grey (luminance).
        series: For a DICOM folder, the SeriesInstanceUID of the series to read; needed when the folder holds
            several series. Only a folder takes it.

    Returns:
        The voxel array in the file's stored data type (NIfTI scaling applied) and its meta: ``affine`` (4x4 RAS+
        mm, identity for pictures), ``spacing`` (per array axis, mm), ``shape``, ``axcodes`` (nibabel's codes of
        the array axes), ``format`` ("nifti", "sitk", "dicom", "picture"), ``path``, for NIfTI ``header``
        (the nibabel header, for writing a label map with the same header) and for DICOM ``series`` (the
        SeriesInstanceUID read).

    Raises:
        InputError: The file does not exist, cannot be read completely (unreadable or truncated), or is not 2D/3D;
            a DICOM folder holds several series and ``series`` is None, holds no series ``series``, or the chosen
            series has two slices at one position or a missing slice; ``series`` is given for a file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path.")
    if series is not None and not path.is_dir():
        raise InputError(f"{path} is not a folder; a DICOM series (--series {series}) can only be chosen in a folder "
                         "of DICOM files.")
    suffix = full_suffix(path)
    try:
        if path.is_dir():
            array, meta = _read_dicom_series(path, series)
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
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise InputError(f"{path} has {array.ndim} dimensions (shape {array.shape}); expected a 2D or 3D image "
                         "(split a time series or a multi-channel image into 3D volumes first).")
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


def _sitk_to_array(image: Any) -> tuple[np.ndarray, np.ndarray]:
    array = SimpleITK.GetArrayFromImage(image)  # (z, y, x) for 3D, (y, x) for 2D
    dim = image.GetDimension()
    if dim == 2:
        return array, np.eye(4)
    if dim != 3:
        raise InputError(f"{dim}D images are not supported; expected 2D or 3D.")
    array = np.transpose(array, (2, 1, 0))  # to (i, j, k) as nibabel indexes
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine_lps[:3, 3] = image.GetOrigin()
    return array, _LPS_TO_RAS @ affine_lps


def _read_sitk(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    array, affine = _sitk_to_array(SimpleITK.ReadImage(str(path)))
    return array, {"affine": affine, "format": "sitk"}


@contextlib.contextmanager
def preserved_locale() -> Iterator[None]:
    """Restore the process's locale (``LC_ALL``) as it was on entry.

    SimpleITK's DICOM (GDCM) code switches the whole process to the "C" locale, after which Python opens text files
    as ASCII: any later read of a UTF-8 file without an explicit encoding fails (torch.compile's own templates
    among them).
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


# DICOM tags, as SimpleITK names them.
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
# Slice steps shorter than this (mm) are two slices at one position.
_DUPLICATE_STEP_MM = 1e-3
# A step this many times the median step is a missing slice: the series reader would silently spread the slices
# around it over an average spacing and misplace everything beyond it.
_GAP_FACTOR = 1.5


def _read_dicom_series(folder: Path, series: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    with preserved_locale():
        series_ids = list(SimpleITK.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        if not series_ids:
            raise InputError(f"{folder} is a folder without a DICOM series; give a DICOM folder or an image file.")
        files = {sid: list(SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
        if series is None and len(series_ids) > 1:
            # Taking the largest (or any) series would be a guess; which scan to segment is the user's choice.
            raise InputError(
                f"{folder} holds {len(series_ids)} DICOM series: {_describe_series(files)}; choose one with "
                "--series UID."
            )
        chosen = series_ids[0] if series is None else series
        if chosen not in files:
            raise InputError(
                f"{folder} has no DICOM series {chosen!r}; its series are: {_describe_series(files)}; choose one of "
                "them with --series UID."
            )
        _check_slice_positions(files[chosen], folder, chosen)
        reader = SimpleITK.ImageSeriesReader()
        reader.SetFileNames(files[chosen])
        image = reader.Execute()
    array, affine = _sitk_to_array(image)
    return array, {"affine": affine, "format": "dicom", "series": chosen}


def _dicom_header(path: str) -> Any:
    reader = SimpleITK.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()  # the header only, not the pixels
    return reader


def _header_value(header: Any, tag: str) -> str | None:
    return header.GetMetaData(tag).strip() if header.HasMetaDataKey(tag) else None


def _describe_series(files: dict[str, list[str]]) -> str:
    """``UID ("description", N slices)`` for every series, separated by semicolons."""
    parts = []
    for uid, names in files.items():
        description = _header_value(_dicom_header(names[0]), _TAG_SERIES_DESCRIPTION) if names else None
        label = f'"{description}", ' if description else ""
        parts.append(f"{uid} ({label}{len(names)} slice{'s' if len(names) != 1 else ''})")
    return "; ".join(parts)


def _numbers(text: str | None, count: int) -> np.ndarray | None:
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (count,) and np.isfinite(values).all() else None


def _check_slice_positions(files: list[str], folder: Path, series: str) -> None:
    """Raise if two slices of a series share a position or a slice is missing between two others.

    Positions are ImagePositionPatient projected on the slice normal (the cross product of ImageOrientationPatient's
    row and column directions). Series without these tags are not checked, nor gaps in series of two slices.
    """
    if len(files) < 2:
        return
    headers = [_dicom_header(name) for name in files]
    orientation = _numbers(_header_value(headers[0], _TAG_ORIENTATION), 6)
    positions = [_numbers(_header_value(header, _TAG_POSITION), 3) for header in headers]
    if orientation is None or any(p is None for p in positions):
        return
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([float(np.dot(p, normal)) for p in positions])  # type: ignore[arg-type]
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    names = [Path(files[i]).name for i in order]
    duplicates = np.flatnonzero(steps < _DUPLICATE_STEP_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise InputError(
            f"{folder}: DICOM files {names[k]} and {names[k + 1]} of series {series} lie at the same slice position "
            f"({along[order][k]:g} mm along the slice normal); remove the duplicate file."
        )
    if len(steps) < 2:
        return
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        raise InputError(
            f"{folder}: series {series} has a gap of {steps[k]:g} mm between {names[k]} and {names[k + 1]} where its "
            f"slices are {median:g} mm apart; a slice is missing. Add it, or use a complete series."
        )


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
                        f"{path} is a colour mask; masks must hold class ids (0, 1, 2, ...) in one channel or "
                        "as palette indices."
                    )
                array = array[..., 0]
        else:
            if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = np.asarray(picture)
            else:
                array = np.asarray(picture.convert("L"))
    return array, {"affine": np.eye(4), "format": "picture", "spacing": (1.0, 1.0)}


def _orientation_of(meta: dict[str, Any], orientation: str | None) -> str:
    if orientation is not None:
        return orientation
    recorded = meta.get("orientation")
    return str(recorded) if recorded else CANONICAL_ORIENTATION


def _target_ornt(orientation: str) -> np.ndarray | None:
    if orientation == STORED_ORIENTATION:
        return None
    codes = tuple(orientation.upper())
    if len(codes) != 3 or not set(codes) <= set("LRAPSI"):
        raise ValueError(f"orientation must be 'stored' or three axis codes such as 'SPL', got {orientation!r}.")
    target = orientations.axcodes2ornt(codes)
    if len(set(target[:, 0])) != 3:
        raise ValueError(f"orientation {orientation!r} names one anatomical axis twice.")
    return target


def _canonical_transform(meta: dict[str, Any], orientation: str) -> np.ndarray:
    """nibabel orientation transform from the stored array axes to the canonical (Z, H, W) axes."""
    target = _target_ornt(orientation)
    if target is None:
        # Stored order (i, j, k) -> (k, i, j): new axis of each stored axis, no flips.
        return np.array([[1, 1], [2, 1], [0, 1]], dtype=float)
    source = orientations.io_orientation(np.asarray(meta["affine"], dtype=np.float64))
    return orientations.ornt_transform(source, target)


def to_canonical(volume: np.ndarray, meta: dict[str, Any], orientation: str | None = None) -> np.ndarray:
    """Reorient a volume read by ``read_image`` to the canonical ``(Z, H, W)`` order.

    Args:
        volume: Array in the stored order of the file ``meta`` describes (or any array of that shape, such as a
            label map). A 2D picture ``(H, W)`` becomes ``(1, H, W)``.
        meta: The meta ``read_image`` returned.
        orientation: Three axis codes of the canonical (Z, H, W) axes, such as ``"SPL"``, or ``"stored"``; None
            takes ``meta["orientation"]`` if present (prepared volumes record it), else ``"SPL"``.

    Returns:
        A view or copy with axes permuted and flipped only; voxel values are untouched.
    """
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume[None]
    if volume.ndim != 3:
        raise ValueError(f"to_canonical expects a 2D or 3D array, got shape {volume.shape}.")
    transform = _canonical_transform(meta, _orientation_of(meta, orientation))
    return np.ascontiguousarray(orientations.apply_orientation(volume, transform))


def from_canonical(volume: np.ndarray, meta: dict[str, Any], orientation: str | None = None) -> np.ndarray:
    """Undo ``to_canonical``: bring a ``(Z, H, W)`` array back to the stored order of the file ``meta`` describes.

    Args:
        volume: A canonical array, typically a predicted label map of the canonical shape.
        meta: The meta of the original image (from ``read_image`` or a prepared volume's attributes).
        orientation: The orientation that ``to_canonical`` was called with (None: as in ``to_canonical``).
    """
    volume = np.asarray(volume)
    shape = tuple(meta.get("shape", meta.get("original_shape", ())))
    if len(shape) == 2:
        if volume.ndim != 3 or volume.shape[0] != 1:
            raise ValueError(f"A 2D image's canonical array has shape (1, H, W), got {volume.shape}.")
        return volume[0]
    inverse = orientations.ornt_transform(*_inverse_pair(meta, _orientation_of(meta, orientation)))
    out = np.ascontiguousarray(orientations.apply_orientation(volume, inverse))
    if shape and out.shape != shape:
        raise ValueError(f"Canonical array of shape {volume.shape} does not map back to the original {shape}.")
    return out


def _inverse_pair(meta: dict[str, Any], orientation: str) -> tuple[np.ndarray, np.ndarray]:
    target = _target_ornt(orientation)
    if target is None:
        # Canonical (k, i, j) back to (i, j, k): expressed as orientations of the canonical and stored axes.
        return np.array([[2, 1], [0, 1], [1, 1]], dtype=float), np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    source = orientations.io_orientation(np.asarray(meta["affine"], dtype=np.float64))
    return target, source


def canonical_spacing(meta: dict[str, Any], orientation: str | None = None) -> tuple[float, float, float]:
    """Voxel size in mm along the canonical (Z, H, W) axes; (1, 1, 1) for a 2D picture."""
    spacing = tuple(meta.get("spacing", ()))
    if len(spacing) != 3:
        return (1.0, 1.0, 1.0)
    transform = _canonical_transform(meta, _orientation_of(meta, orientation))
    out = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(transform):
        out[int(target_axis)] = float(spacing[source_axis])
    return out[0], out[1], out[2]


def uncrop_canonical(volume: np.ndarray, meta: dict[str, Any], fill: int | float = 0) -> np.ndarray:
    """Put a block of slices cut from a canonical volume (``meta["crop_z"]``) back into the full canonical shape.

    Volumes without ``crop_z`` are returned unchanged; the slices outside the block are set to ``fill``.
    """
    if "crop_z" not in meta:
        return np.asarray(volume)
    start, stop = (int(v) for v in np.ravel(meta["crop_z"]))
    full_shape = tuple(int(v) for v in np.ravel(meta["canonical_shape"]))
    if volume.shape[0] != stop - start or tuple(volume.shape[1:]) != full_shape[1:]:
        raise ValueError(f"Block of shape {volume.shape} does not fit crop_z {start}..{stop} of {full_shape}.")
    full = np.full(full_shape, fill, dtype=np.asarray(volume).dtype)
    full[start:stop] = volume
    return full


def atomic_write_path(path: Path) -> Path:
    """A temporary name beside ``path`` with the same suffix, to write to and then ``os.replace`` onto ``path``."""
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


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
    affine_lps = _LPS_TO_RAS @ affine
    spacing = np.sqrt((affine_lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (affine_lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in affine_lps[:3, 3]))
    SimpleITK.WriteImage(image, str(path), useCompression=True)
