"""Prediction of image files: NIfTI, DICOM series, other SimpleITK formats and PNG/JPG pictures to label maps.

Each input is read with its geometry, reoriented to the orientation the model was trained in (``to_canonical``; only
flips and axis permutations), normalized as the training data were, segmented slice by slice as the checkpoint's plan
says (its inferer, :mod:`perspective_unet.engine.inferers`: the paper protocol zooms each slice to the training size;
the spacing protocol resamples it to the plan's pixel spacing, slides a window over it and resamples the
probabilities back), and its labels are put back on the input's own voxel grid (``from_canonical``) and written
as uint8 with the input's affine and header.

Output names: a label map keeps its input's name, with nnU-Net's channel suffix ``_0000`` dropped
(``case_0000.nii.gz`` -> ``case.nii.gz``). NIfTI, ``.mha`` and ``.nrrd`` inputs keep their format; a DICOM series
folder ``ct/`` gives ``ct.nii.gz``; other 3D formats give ``.nii.gz``; pictures give a ``.png`` whose pixel values
are class ids. Probability maps go beside the label map as ``<name>_probabilities.nii.gz`` (float32, one channel per
class along the fourth axis, same affine) for 3D NIfTI outputs and as ``<name>_probabilities.npz`` (key
``probabilities``, float16 (classes, *image shape), and ``class_names``) otherwise.

Intensities: the checkpoint's plan (or, for checkpoints without one, ``dataset["intensity"]``) says how the training
data were normalized, first to their stored [0, 1] range:
``{"kind": "ct_window", "window": [low, high]}`` (clip HU, scale to [0, 1]), ``{"kind": "percentile_minmax",
"percentiles": [0.5, 99.5]}`` (per volume), ``{"kind": "picture"}`` (8-bit / 255, 16-bit / 65535) or
``{"kind": "unit"}`` (already in [0, 1]). Checkpoints without it (older ones, converted released checkpoints) fall back
to the CT window written in their ``normalization`` text, to MR percentiles for MR data, and otherwise to the Synapse
window [-125, 275] HU with a warning; the settings' ``window`` / ``mr_normalize`` override all of this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from perspective_unet.data.io import (
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    SITK_SUFFIXES,
    full_suffix,
)
from perspective_unet.engine.predictor import Predictor
from perspective_unet.engine.runtime import check_memory
from perspective_unet.errors import InputError
from perspective_unet.outputs import output_lock, remove_stale_temporaries
from perspective_unet.runs import LoadedModel, ModelSource
from perspective_unet.runtime.inference_settings import InferenceSettings

__all__ = ["find_inputs", "output_name", "predict_file", "predict_path", "probability_path"]

logger = logging.getLogger(__name__)

CHANNEL_SUFFIX = "_0000"
# Formats a label map may be written in; JPEG is left out on purpose (lossy compression changes class ids).
LABEL_SUFFIXES = (*NIFTI_SUFFIXES, ".png", ".bmp", ".tif", ".tiff", ".mha", ".nrrd")
_KEEP_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".nrrd")
# Files of an input folder: every readable image format but the parts of multi-file formats.
_INPUT_SUFFIXES = tuple(s for s in (*NIFTI_SUFFIXES, *PICTURE_SUFFIXES, *SITK_SUFFIXES) if s != ".img")


# --------------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------------------------------


def _is_dicom_series(folder: Path) -> bool:
    import SimpleITK

    return bool(SimpleITK.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def find_inputs(path: str | os.PathLike[str]) -> tuple[list[Path], bool]:
    """The images an input path stands for.

    Args:
        path: An image file, a DICOM series folder, or a folder of image files and DICOM series sub-folders.

    Returns:
        ``(inputs, is_collection)``: the images, sorted, and whether ``path`` was a folder of several inputs (so the
        output must be a folder).

    Raises:
        InputError: the path is missing or a folder without images.

    Example:
        >>> find_inputs("scans/")  # doctest: +SKIP
        ([PosixPath('scans/case1_0000.nii.gz'), PosixPath('scans/case2_0000.nii.gz')], True)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; give an image file or a folder of images.")
    if not path.is_dir():
        return [path], False
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and full_suffix(p) in _INPUT_SUFFIXES and full_suffix(p) != ".dcm"
    )
    if not files and _is_dicom_series(path):
        return [path], False
    series = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_dicom_series(p))
    found = sorted(files + series)
    if not found:
        raise InputError(
            f"{path} holds no images: expected NIfTI, DICOM series folders, {', '.join(SITK_SUFFIXES[:3])}, ... or "
            "PNG/JPG files."
        )
    return found, True


