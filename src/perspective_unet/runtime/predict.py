"""Prediction of image files, shared by both paths: NIfTI, DICOM series, other SimpleITK formats and PNG/JPG pictures
to label maps; and its entry point without PyTorch, :func:`predict_onnx`.

Each input is read with its geometry, prepared, segmented and written back on its own voxel grid by a
:class:`~perspective_unet.runtime.predictor.ScanPredictor` (how: :mod:`perspective_unet.engine.predict`).

Output names: a label map keeps its input's name, with nnU-Net's channel suffix ``_0000`` dropped
(``case_0000.nii.gz`` -> ``case.nii.gz``). NIfTI, ``.mha`` and ``.nrrd`` inputs keep their format; a DICOM series
folder ``ct/`` gives ``ct.nii.gz``; other 3D formats give ``.nii.gz``; pictures give a ``.png`` whose pixel values
are class ids. Probability maps go beside the label map as ``<name>_probabilities.nii.gz`` (float32, one channel per
class along the fourth axis, same affine) for 3D NIfTI outputs and as ``<name>_probabilities.npz`` (key
``probabilities``, float16 (classes, *image shape), and ``class_names``) otherwise.

:func:`predict_files` runs any :class:`~perspective_unet.runtime.predictor.ScanPredictor` over the inputs:
:func:`perspective_unet.engine.predict.predict_path` with a PyTorch model, :func:`predict_onnx` with an exported ONNX
graph in ONNX Runtime (NumPy, no PyTorch: what ``perspective-unet predict --onnx`` runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from perspective_unet.data.io import NIFTI_SUFFIXES, PICTURE_SUFFIXES, SITK_SUFFIXES, full_suffix
from perspective_unet.errors import InputError
from perspective_unet.outputs import output_lock, remove_stale_temporaries
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predictor import OnnxPredictor, ScanPredictor

__all__ = [
    "LABEL_SUFFIXES",
    "find_inputs",
    "output_name",
    "predict_files",
    "predict_onnx",
    "probability_path",
]

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


def predict_files(
    make_predictor: Callable[[], ScanPredictor],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    settings: InferenceSettings,
    *,
    overwrite: bool = False,
    progress: bool = True,
    series: str | None = None,
) -> list[Path]:
    """Segment image files, DICOM series or a folder of them with the predictor ``make_predictor`` builds, and write
    one uint8 label map per input.

    Every output path is checked before anything is written and before the model is loaded: with existing outputs
    and no ``overwrite`` nothing is done. Each file is written under a temporary name and renamed, so an error leaves
    no half-written file; outputs of the inputs before a failing one stay (they are complete).

    Args:
        make_predictor: Builds the predictor (called once, inside the output folder's lock).
        inputs: One path (file, DICOM folder, or folder of inputs) or several.
        output: A folder (created if needed), or a file name when there is a single input file.
        settings: The inference settings (``save_probabilities``: class probabilities beside each label map).
        overwrite: Replace existing outputs.
        progress: Show a progress bar over the inputs.
        series: The DICOM series (SeriesInstanceUID) to read from DICOM folders that hold several.

    Returns:
        The label maps written, in input order.

    Raises:
        InputError: an input is missing or unreadable (named in the message), or the outputs clash.
        FileExistsError: an output exists and ``overwrite`` is False.
    """
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
        predictor = make_predictor()
        predictor.check_resources()
        logger.info("predicting %d input(s), %s", len(jobs), predictor.describe())
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


def predict_onnx(
    model: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    providers: str | Sequence[str] | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    series: str | None = None,
) -> list[Path]:
    """:func:`predict_files` with an exported ONNX graph in ONNX Runtime: no PyTorch, MONAI or model files needed.

    Args:
        model: The ``.onnx`` file (its plan and classes are read from its metadata, else from ``preprocessing.json``
            and ``labels.json`` beside it).
        inputs: One path (file, DICOM folder, or folder of inputs) or several.
        output: A folder (created if needed), or a file name when there is a single input file.
        settings: The inference settings (``device``, ``resampler`` and ``amp_dtype`` do not apply).
        providers: ONNX Runtime's execution providers in order, e.g. ``"cuda,cpu"`` (``auto`` or None: TensorRT and
            CUDA where installed, then the CPU).
        threads: ONNX Runtime's intra-op threads (default: every core).
        overwrite: Replace existing outputs.
        progress: Show a progress bar over the inputs.
        series: The DICOM series to read from DICOM folders that hold several.

    Raises:
        InputError: A provider is unavailable, the graph carries no plan, or an input is unreadable (one line each).

    Example:
        >>> predict_onnx("model.onnx", "scans/", "predictions/", providers="cpu")  # doctest: +SKIP
        [PosixPath('predictions/case1.nii.gz'), PosixPath('predictions/case2.nii.gz')]
    """
    settings = settings or InferenceSettings()

    def make_predictor() -> OnnxPredictor:
        return OnnxPredictor.from_file(model, settings, providers=providers, threads=threads)

    return predict_files(
        make_predictor, inputs, output, settings, overwrite=overwrite, progress=progress, series=series
    )
