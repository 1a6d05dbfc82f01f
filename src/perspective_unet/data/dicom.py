"""DICOM series and other SimpleITK images as ``(array, meta)`` in nibabel's index order, with an RAS+ affine.

A folder with several series is refused with the list of them unless one is chosen; a series with a gap or a
duplicate in its slice positions is refused naming the files around it (the series reader would otherwise spread the
slices over an average spacing and misplace everything beyond the gap).
"""

from __future__ import annotations

import contextlib
import locale
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK

from perspective_unet.errors import InputError

__all__ = ["preserved_locale", "read_dicom_series", "sitk_to_array"]

# RAS+ <-> LPS+ (ITK and DICOM) flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_to_array(image: Any) -> tuple[np.ndarray, np.ndarray]:
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
    return array, LPS_TO_RAS @ affine_lps


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


def read_dicom_series(folder: Path, series: str | None) -> tuple[np.ndarray, dict[str, Any]]:
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
    array, affine = sitk_to_array(image)
    # The files in slice order (the order of the array's last axis): a DICOM SEG output references each of them.
    return array, {"affine": affine, "format": "dicom", "series": chosen, "files": tuple(files[chosen])}


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