def output_name(input_path: str | os.PathLike[str]) -> str:
    """The file name of the label map of an input (see the module docstring for the rules).

    Example:
        >>> output_name("scans/case_0000.nii.gz"), output_name("photos/x.jpg"), output_name("dicom/ct_head")
        ('case.nii.gz', 'x.png', 'ct_head.nii.gz')
    """
    path = Path(input_path)
    suffix = full_suffix(path)
    if path.is_dir() or suffix == "":
        return f"{path.name}.nii.gz"
    stem = path.name[: -len(suffix)]
    if stem.endswith(CHANNEL_SUFFIX) and len(stem) > len(CHANNEL_SUFFIX):
        stem = stem[: -len(CHANNEL_SUFFIX)]
    if suffix in PICTURE_SUFFIXES:
        return f"{stem}.png"
    if suffix in _KEEP_SUFFIXES:
        return f"{stem}{suffix}"
    return f"{stem}.nii.gz"


def probability_path(label_path: str | os.PathLike[str], ndim: int = 3) -> Path:
    """Where the probabilities of a label map go: ``<name>_probabilities.nii.gz`` for 3D NIfTI, else ``.npz``.

    Example:
        >>> str(probability_path("out/case.nii.gz")), str(probability_path("out/x.png", ndim=2))
        ('out/case_probabilities.nii.gz', 'out/x_probabilities.npz')
    """
    path = Path(label_path)
    suffix = full_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    extension = ".nii.gz" if suffix in NIFTI_SUFFIXES and ndim == 3 else ".npz"
    return path.with_name(f"{stem}_probabilities{extension}")


def _is_file_target(output: Path) -> bool:
    return not output.is_dir() and full_suffix(output) in (*LABEL_SUFFIXES, ".jpg", ".jpeg")


def _plan(inputs: Sequence[Path], collection: bool, output: Path, save_probabilities: bool) -> list[_Job]:
    if _is_file_target(output):
        if collection or len(inputs) > 1:
            raise InputError(f"{output} is a file name but there are {len(inputs)} inputs; give a folder as output.")
        if full_suffix(output) in (".jpg", ".jpeg"):
            raise InputError(f"{output}: JPEG would alter class ids (lossy); write label maps as .png.")
        targets = [output]
    else:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output} is an existing file; give a folder (or a new path) for the outputs.")
        targets = [output / output_name(p) for p in inputs]
    jobs = []
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target.resolve() in seen:
            raise InputError(
                f"{seen[target.resolve()]} and {source} would both be written to {target}; rename one of them."
            )
        if target.resolve() == source.resolve():
            raise InputError(f"the output {target} is the input itself; choose another output path.")
        seen[target.resolve()] = source
        ndim = 2 if full_suffix(source) in PICTURE_SUFFIXES else 3
        probs = probability_path(target, ndim) if save_probabilities else None
        jobs.append(_Job(source, target, probs))
    return jobs


@dataclass
class _Job:
    source: Path
    labels: Path
    probabilities: Path | None = None

    def outputs(self) -> list[Path]:
        return [self.labels] + ([self.probabilities] if self.probabilities is not None else [])


def _check_overwrite(jobs: Sequence[_Job], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for job in jobs for p in job.outputs() if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"{existing[0]}{more} already exists; nothing was written. Pass --overwrite (overwrite=True) to replace."
        )


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def predict_file(
    source: torch.nn.Module | LoadedModel | ModelSource | Sequence[ModelSource],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    **options: Any,
) -> Path:
    """Segment one image and write its label map with the image's geometry; :func:`predict_path` for one input.

    Args:
        source: A model source (see :func:`predict_path`), a loaded model, or a bare model.
        input_path: A NIfTI/SimpleITK file, a DICOM series folder or a PNG/JPG picture.
        output_path: The label map file, or a folder to write it into under :func:`output_name`.
        settings: The inference settings.
        **options: Keyword arguments of :func:`predict_path` (``overwrite``, ``series``, ...).

    Returns:
        The label map's path.

    Example:
        >>> predict_file("runs/synapse/best.pt", "ct/case_0000.nii.gz", "pred/")  # doctest: +SKIP
        PosixPath('pred/case.nii.gz')
    """
    options.setdefault("progress", False)
    return predict_path(source, input_path, output_path, settings, **options)[0]


