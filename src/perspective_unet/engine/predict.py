"""Prediction of image files with a PyTorch model (a checkpoint, model folder, run folder, ensemble or a bare model).

Each input is read with its geometry, reoriented to the orientation the model was trained in (``to_canonical``; only
flips and axis permutations), normalized as the training data were, segmented slice by slice as the checkpoint's plan
says (its inferer, :mod:`perspective_unet.engine.inferers`: the paper protocol zooms each slice to the training size;
the spacing protocol resamples it to the plan's pixel spacing, slides a window over it and resamples the
probabilities back), and its labels are put back on the input's own voxel grid (``from_canonical``) and written
as uint8 with the input's affine and header. Inputs, output names and the safe writing of the outputs are shared with
the light ONNX runtime: :mod:`perspective_unet.runtime.predict`, whose docstring gives the naming rules.

Intensities: the checkpoint's plan (or, for checkpoints without one, ``dataset["intensity"]``) says how the training
data were normalized, first to their stored [0, 1] range:
``{"kind": "ct_window", "window": [low, high]}`` (clip HU, scale to [0, 1]), ``{"kind": "percentile_minmax",
"percentiles": [0.5, 99.5]}`` (per volume), ``{"kind": "picture"}`` (8-bit / 255, 16-bit / 65535) or
``{"kind": "unit"}`` (already in [0, 1]). Checkpoints without it (older ones, converted released checkpoints) fall back
to the CT window written in their ``normalization`` text, to MR percentiles for MR data, and otherwise to the Synapse
window [-125, 275] HU with a warning; the settings' ``window`` / ``mr_normalize`` override all of this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from perspective_unet.engine.predictor import Predictor
from perspective_unet.runs import LoadedModel, ModelSource
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predict import predict_files

__all__ = ["predict_file", "predict_path"]


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
        output_path: The label map file, or a folder to write it into under
            :func:`~perspective_unet.runtime.predict.output_name`.
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


def predict_path(
    source: torch.nn.Module | LoadedModel | ModelSource | Sequence[ModelSource],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    settings: InferenceSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    series: str | None = None,
    output_format: str = "auto",
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
        inputs: One path (file, DICOM folder, or folder of inputs) or several; for a model of several input
            channels, the files of a case are grouped (:func:`~perspective_unet.runtime.predict.channel_groups`).
        output: A folder (created if needed), or a file name when there is a single input file.
        settings: The inference settings: ``tta``, ``batch_size``, ``device``, ``patch_size``, ``resampler``,
            ``save_probabilities`` (class probabilities beside each label map), ``window`` / ``mr_normalize`` (the
            stored range of the inputs instead of the model's), ``orientation``, ``allow_modality_mismatch``
            (segment inputs that do not fit the model instead of refusing them), ``postprocessing``.
        overwrite: Replace existing outputs.
        progress: Show a progress bar over the inputs.
        series: The DICOM series (SeriesInstanceUID) to read from DICOM folders that hold several; without it such a
            folder is refused with the list of its series.
        output_format: ``auto`` (the input's format) or ``dicom-seg`` (a DICOM Segmentation per DICOM series input;
            see :mod:`perspective_unet.runtime.predict`).

    Returns:
        The label maps written, in input order.

    Raises:
        InputError: an input is missing or unreadable (named in the message), does not fit the model (a picture into
            a CT or MR model, a CT into an MR model) or lacks a channel, the outputs clash, or an input is not a DICOM
            series with ``output_format="dicom-seg"``.
        FileExistsError: an output exists and ``overwrite`` is False.

    Example:
        >>> predict_path("runs/synapse/best.pt", "imagesTs/", "predictions/", InferenceSettings(tta=True))
        ... # doctest: +SKIP
        [PosixPath('predictions/case1.nii.gz'), PosixPath('predictions/case2.nii.gz')]
    """
    settings = settings or InferenceSettings()

    def make_predictor() -> Predictor:
        model = LoadedModel(source) if isinstance(source, torch.nn.Module) else source
        # A bare model has no record of its training: the paper protocol at 224 x 224, the CT fallback.
        return Predictor.from_source(model, settings)

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
