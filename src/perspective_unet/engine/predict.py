"""Prediction of image files: NIfTI, DICOM series, other SimpleITK formats and PNG/JPG pictures to label maps.

Each input is read with its geometry, reoriented to the orientation the model was trained in (``to_canonical``; only
flips and axis permutations), normalised as the training data were, segmented slice by slice as the checkpoint's plan
says (:func:`~perspective_unet.engine.sliding_window.predict_with_plan`: the paper protocol zooms each slice to the
training size; the spacing protocol resamples it to the plan's pixel spacing, slides a window over it and resamples
the probabilities back), and its labels are put back on the input's own voxel grid (``from_canonical``) and written
as uint8 with the input's affine and header.

Output names: a label map keeps its input's name, with nnU-Net's channel suffix ``_0000`` dropped
(``case_0000.nii.gz`` -> ``case.nii.gz``). NIfTI, ``.mha`` and ``.nrrd`` inputs keep their format; a DICOM series
folder ``ct/`` gives ``ct.nii.gz``; other 3D formats give ``.nii.gz``; pictures give a ``.png`` whose pixel values
are class ids. Probability maps go beside the label map as ``<name>_probabilities.nii.gz`` (float32, one channel per
class along the fourth axis, same affine) for 3D NIfTI outputs and as ``<name>_probabilities.npz`` (key
``probabilities``, float16 (classes, *image shape), and ``class_names``) otherwise.

Intensities: the checkpoint's plan (or, for checkpoints without one, ``dataset["intensity"]``) says how the training
data were normalised, first to their stored [0, 1] range:
``{"kind": "ct_window", "window": [low, high]}`` (clip HU, scale to [0, 1]), ``{"kind": "percentile_minmax",
"percentiles": [0.5, 99.5]}`` (per volume), ``{"kind": "picture"}`` (8-bit / 255, 16-bit / 65535) or
``{"kind": "unit"}`` (already in [0, 1]). Checkpoints without it (older ones, converted released checkpoints) fall back
to the CT window written in their ``normalisation`` text, to MR percentiles for MR data, and otherwise to the Synapse
window [-125, 275] HU with a warning; ``window`` / ``mr_normalise`` override all of this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from perspective_unet.data.io import (
    CANONICAL_ORIENTATION,
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    SITK_SUFFIXES,
    canonical_spacing,
    from_canonical,
    full_suffix,
    read_image,
    to_canonical,
    write_label_map,
)
from perspective_unet.data.normalise import MR_PERCENTILES, SYNAPSE_HU_WINDOW, ct_window
from perspective_unet.data.normalise import normalise_intensity as apply_intensity
from perspective_unet.data.planning import dataset_intensity
from perspective_unet.engine.runtime import check_memory, resolve_device
from perspective_unet.engine.sliding_window import predict_with_plan
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, picture_to_unit
from perspective_unet.outputs import output_lock, remove_stale_temporaries, write_all
from perspective_unet.plan import Plan

__all__ = [
    "INTENSITY_KINDS",
    "Predictor",
    "find_inputs",
    "normalise_intensity",
    "output_name",
    "predict_file",
    "predict_path",
    "probability_path",
    "resolve_intensity",
]

logger = logging.getLogger(__name__)

INTENSITY_KINDS = ("ct_window", "percentile_minmax", "picture", "unit")
CHANNEL_SUFFIX = "_0000"
# Formats a label map may be written in; JPEG is left out on purpose (lossy compression changes class ids).
LABEL_SUFFIXES = (*NIFTI_SUFFIXES, ".png", ".bmp", ".tif", ".tiff", ".mha", ".nrrd")
_KEEP_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".nrrd")
# Files of an input folder: every readable image format but the parts of multi-file formats.
_INPUT_SUFFIXES = tuple(s for s in (*NIFTI_SUFFIXES, *PICTURE_SUFFIXES, *SITK_SUFFIXES) if s != ".img")


# --------------------------------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------------------------------


def resolve_intensity(
    dataset_info: dict[str, Any] | None,
    *,
    window: Sequence[float] | None = None,
    mr_normalise: bool = False,
) -> dict[str, Any] | None:
    """The intensity normalisation to apply to new images, from the user's choice or the training data's record.

    Args:
        dataset_info: The checkpoint's ``dataset`` entry (``info["dataset"]`` of ``load_for_inference``).
        window: A CT window (low, high) in HU chosen by the user; overrides the checkpoint.
        mr_normalise: Use per-volume MR percentile normalisation; overrides the checkpoint.

    Returns:
        A spec dict (see the module docstring), or ``None`` when nothing is known: :func:`normalise_intensity` then
        uses [0, 1] data as they are and assumes the Synapse CT window otherwise, with a warning.

    Example:
        >>> resolve_intensity({"intensity": {"kind": "ct_window", "window": [-125, 275]}})
        {'kind': 'ct_window', 'window': [-125, 275]}
        >>> resolve_intensity({}, window=(-160, 240))
        {'kind': 'ct_window', 'window': [-160.0, 240.0]}
        >>> resolve_intensity({"modality": "MR"})
        {'kind': 'percentile_minmax', 'percentiles': [0.5, 99.5]}
    """
    if window is not None and mr_normalise:
        raise ValueError("choose either a CT window (--window) or MR normalisation (--mr-normalise), not both.")
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"a CT window needs LOW < HIGH, got {low:g} {high:g}.")
        return {"kind": "ct_window", "window": [low, high]}
    if mr_normalise:
        return {"kind": "percentile_minmax", "percentiles": list(MR_PERCENTILES)}
    info = dataset_info or {}
    spec = info.get("intensity")
    if spec:
        _check_spec(spec)
        return dict(spec)
    recorded = dataset_intensity(info)  # the window in the normalisation text, MR percentiles, pictures
    return None if recorded is None else recorded.stored_range()


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or spec.get("kind") not in INTENSITY_KINDS:
        raise ValueError(
            f"unknown intensity normalisation {spec!r}; expected a dict with kind in {INTENSITY_KINDS}. Pass "
            "--window LOW HIGH or --mr-normalise to choose one."
        )
    if spec["kind"] == "ct_window" and len(spec.get("window", ())) != 2:
        raise ValueError(f"intensity spec {spec!r} needs 'window': [low, high].")
    if spec["kind"] == "percentile_minmax" and len(spec.get("percentiles", MR_PERCENTILES)) != 2:
        raise ValueError(f"intensity spec {spec!r} needs 'percentiles': [low, high].")


def normalise_intensity(
    volume: np.ndarray,
    intensity_spec: dict[str, Any] | None,
    *,
    source: str | os.PathLike[str] | None = None,
    warn: bool = True,
) -> np.ndarray:
    """Map raw intensities to the [0, 1] float32 range the model was trained on.

    Args:
        volume: Raw voxels (any shape).
        intensity_spec: A spec (see the module docstring) or ``None``: data already in [0, 1] are used as they are,
            anything else is taken for CT and windowed to the Synapse window [-125, 275] HU with a warning.
        source: The file the voxels came from, named in errors and warnings.
        warn: Log the fallback's warning (a caller predicting many files warns once).

    Returns:
        float32 array of the same shape with values in [0, 1].

    Raises:
        InputError: the volume holds NaN or infinite values.

    Example:
        >>> normalise_intensity(np.array([-1000, 75, 3000]), {"kind": "ct_window", "window": [-125, 275]})
        array([0. , 0.5, 1. ], dtype=float32)
    """
    name = str(source) if source is not None else "the image"
    volume = np.asarray(volume)
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise InputError(f"{name} contains NaN or infinite voxels; clean or mask them before predicting.")
    if intensity_spec is None:
        if volume.size and volume.dtype.kind == "f" and volume.min() >= 0 and volume.max() <= 1:
            return volume.astype(np.float32)
        if warn:
            hint = "" if volume.size == 0 or volume.min() < 0 else f" (its minimum {volume.min():g} is unusual for HU)"
            logger.warning(
                "%s: the checkpoint does not record how its training intensities were normalised; assuming CT in HU "
                "with the Synapse window [%g, %g]%s. Pass --window LOW HIGH or --mr-normalise if that is wrong.",
                name, *SYNAPSE_HU_WINDOW, hint,
            )
        return ct_window(volume, SYNAPSE_HU_WINDOW)
    _check_spec(intensity_spec)
    if intensity_spec["kind"] == "picture":
        return picture_to_unit(volume, name)
    return apply_intensity(volume, intensity_spec)


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
        p for p in path.iterdir()
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


def _write_probabilities(probabilities: np.ndarray, meta: dict[str, Any], path: Path, class_names: Any) -> None:
    """Write (C, *image shape) probabilities to ``path``: 4D float32 NIfTI (channels last) or float16 npz."""
    if path.name.endswith(".npz"):
        extra = {"class_names": np.asarray(class_names, dtype=str)} if class_names else {}
        np.savez_compressed(path, probabilities=probabilities.astype(np.float16), **extra)
        return
    data = np.moveaxis(probabilities, 0, -1).astype(np.float32)
    header = meta.get("header")
    header = header.copy() if isinstance(header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(data, np.asarray(meta["affine"], dtype=np.float64), header=header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("vector", (), name="class probabilities")
    nib.save(image, str(path))


# --------------------------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A model with everything needed to segment new images as its training data were prepared.

    Build it with :meth:`from_checkpoint`, or directly around a model.

    Args:
        model: The segmentation model (put in eval mode).
        img_size: The (height, width) the model was trained at (paper protocol, when no ``plan`` is given).
        intensity: Intensity spec of the training data's stored range (see :func:`resolve_intensity`), or None for
            the CT fallback (when no ``plan`` is given).
        intensity_from_user: Whether the spec was chosen by the user; if not, pictures (which hold no Hounsfield
            units) are scaled by their type's range when the checkpoint names a CT window.
        orientation: Canonical orientation code the training volumes were cut in (``"SPL"``, ``"stored"``, ...).
        class_names: Names by class id, stored with probability maps.
        tta: Flip test-time augmentation.
        batch_size: Slices (paper protocol) or windows (spacing protocol) per forward pass.
        resampler: ``"torch"`` or ``"scipy"`` (paper protocol, see
            :func:`~perspective_unet.engine.inference.predict_volume`).
        device: Where to run; default the model's device.
        plan: The model's plan (protocol, spacing, patch size, intensity, context slices); it supersedes
            ``img_size`` and ``intensity``.

    Example:
        >>> import perspective_unet
        >>> model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3)
        >>> predictor = Predictor(model, img_size=(32, 32), intensity={"kind": "unit"})
        >>> predictor.predict_canonical(np.random.rand(2, 40, 36).astype("float32")).shape
        (2, 40, 36)
    """

    model: torch.nn.Module
    img_size: tuple[int, int] = (224, 224)
    intensity: dict[str, Any] | None = None
    intensity_from_user: bool = False
    orientation: str = CANONICAL_ORIENTATION
    class_names: list[str] = field(default_factory=list)
    tta: bool = False
    batch_size: int = 16
    resampler: str = "torch"
    device: torch.device | None = None
    plan: Plan | None = None
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        if self.device is None:
            self.device = next(self.model.parameters()).device
        if self.plan is None:
            if self.intensity is not None:
                _check_spec(self.intensity)
            # Without a plan: the paper protocol at img_size; an unknown intensity keeps the CT fallback of prepare().
            spec = IntensitySpec.from_dict(self.intensity) if self.intensity else IntensitySpec("unit")
            self.plan = Plan("paper", tuple(int(s) for s in self.img_size), spec)
        else:
            self.intensity = self.plan.intensity.to_dict()
        self.img_size = (int(self.plan.patch_size[0]), int(self.plan.patch_size[1]))

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        window: Sequence[float] | None = None,
        mr_normalise: bool = False,
        orientation: str | None = None,
        img_size: Sequence[int] | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a checkpoint and read its plan (or training size), classes, orientation and intensity normalisation.

        Args:
            checkpoint: A ``.pt`` written by ``train`` or ``convert-official``.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            window: CT window overriding the checkpoint's normalisation.
            mr_normalise: Per-volume MR normalisation overriding the checkpoint's.
            orientation: Canonical orientation overriding the checkpoint's (default ``"SPL"`` when not recorded).
            img_size: Model input size (paper protocol) or sliding window (spacing protocol) overriding the plan's.
            **options: ``tta``, ``batch_size``, ``resampler``.
        """
        from perspective_unet.engine.evaluate import load_for_inference

        torch_device = device if isinstance(device, torch.device) else resolve_device(device)
        model, info = load_for_inference(checkpoint, torch_device)
        return cls.from_model(
            model, info, device=torch_device, window=window, mr_normalise=mr_normalise, orientation=orientation,
            img_size=img_size, **options,
        )

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        info: dict[str, Any] | None = None,
        *,
        device: torch.device | None = None,
        window: Sequence[float] | None = None,
        mr_normalise: bool = False,
        orientation: str | None = None,
        img_size: Sequence[int] | None = None,
        **options: Any,
    ) -> Predictor:
        """Wrap a model; ``info`` is ``load_for_inference``'s (``plan`` or ``img_size``, and ``dataset``)."""
        info = info or {}
        dataset = dict(info.get("dataset") or {})
        recorded = dataset.get("orientation")
        if device is not None:
            model = model.to(device)
        plan = info.get("plan")
        plan = Plan.from_dict(plan) if isinstance(plan, dict) else plan
        intensity = resolve_intensity(dataset, window=window, mr_normalise=mr_normalise)
        if plan is not None:
            if window is not None or mr_normalise:
                plan = plan.replace(intensity=plan.intensity.with_stored_range(IntensitySpec.from_dict(intensity)))
            if img_size is not None:
                plan = plan.replace(patch_size=tuple(int(s) for s in img_size))
        size = img_size or info.get("img_size") or (224, 224)
        return cls(
            model,
            img_size=(int(size[0]), int(size[1])),
            intensity=intensity,
            intensity_from_user=window is not None or mr_normalise,
            orientation=orientation or (recorded if recorded and recorded != "2d" else CANONICAL_ORIENTATION),
            class_names=list(dataset.get("class_names") or []),
            device=device,
            plan=plan,
            **options,
        )

    def spec_for(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The stored-range spec for one image: pictures get their type's range unless the user chose otherwise."""
        is_picture = meta.get("format") == "picture"
        if is_picture and not self.intensity_from_user and (self.intensity or {}).get("kind") in (None, "ct_window"):
            return {"kind": "picture"}
        return self.intensity

    def prepare(self, array: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """Raw voxels of ``read_image`` to the canonical (Z, H, W) volume of stored values in [0, 1]."""
        spec = self.spec_for(meta)
        unit = normalise_intensity(array, spec, source=meta.get("path"), warn=not self._warned)
        self._warned = self._warned or spec is None  # the CT fallback's warning is given once per predictor
        return to_canonical(unit, meta, self.orientation)

    def predict_canonical(
        self, volume: np.ndarray, return_probabilities: bool = False, spacing: Sequence[float] | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Labels (Z, H, W) uint8 [and probabilities (C, Z, H, W) float16] of a canonical volume in [0, 1].

        Args:
            volume: Canonical stored values.
            return_probabilities: Also return the class probabilities.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
        """
        return predict_with_plan(
            self.model, volume, self.plan, spacing=spacing, batch_size=self.batch_size, device=self.device,
            tta=self.tta, resampler=self.resampler, return_probabilities=return_probabilities,
        )

    def predict_image(
        self, array: np.ndarray, meta: dict[str, Any], return_probabilities: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Labels of raw voxels from ``read_image``, in the image's own stored order and shape.

        Returns:
            uint8 labels of ``array``'s shape, and with ``return_probabilities`` also float16 (C, *array.shape).
        """
        spacing = canonical_spacing(meta, self.orientation)[1:]
        try:
            result = self.predict_canonical(self.prepare(array, meta), return_probabilities, spacing)
        except InputError as exc:
            raise InputError(f"{meta.get('path', 'the image')}: {exc}") from None
        labels, probabilities = result if return_probabilities else (result, None)
        labels = from_canonical(labels, meta, self.orientation)
        if probabilities is None:
            return labels
        return labels, np.stack([from_canonical(p, meta, self.orientation) for p in probabilities])

    def predict_file(
        self,
        input_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        probabilities_path: str | os.PathLike[str] | None = None,
        series: str | None = None,
    ) -> Path:
        """Segment one image file (or DICOM folder) and write its label map (and probabilities) atomically.

        Overwrites without asking; :func:`predict_path` checks for existing outputs first. ``series`` chooses one
        DICOM series (SeriesInstanceUID) of a folder that holds several.
        """
        array, meta = read_image(input_path, series=series if Path(input_path).is_dir() else None)
        if array.size == 0:
            raise InputError(f"{input_path} holds no voxels (shape {array.shape}).")
        result = self.predict_image(array, meta, return_probabilities=probabilities_path is not None)
        labels, probabilities = result if probabilities_path is not None else (result, None)
        writers: dict[Path, Any] = {Path(output_path): lambda path: write_label_map(labels, meta, path)}
        if probabilities is not None and probabilities_path is not None:
            writers[Path(probabilities_path)] = lambda path: _write_probabilities(probabilities, meta, path,
                                                                                   self.class_names)
        return write_all(writers)[0]  # the label map and its probabilities appear together or not at all


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def predict_file(
    model_or_checkpoint: torch.nn.Module | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Segment one image and write its label map with the image's geometry; :func:`predict_path` for one input.

    Args:
        model_or_checkpoint: A checkpoint path, or a model (then pass ``info``, see :func:`predict_path`).
        input_path: A NIfTI/SimpleITK file, a DICOM series folder or a PNG/JPG picture.
        output_path: The label map file, or a folder to write it into under :func:`output_name`.
        **options: Keyword arguments of :func:`predict_path` (``tta``, ``overwrite``, ``window``, ``info``, ...).

    Returns:
        The label map's path.

    Example:
        >>> predict_file("runs/synapse/best.pt", "ct/case_0000.nii.gz", "pred/")  # doctest: +SKIP
        PosixPath('pred/case.nii.gz')
    """
    options.setdefault("progress", False)
    return predict_path(model_or_checkpoint, input_path, output_path, **options)[0]


def predict_path(
    checkpoint: torch.nn.Module | str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    tta: bool = False,
    save_probabilities: bool = False,
    overwrite: bool = False,
    batch_size: int = 16,
    device: str | torch.device = "auto",
    window: Sequence[float] | None = None,
    mr_normalise: bool = False,
    orientation: str | None = None,
    img_size: Sequence[int] | None = None,
    resampler: str = "torch",
    info: dict[str, Any] | None = None,
    progress: bool = True,
    series: str | None = None,
) -> list[Path]:
    """Segment image files, DICOM series or a folder of them, and write one uint8 label map per input.

    Every output path is checked before anything is written: with existing outputs and no ``overwrite`` nothing is
    done. Each file is written under a temporary name and renamed, so an error leaves no half-written file; outputs of
    the inputs before a failing one stay (they are complete).

    Args:
        checkpoint: A checkpoint path, or a model (then ``info`` supplies ``plan`` or ``img_size``, and ``dataset``
            as ``load_for_inference`` returns them; without it the paper protocol at 224x224 and the CT fallback are
            assumed).
        inputs: One path (file, DICOM folder, or folder of inputs) or several.
        output: A folder (created if needed), or a file name when there is a single input file.
        tta: Average over flips.
        save_probabilities: Also write class probabilities beside each label map.
        overwrite: Replace existing outputs.
        batch_size: Slices (paper protocol) or sliding windows (spacing protocol) per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        window: CT window (low, high) in HU overriding the checkpoint's normalisation.
        mr_normalise: Per-volume MR normalisation overriding the checkpoint's.
        orientation: Canonical orientation overriding the checkpoint's.
        img_size: Model input size (paper protocol) or window size (spacing protocol) overriding the plan's.
        resampler: ``torch`` or ``scipy`` (paper protocol).
        info: With a model instead of a checkpoint: ``plan`` (or ``img_size``) and ``dataset`` of its training.
        progress: Show a progress bar over the inputs.
        series: The DICOM series (SeriesInstanceUID) to read from DICOM folders that hold several; without it such a
            folder is refused with the list of its series.

    Returns:
        The label maps written, in input order.

    Raises:
        InputError: an input is missing or unreadable (named in the message), or the outputs clash.
        FileExistsError: an output exists and ``overwrite`` is False.

    Example:
        >>> predict_path("runs/synapse/best.pt", "imagesTs/", "predictions/", tta=True)  # doctest: +SKIP
        [PosixPath('predictions/case1.nii.gz'), PosixPath('predictions/case2.nii.gz')]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise InputError("no inputs given.")
    found: list[Path] = []
    collection = len(paths) > 1
    for path in paths:
        files, many = find_inputs(path)
        found.extend(files)
        collection = collection or many
    jobs = _plan(found, collection, Path(output), save_probabilities)
    folder = jobs[0].labels.parent
    # One predict command per output folder: a second one would silently replace the first one's outputs.
    with output_lock(folder, "predict"):
        remove_stale_temporaries(folder)
        _check_overwrite(jobs, overwrite)

        options = {"tta": tta, "batch_size": batch_size, "resampler": resampler}
        choices = {"window": window, "mr_normalise": mr_normalise, "orientation": orientation, "img_size": img_size}
        if isinstance(checkpoint, torch.nn.Module):
            torch_device = None if device == "auto" else (device if isinstance(device, torch.device)
                                                          else resolve_device(device))
            predictor = Predictor.from_model(checkpoint, info, device=torch_device, **choices, **options)
        else:
            predictor = Predictor.from_checkpoint(checkpoint, device=device, **choices, **options)
        plan = predictor.plan
        height, width = plan.patch_size
        check_memory(predictor.model, batch_size * height * width, predictor.device, training=False,
                     what=f"predict with {batch_size} x {height} x {width} pixels per forward pass")
        where = (f"at {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm in {plan.patch_size[0]}x{plan.patch_size[1]} "
                 "windows" if plan.protocol == "spacing" else f"zoomed to {plan.patch_size[0]}x{plan.patch_size[1]}")
        logger.info("predicting %d input(s), %s protocol %s, orientation %s, intensity %s", len(jobs), plan.protocol,
                    where, predictor.orientation, plan.intensity.describe() if predictor.intensity else
                    "fallback (CT window)")

        written: list[Path] = []
        for job in tqdm(jobs, desc="predict", unit="image", disable=not progress or len(jobs) == 1, dynamic_ncols=True):
            try:
                written.append(predictor.predict_file(job.source, job.labels, job.probabilities, series))
            except InputError as exc:
                if written:
                    raise InputError(f"{exc} ({len(written)} of {len(jobs)} outputs, for the inputs before it, were "
                                     "written and are complete.)") from exc
                raise
        return written