def _predictor(
    source: torch.nn.Module | LoadedModel | ModelSource | Sequence[ModelSource], settings: InferenceSettings
) -> Predictor:
    if isinstance(source, torch.nn.Module):
        source = LoadedModel(source)  # no record of its training: the paper protocol at 224 x 224, the CT fallback
    return Predictor.from_source(source, settings)


def predict_path(
    source: torch.nn.Module | LoadedModel | ModelSource | Sequence[ModelSource],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    series: str | None = None,
) -> list[Path]:
    """Segment image files, DICOM series or a folder of them, and write one uint8 label map per input.

    Every output path is checked before anything is written: with existing outputs and no ``overwrite`` nothing is
    done. Each file is written under a temporary name and renamed, so an error leaves no half-written file; outputs of
    the inputs before a failing one stay (they are complete).

    Args:
        source: A checkpoint, a model folder, an ONNX file, a run folder, a folder of fold runs or several of these
            (an ensemble that averages their probabilities; see :func:`perspective_unet.runs.load`); a model loaded
            with its :class:`~perspective_unet.runs.LoadedModel` info; or a bare model (the paper protocol at
            224x224 and the CT fallback are then assumed).
        inputs: One path (file, DICOM folder, or folder of inputs) or several.
        output: A folder (created if needed), or a file name when there is a single input file.
        settings: The inference settings: ``tta``, ``batch_size``, ``device``, ``patch_size``, ``resampler``,
            ``save_probabilities`` (class probabilities beside each label map), ``window`` / ``mr_normalize`` (the
            stored range of the inputs instead of the model's), ``orientation``.
        overwrite: Replace existing outputs.
        progress: Show a progress bar over the inputs.
        series: The DICOM series (SeriesInstanceUID) to read from DICOM folders that hold several; without it such a
            folder is refused with the list of its series.

    Returns:
        The label maps written, in input order.

    Raises:
        InputError: an input is missing or unreadable (named in the message), or the outputs clash.
        FileExistsError: an output exists and ``overwrite`` is False.

    Example:
        >>> predict_path("runs/synapse/best.pt", "imagesTs/", "predictions/", InferenceSettings(tta=True))
        ... # doctest: +SKIP
        [PosixPath('predictions/case1.nii.gz'), PosixPath('predictions/case2.nii.gz')]
    """
    settings = settings or InferenceSettings()
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise InputError("no inputs given.")
    found: list[Path] = []
    collection = len(paths) > 1
    for path in paths:
        files, many = find_inputs(path)
        found.extend(files)
        collection = collection or many
    jobs = _plan(found, collection, Path(output), settings.save_probabilities)
    folder = jobs[0].labels.parent
    # One predict command per output folder: a second one would silently replace the first one's outputs.
    with output_lock(folder, "predict"):
        remove_stale_temporaries(folder)
        _check_overwrite(jobs, overwrite)
        predictor = _predictor(source, settings)
        _check_and_log(predictor, len(jobs))
        written: list[Path] = []
        for job in tqdm(jobs, desc="predict", unit="image", disable=not progress or len(jobs) == 1, dynamic_ncols=True):
            try:
                written.append(predictor.predict_file(job.source, job.labels, job.probabilities, series))
            except InputError as exc:
                if written:
                    raise InputError(
                        f"{exc} ({len(written)} of {len(jobs)} outputs, for the inputs before it, were "
                        "written and are complete.)"
                    ) from exc
                raise
        return written


def _check_and_log(predictor: Predictor, inputs: int) -> None:
    """Refuse a batch that cannot fit in memory, and say how the inputs will be predicted."""
    plan, batch_size = predictor.plan, predictor.settings.batch_size
    height, width = plan.patch_size
    check_memory(
        predictor.model,
        batch_size * height * width,
        predictor.device,
        training=False,
        what=f"predict with {batch_size} x {height} x {width} pixels per forward pass",
    )
    where = (
        f"at {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm in {plan.patch_size[0]}x{plan.patch_size[1]} windows"
        if plan.protocol == "spacing"
        else f"zoomed to {plan.patch_size[0]}x{plan.patch_size[1]}"
    )
    logger.info(
        "predicting %d input(s), %s protocol %s, orientation %s, intensity %s",
        inputs,
        plan.protocol,
        where,
        predictor.orientation,
        plan.intensity.describe() if predictor.intensity_known else "fallback (CT window)",
    )
