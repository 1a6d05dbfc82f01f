"""Prediction of image files, shared by both paths: NIfTI, DICOM series, other SimpleITK formats and PNG/JPG pictures
to label maps; and its entry point without PyTorch, :func:`predict_onnx`.

Each input is read with its geometry, prepared, segmented and written back on its own voxel grid by a
:class:`~perspective_unet.runtime.predictor.ScanPredictor` (how: :mod:`perspective_unet.engine.predict`).

A model of several input channels (nnU-Net's ``channel_names``) reads one file per channel: ``<case>_0000``,
``<case>_0001``, ... (:func:`channel_groups`). In a folder they are grouped by case; a single file given (any of a
case's) brings its sibling channel files from its folder; a case missing a channel is refused. A one-channel model
refuses a case that comes with a second channel file beside its ``_0000``.

Output names: a label map keeps its input's name, with nnU-Net's channel suffix ``_0000`` dropped
(``case_0000.nii.gz`` -> ``case.nii.gz``). NIfTI, ``.mha`` and ``.nrrd`` inputs keep their format; a DICOM series
folder ``ct/`` gives ``ct.nii.gz``; other 3D formats give ``.nii.gz``; pictures give a ``.png`` whose pixel values
are class ids. With ``output_format="dicom-seg"`` every input must be a DICOM series and its label map is a DICOM
Segmentation object ``<folder>.dcm`` that references the series (:mod:`perspective_unet.data.dicom_seg`).
Probability maps go beside the label map as ``<name>_probabilities.nii.gz`` (float32, one channel per class along
the fourth axis, same affine) for 3D NIfTI outputs and as ``<name>_probabilities.npz`` (key ``probabilities``,
float16 (classes, *image shape), and ``class_names``) otherwise.

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

from perspective_unet.data.dicom_seg import DICOM_SEG_SUFFIX
from perspective_unet.data.io import NIFTI_SUFFIXES, PICTURE_SUFFIXES, SITK_SUFFIXES, full_suffix
from perspective_unet.data.layouts.nnunet_files import split_channel
from perspective_unet.errors import InputError
from perspective_unet.outputs import output_lock, remove_stale_temporaries
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predictor import OnnxPredictor, ScanPredictor

__all__ = [
    "LABEL_SUFFIXES",
    "OUTPUT_FORMATS",
    "channel_groups",
    "find_inputs",
    "output_name",
    "predict_files",
    "predict_onnx",
    "probability_path",
]

logger = logging.getLogger(__name__)

CHANNEL_SUFFIX = "_0000"
# auto: the input's own format (see the module docstring); dicom-seg: a DICOM Segmentation of a DICOM series.
OUTPUT_FORMATS = ("auto", "dicom-seg")
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


def _channel_key(path: Path) -> tuple[tuple[Path, str, str], int] | None:
    """((folder, case, suffix), channel) of a file named ``<case>_<XXXX><suffix>``; None for other names."""
    if path.is_dir():
        return None
    suffix = full_suffix(path)
    parsed = split_channel(path.name[: -len(suffix)] if suffix else path.name)
    return None if parsed is None else ((path.parent, parsed[0], suffix), parsed[1])


def channel_groups(inputs: Sequence[Path], channels: int, names: Sequence[str] = ()) -> list[tuple[Path, ...]]:
    """The files of each case to segment, one per input channel in channel order (see the module docstring).

    Args:
        inputs: The image files and DICOM folders found (:func:`find_inputs`).
        channels: The model's input channels.
        names: The channels' names, for messages.

    Raises:
        InputError: A case lacks a channel file, or has one the model does not read; an input is not named
            ``<case>_<XXXX>`` (or is a DICOM folder) for a model of several channels.
    """
    keyed = [(path, _channel_key(path)) for path in inputs]
    if channels == 1:
        cases: dict[tuple[Path, str, str], dict[int, Path]] = {}
        for path, key in keyed:
            if key is not None:
                cases.setdefault(key[0], {})[key[1]] = path
        for files in cases.values():
            if 0 in files and len(files) > 1:
                first, other = files[0], files[min(c for c in files if c > 0)]
                raise InputError(
                    f"{other} and {first} are channels of one case but the model reads one channel; give only the "
                    "channel it was trained on."
                )
        return [(path,) for path in inputs]
    described = f" ({', '.join(names)})" if names else ""
    groups: dict[tuple[Path, str, str], tuple[Path, ...]] = {}
    for path, key in keyed:
        if key is None:
            raise InputError(
                f"{path}: the model reads {channels} input channels{described}, one file per channel: name a case's "
                f"files <case>_0000 ... <case>_{channels - 1:04d} with the same suffix."
            )
        (folder, case, suffix), channel = key
        if channel >= channels:
            raise InputError(f"{path} is channel {channel} but the model reads {channels} channels{described}.")
        if key[0] not in groups:
            files = tuple(folder / f"{case}_{c:04d}{suffix}" for c in range(channels))
            missing = next((f for f in files if not f.is_file()), None)
            if missing is not None:
                raise InputError(
                    f"{missing} is missing: case {case!r} needs one file per input channel of the model{described}."
                )
            groups[key[0]] = files
    return list(groups.values())


def output_name(input_path: str | os.PathLike[str], output_format: str = "auto") -> str:
    """The file name of the label map of an input (see the module docstring for the rules).

    Example:
        >>> output_name("scans/case_0000.nii.gz"), output_name("photos/x.jpg"), output_name("dicom/ct_head")
        ('case.nii.gz', 'x.png', 'ct_head.nii.gz')
        >>> output_name("dicom/ct_head", "dicom-seg")
        'ct_head.dcm'
    """
    path = Path(input_path)
    suffix = full_suffix(path)
    if output_format == "dicom-seg":
        return f"{path.name}{DICOM_SEG_SUFFIX}"
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
    return not output.is_dir() and full_suffix(output) in (*LABEL_SUFFIXES, DICOM_SEG_SUFFIX, ".jpg", ".jpeg")


def _check_format(inputs: Sequence[Path], output: Path, output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"--output-format {output_format} is not one of {', '.join(OUTPUT_FORMATS)}.")
    if output_format == "dicom-seg":
        for source in inputs:
            if not source.is_dir():
                raise InputError(
                    f"{source} is not a DICOM series folder; --output-format dicom-seg references the DICOM series a "
                    "label map was predicted from. Give DICOM series folders, or drop --output-format."
                )
        if _is_file_target(output) and full_suffix(output) != DICOM_SEG_SUFFIX:
            raise InputError(f"{output}: a DICOM SEG file is named .dcm; give a .dcm file name or a folder.")
    elif full_suffix(output) == DICOM_SEG_SUFFIX and not output.is_dir():
        raise InputError(f"{output}: .dcm outputs are DICOM SEG files; add --output-format dicom-seg.")


def _plan(
    inputs: Sequence[tuple[Path, ...]],
    collection: bool,
    output: Path,
    save_probabilities: bool,
    output_format: str = "auto",
) -> list[_Job]:
    if _is_file_target(output):
        if collection or len(inputs) > 1:
            raise InputError(f"{output} is a file name but there are {len(inputs)} inputs; give a folder as output.")
        if full_suffix(output) in (".jpg", ".jpeg"):
            raise InputError(f"{output}: JPEG would alter class ids (lossy); write label maps as .png.")
        targets = [output]
    else:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output} is an existing file; give a folder (or a new path) for the outputs.")
        targets = [output / output_name(p[0], output_format) for p in inputs]
    jobs = []
    seen: dict[Path, Path] = {}
    for sources, target in zip(inputs, targets):
        source = sources[0]
        if target.resolve() in seen:
            raise InputError(
                f"{seen[target.resolve()]} and {source} would both be written to {target}; rename one of them."
            )
        if any(target.resolve() == path.resolve() for path in sources):
            raise InputError(f"the output {target} is the input itself; choose another output path.")
        seen[target.resolve()] = source
        ndim = 2 if full_suffix(source) in PICTURE_SUFFIXES else 3
        probs = probability_path(target, ndim) if save_probabilities else None
        jobs.append(_Job(sources, target, probs, output_format))
    return jobs


@dataclass
class _Job:
    sources: tuple[Path, ...]
    labels: Path
    probabilities: Path | None = None
    output_format: str = "auto"

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
    output_format: str = "auto",
) -> list[Path]:
    """Segment image files, DICOM series or a folder of them with the predictor ``make_predictor`` builds, and write
    one uint8 label map per input.

    Every output path is checked before anything is written: with existing outputs and no ``overwrite`` nothing is
    done. The output format is checked before the model is loaded; the model then says how many files make one input
    (its input channels). Each file is written under a temporary name and renamed, so an error leaves no
    half-written file; outputs of the inputs before a failing one stay (they are complete).

    Args:
        make_predictor: Builds the predictor (called once).
        inputs: One path (file, DICOM folder, or folder of inputs) or several; for a model of several input
            channels, the files of a case are grouped (:func:`channel_groups`).
        output: A folder (created if needed), or a file name when there is a single input file.
        settings: The inference settings (``save_probabilities``: class probabilities beside each label map).
        overwrite: Replace existing outputs.
        progress: Show a progress bar over the inputs.
        series: The DICOM series (SeriesInstanceUID) to read from DICOM folders that hold several.
        output_format: ``auto`` (the input's format, see the module docstring) or ``dicom-seg`` (a DICOM
            Segmentation per DICOM series input; any other input is refused before anything is written).

    Returns:
        The label maps written, in input order.

    Raises:
        InputError: an input is missing or unreadable (named in the message), does not fit the model (a picture into
            a CT or MR model, a CT into an MR model) or lacks a channel, the outputs clash, or an input is not a DICOM
            series with ``output_format="dicom-seg"``.
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
    _check_format(found, Path(output), output_format)
    predictor = make_predictor()
    groups = channel_groups(found, predictor.plan.num_channels, predictor.channel_names)
    jobs = _plan(groups, collection, Path(output), settings.save_probabilities, output_format)
    folder = jobs[0].labels.parent
    # One predict command per output folder: a second one would silently replace the first one's outputs.
    with output_lock(folder, "predict"):
        remove_stale_temporaries(folder)
        _check_overwrite(jobs, overwrite)
        predictor.check_resources()
        logger.info("predicting %d input(s), %s", len(jobs), predictor.describe())
        written: list[Path] = []
        for job in tqdm(jobs, desc="predict", unit="image", disable=not progress or len(jobs) == 1, dynamic_ncols=True):
            try:
                written.append(
                    predictor.predict_file(job.sources, job.labels, job.probabilities, series, job.output_format)
                )
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
    output_format: str = "auto",
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
        output_format: ``auto`` or ``dicom-seg`` (see :func:`predict_files`).

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
        make_predictor,
        inputs,
        output,
        settings,
        overwrite=overwrite,
        progress=progress,
        series=series,
        output_format=output_format,
    )
