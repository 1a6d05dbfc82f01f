"""Label maps as DICOM Segmentation objects (highdicom) that reference the DICOM series they were predicted from.

One segment per foreground class: its number is the class id, its label the class name, and its coded category and
type come from SNOMED CT where the name is a known organ or structure (``liver``, ``kidney_left``, ``RV``, ...) and
are the generic *Tissue* otherwise. Each frame is one source slice, with that slice's position, orientation and
pixel spacing and the series' frame of reference, so a viewer lays the segmentation exactly over the series; slices
without any label are left out (highdicom's default).

highdicom is an optional dependency (``pip install 'perspective-unet[dicom]'``); it is imported when a file is
written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.outputs import atomic_write
from perspective_unet.version import __version__

__all__ = ["DICOM_SEG_SUFFIX", "SegmentCode", "segment_code", "write_dicom_seg"]

DICOM_SEG_SUFFIX = ".dcm"

# SNOMED CT codes (scheme SCT) of the categories and of the structures this project's datasets name.
_ORGAN = ("91772007", "Organ")
_STRUCTURE = ("91723000", "Anatomical Structure")
_TISSUE = ("85756007", "Tissue")
_MORPHOLOGY = ("49755003", "Morphologically Altered Structure")
_LEFT, _RIGHT = ("7771000", "Left"), ("24028007", "Right")

# name (lower case, letters and digits only) -> (category, type, laterality or None)
_KNOWN: dict[str, tuple[tuple[str, str], tuple[str, str], tuple[str, str] | None]] = {
    "aorta": (_STRUCTURE, ("15825003", "Aorta"), None),
    "gallbladder": (_ORGAN, ("28231008", "Gallbladder"), None),
    "kidney": (_ORGAN, ("64033007", "Kidney"), None),
    "kidneyleft": (_ORGAN, ("64033007", "Kidney"), _LEFT),
    "leftkidney": (_ORGAN, ("64033007", "Kidney"), _LEFT),
    "kidneyright": (_ORGAN, ("64033007", "Kidney"), _RIGHT),
    "rightkidney": (_ORGAN, ("64033007", "Kidney"), _RIGHT),
    "liver": (_ORGAN, ("10200004", "Liver"), None),
    "pancreas": (_ORGAN, ("15776009", "Pancreas"), None),
    "spleen": (_ORGAN, ("78961009", "Spleen"), None),
    "stomach": (_ORGAN, ("69695003", "Stomach"), None),
    "esophagus": (_ORGAN, ("32849002", "Esophagus"), None),
    "duodenum": (_ORGAN, ("38848004", "Duodenum"), None),
    "bladder": (_ORGAN, ("89837001", "Bladder"), None),
    "prostate": (_ORGAN, ("41216001", "Prostate"), None),
    "lung": (_ORGAN, ("39607008", "Lung"), None),
    "heart": (_ORGAN, ("80891009", "Heart"), None),
    "brain": (_ORGAN, ("12738006", "Brain"), None),
    "rv": (_STRUCTURE, ("53085002", "Right ventricle"), None),
    "rightventricle": (_STRUCTURE, ("53085002", "Right ventricle"), None),
    "lv": (_STRUCTURE, ("87878005", "Left ventricle"), None),
    "leftventricle": (_STRUCTURE, ("87878005", "Left ventricle"), None),
    "myocardium": (_TISSUE, ("49848007", "Left Ventricle Myocardium"), None),
    "myo": (_TISSUE, ("49848007", "Left Ventricle Myocardium"), None),
    "tumor": (_MORPHOLOGY, ("108369006", "Neoplasm"), None),
    "tumour": (_MORPHOLOGY, ("108369006", "Neoplasm"), None),
    "lesion": (_MORPHOLOGY, ("52988006", "Lesion"), None),
}


class SegmentCode(NamedTuple):
    """The coded meaning of a segment: SNOMED CT (code value, meaning) pairs."""

    category: tuple[str, str]
    type: tuple[str, str]
    laterality: tuple[str, str] | None = None


def segment_code(name: str) -> SegmentCode:
    """The SNOMED CT category and type of a class name; *Tissue* / *Tissue* for names it does not know.

    Example:
        >>> segment_code("kidney_left")
        SegmentCode(category=('91772007', 'Organ'), type=('64033007', 'Kidney'), laterality=('7771000', 'Left'))
        >>> segment_code("class 7").type
        ('85756007', 'Tissue')
    """
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if key in _KNOWN:
        return SegmentCode(*_KNOWN[key])
    return SegmentCode(_TISSUE, _TISSUE)


def _source_datasets(meta: dict[str, Any]) -> list[Any]:
    import pydicom

    files = meta.get("files")
    if meta.get("format") != "dicom" or not files:
        raise InputError(
            f"{meta.get('path', 'the input')} is not a DICOM series; a DICOM SEG output references the series it was "
            "predicted from. Give a folder of DICOM files, or another --output-format."
        )
    return [pydicom.dcmread(str(name)) for name in files]


def _sct(code: tuple[str, str]) -> Any:
    import highdicom

    return highdicom.sr.CodedConcept(value=code[0], scheme_designator="SCT", meaning=code[1])


def _descriptions(class_names: Sequence[str], num_segments: int) -> list[Any]:
    import highdicom
    from pydicom.sr.codedict import codes

    algorithm = highdicom.AlgorithmIdentificationSequence(
        name="perspective-unet", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number in range(1, num_segments + 1):
        name = class_names[number] if number < len(class_names) else f"class {number}"
        code = segment_code(name)
        description = highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=_sct(code.category),
            segmented_property_type=_sct(code.type),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if code.laterality is not None:
            modifier = [_sct(code.laterality)]
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = modifier
        descriptions.append(description)
    return descriptions


def write_dicom_seg(
    labels: np.ndarray,
    meta: dict[str, Any],
    path: str | os.PathLike[str],
    class_names: Sequence[str] = (),
    *,
    num_classes: int | None = None,
) -> Path:
    """Write a label map of a DICOM series as a DICOM Segmentation object, atomically.

    Args:
        labels: Class ids on the series' grid in :func:`~perspective_unet.data.io.read_image`'s order (columns, rows,
            slices), values below 256.
        meta: The series' meta from ``read_image`` (``format == "dicom"``, with its ``files`` in slice order).
        path: The output file (``.dcm``).
        class_names: Names by class id, background first; they label the segments.
        num_classes: Classes, background included (one segment per foreground class); default: as many as
            ``class_names`` names, or the largest label + 1.

    Raises:
        InputError: ``meta`` is not a DICOM series', or highdicom is not installed.
    """
    try:
        import highdicom
    except ImportError:
        raise InputError(
            "DICOM SEG output needs highdicom; install it with pip install 'perspective-unet[dicom]'."
        ) from None
    sources = _source_datasets(meta)
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(sources):
        raise ValueError(f"labels of shape {labels.shape} do not match a series of {len(sources)} slices.")
    largest = int(labels.max()) if labels.size else 0
    count = max(num_classes or len(class_names) or 0, largest + 1, 2)
    # One frame per source file: (slices, rows, columns) as the files store their pixels.
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint8)
    first = sources[0]
    segmentation = highdicom.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(class_names, count - 1),
        series_instance_uid=highdicom.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 100,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="perspective-unet",
        manufacturer_model_name="Perspective+ Unet",
        software_versions=__version__,
        device_serial_number="none",
        series_description="perspective-unet segmentation",
    )
    return atomic_write(path, lambda target: segmentation.save_as(str(target)))
