"""Predictors: a network with everything needed to segment new images as its training data were prepared.

:class:`ScanPredictor` is everything of a predictor but the network, shared by both paths: the plan, orientation and
stored range a model's :class:`~perspective_unet.models.inference_info.InferenceInfo` and the user's
:class:`~perspective_unet.runtime.inference_settings.InferenceSettings` give (:meth:`ScanPredictor.resolve`), raw voxels
to the canonical volume of stored values (:meth:`ScanPredictor.prepare`, with the CT fallback for models that record no
normalization), labels back on the image's own grid (:meth:`ScanPredictor.predict_image`) and files in and out
(:meth:`ScanPredictor.predict_file`). Its subclasses say how a canonical volume is segmented:
:class:`~perspective_unet.engine.predictor.Predictor` with PyTorch, :class:`OnnxPredictor` with ONNX Runtime and NumPy
(no PyTorch).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.channels import input_mismatch
from perspective_unet.data.checks import check_channel_grid
from perspective_unet.data.dicom_seg import write_dicom_seg
from perspective_unet.data.io import read_image, write_label_map, write_probabilities
from perspective_unet.data.orientation import CANONICAL_ORIENTATION, canonical_spacing, from_canonical, to_canonical
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, normalize_intensity, resolve_intensity
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.onnx_session import OnnxSession
from perspective_unet.outputs import write_all
from perspective_unet.plan import Plan
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.inferers import NumpyInferer, numpy_inferer_for

__all__ = ["OnnxPredictor", "ScanPredictor"]

Prediction = np.ndarray | tuple[np.ndarray, np.ndarray]


class ScanPredictor(ABC):
    """Everything of a predictor but the network (see the module docstring); subclasses are dataclasses holding these
    attributes and their network.

    Attributes:
        plan: The model's plan (protocol, spacing, patch size, intensity, context slices), with the settings' patch
            size and the user's stored range applied.
        settings: Batch size, mirroring and the other inference settings.
        orientation: Canonical orientation code the training volumes were cut in (``"SPL"``, ``"stored"``, ...).
        class_names: Names by class id, stored with probability maps.
        intensity_known: Whether the plan's stored range is known; if not, new images get the CT fallback (see
            :func:`~perspective_unet.intensity.normalize_intensity`).
        intensity_from_user: Whether the stored range was chosen by the user; if not, pictures (which hold no
            Hounsfield units) are scaled by their type's range when the model expects a CT window (and the settings
            allow a picture into a CT model at all).
        plan_source: The file the plan was read from, named when a size it sets cannot be met.
        channel_names: The input channels' names of a model of several (empty for one channel).
    """

    plan: Plan
    settings: InferenceSettings
    orientation: str
    class_names: Sequence[str]
    intensity_known: bool
    intensity_from_user: bool
    plan_source: Path | None
    channel_names: Sequence[str]
    _warned: bool = False

    @staticmethod
    def resolve(info: InferenceInfo, settings: InferenceSettings, num_classes: int | None = None) -> dict[str, Any]:
        """The predictor's attributes for a model with what its training recorded (``info``; without a plan the
        paper protocol at the training size, and the CT fallback when the stored range is unknown too).

        Args:
            info: What the model's training recorded.
            settings: The inference settings.
            num_classes: The classes the network predicts (checked against the settings' post-processing).

        Raises:
            InputError: ``--window`` / ``--mr-normalize`` for a model of several channels, or post-processing of
                other classes than the model's.
        """
        chosen = resolve_intensity(info.stored_intensity(), window=settings.window, mr_normalize=settings.mr_normalize)
        plan = info.plan
        if plan is not None and plan.num_channels > 1 and settings.overrides_intensity:
            raise InputError(
                "--window and --mr-normalize choose the normalization of one-channel models; this model reads "
                f"{plan.num_channels} channels ({', '.join(info.channel_names)}), each normalized as in its training."
            )
        if plan is not None and settings.overrides_intensity:
            plan = plan.replace(intensity=plan.intensity.with_stored_range(chosen))  # type: ignore[arg-type]
        elif plan is None:
            plan = Plan("paper", info.img_size, chosen or IntensitySpec("unit"))
        if settings.postprocessing is not None:
            settings.postprocessing.check_classes(
                info.class_names,
                num_classes if num_classes is not None else len(info.class_names),
                info.sources[0] if info.sources else "the model",
            )
        recorded = info.orientation
        return {
            "plan": plan,
            "settings": settings,
            "orientation": settings.orientation
            or (recorded if recorded and recorded != "2d" else CANONICAL_ORIENTATION),
            "class_names": info.class_names,
            "intensity_known": info.plan is not None or chosen is not None,
            "intensity_from_user": settings.overrides_intensity,
            "plan_source": info.plan_source if info.plan is not None else None,
            "channel_names": info.channel_names,
        }

    def stored_range_for(self, meta: dict[str, Any], channel: int = 0) -> IntensitySpec | None:
        """Stage 1 for one image's input channel (None: the CT fallback): pictures get their type's range unless the
        user chose."""
        spec = self.plan.intensities[channel] if self.intensity_known else None
        is_picture = meta.get("format") == "picture"
        if is_picture and not self.intensity_from_user and (spec is None or spec.kind == "ct_window"):
            return IntensitySpec("picture")
        return spec

    def check_fit(self, array: np.ndarray, meta: dict[str, Any], channel: int = 0) -> None:
        """Refuse an image that does not fit the model (:func:`~perspective_unet.channels.input_mismatch`) unless the
        settings allow it.

        Raises:
            InputError: The image is a picture and the model one of CT or MR, or a CT and the model one of MR or
                pictures (the message names the file and the option that allows it).
        """
        if self.settings.allow_modality_mismatch or not self.intensity_known:
            return
        spec = self.plan.intensities[channel]
        reason = input_mismatch(spec, array, picture=meta.get("format") == "picture")
        if reason is not None:
            path = meta.get("channel_paths", [meta.get("path", "the image")])[channel]
            raise InputError(
                f"{path}: {reason}; give an image of the model's kind, or pass --allow-modality-mismatch "
                "(allow_modality_mismatch) to segment it anyway."
            )

    def prepare(self, array: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """Raw voxels of ``read_image`` to the canonical (Z, H, W) volume of stored values in [0, 1]; for a model of
        several input channels, the (C, *image shape) raw channels to a (Z, C, H, W) volume.

        Raises:
            InputError: The image does not fit the model (:meth:`check_fit`), or holds NaN or infinite voxels.
        """
        count = self.plan.num_channels
        if count > 1 and (np.ndim(array) != len(meta["shape"]) + 1 or len(array) != count):
            raise InputError(
                f"{meta.get('path', 'the image')}: the model reads {count} input channels, one file each; this path "
                "gives one. Predict with `perspective-unet predict` on the files <case>_0000, <case>_0001, ..."
            )
        channels = [array] if count == 1 else list(array)
        units = []
        for channel, values in enumerate(channels):
            self.check_fit(values, meta, channel)
            spec = self.stored_range_for(meta, channel)
            source = meta.get("channel_paths", [meta.get("path")])[channel]
            unit = normalize_intensity(values, spec, source=source, warn=not self._warned)
            self._warned = self._warned or spec is None  # the CT fallback's warning is given once per predictor
            units.append(to_canonical(unit, meta, self.orientation))
        return units[0] if len(units) == 1 else np.stack(units, axis=1)

    def read(self, paths: Sequence[str | os.PathLike[str]], series: str | None = None) -> tuple[np.ndarray, dict]:
        """The raw image of one input: one file (or DICOM folder), or one file per input channel of a model of
        several, stacked along a first axis; and the first file's meta (``channel_paths`` names every file).

        Raises:
            InputError: Another number of files than the model's input channels, unreadable or empty files, channel
                files on different voxel grids.
        """
        channels = self.plan.num_channels
        if len(paths) != channels:
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise InputError(
                f"{paths[0]}: the model reads {channels} input channel(s){names} but {len(paths)} file(s) were given "
                "for this case; give one file per channel, named <case>_0000, <case>_0001, ..."
            )
        arrays, metas = [], []
        for path in paths:
            array, meta = read_image(path, series=series if Path(path).is_dir() else None)
            if array.size == 0:
                raise InputError(f"{path} holds no voxels (shape {array.shape}).")
            if metas:
                check_channel_grid(metas[0], meta, paths[0], path)
            arrays.append(array)
            metas.append(meta)
        meta = {**metas[0], "channel_paths": [str(path) for path in paths]} if channels > 1 else metas[0]
        return (arrays[0] if channels == 1 else np.stack(arrays)), meta

    @abstractmethod
    def predict_canonical(
        self, volume: np.ndarray, return_probabilities: bool = False, spacing: Sequence[float] | None = None
    ) -> Prediction:
        """Labels (Z, H, W) uint8 [and probabilities (C, Z, H, W) float16] of a canonical volume in [0, 1].

        Args:
            volume: Canonical stored values.
            return_probabilities: Also return the class probabilities.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
        """

    def predict_image(self, array: np.ndarray, meta: dict[str, Any], return_probabilities: bool = False) -> Prediction:
        """Labels of raw voxels from ``read_image`` (the channels stacked first for a model of several), in the
        image's own stored order and shape.

        Returns:
            uint8 labels of ``array``'s shape (post-processed when the settings say so), and with
            ``return_probabilities`` also float16 (C, *array.shape), never post-processed.
        """
        spacing = canonical_spacing(meta, self.orientation)[1:]
        try:
            result = self.predict_canonical(self.prepare(array, meta), return_probabilities, spacing)
        except InputError as exc:
            where = str(meta.get("path", "the image"))
            raise InputError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        labels, probabilities = result if return_probabilities else (result, None)
        labels = from_canonical(labels, meta, self.orientation)
        if self.settings.postprocessing is not None:
            labels = self.settings.postprocessing.apply(labels)
        if probabilities is None:
            return labels
        return labels, np.stack([from_canonical(p, meta, self.orientation) for p in probabilities])

    def predict_file(
        self,
        input_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        output_path: str | os.PathLike[str],
        probabilities_path: str | os.PathLike[str] | None = None,
        series: str | None = None,
        output_format: str = "auto",
    ) -> Path:
        """Segment one image file (or DICOM folder; or one file per input channel for a model of several) and write its
        label map (and probabilities) atomically.

        Overwrites without asking; :func:`~perspective_unet.runtime.predict.predict_files` checks for existing outputs
        first. ``series`` chooses one DICOM series (SeriesInstanceUID) of a folder that holds several;
        ``output_format="dicom-seg"`` writes the labels of a DICOM series as a DICOM Segmentation of it.
        """
        paths = [input_path] if isinstance(input_path, (str, os.PathLike)) else list(input_path)
        array, meta = self.read(paths, series)
        result = self.predict_image(array, meta, return_probabilities=probabilities_path is not None)
        labels, probabilities = result if probabilities_path is not None else (result, None)
        if output_format == "dicom-seg":
            num_classes = len(self.class_names) or None
            writers: dict[Path, Any] = {
                Path(output_path): lambda path: write_dicom_seg(
                    labels, meta, path, self.class_names, num_classes=num_classes
                )
            }
        else:
            writers = {Path(output_path): lambda path: write_label_map(labels, meta, path)}
        if probabilities is not None and probabilities_path is not None:
            writers[Path(probabilities_path)] = lambda path: write_probabilities(
                probabilities, meta, path, self.class_names
            )
        return write_all(writers)[0]  # the label map and its probabilities appear together or not at all

    def check_resources(self) -> None:  # noqa: B027 (a hook: only the PyTorch predictor has a device to check)
        """Refuse settings whose forward passes cannot fit in memory (the PyTorch predictor checks its device)."""

    def describe(self) -> str:
        """How inputs are predicted, in one line for the log."""
        plan = self.plan
        where = (
            f"at {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm in {plan.patch_size[0]}x{plan.patch_size[1]} windows"
            if plan.protocol == "spacing" and plan.spacing is not None
            else f"zoomed to {plan.patch_size[0]}x{plan.patch_size[1]}"
        )
        intensity = plan.intensity.describe() if self.intensity_known else "fallback (CT window)"
        return f"{plan.protocol} protocol {where}, orientation {self.orientation}, intensity {intensity}"


@dataclass
class OnnxPredictor(ScanPredictor):
    """An exported ONNX graph with everything needed to segment new images, without PyTorch.

    Build it with :meth:`from_file` (the graph's own metadata says its plan and classes), or around a session with
    :meth:`from_session`.

    Args:
        session: The graph in ONNX Runtime.
        plan: See :class:`ScanPredictor`; likewise the other fields.

    Raises:
        InputError: The graph takes another number of input channels than the plan gives.

    Example:
        >>> predictor = OnnxPredictor.from_file("model.onnx", providers="cpu")  # doctest: +SKIP
        >>> predictor.predict_file("scan.nii.gz", "scan_labels.nii.gz")  # doctest: +SKIP
        PosixPath('scan_labels.nii.gz')
    """

    session: OnnxSession
    plan: Plan
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    orientation: str = CANONICAL_ORIENTATION
    class_names: Sequence[str] = ()
    intensity_known: bool = True
    intensity_from_user: bool = False
    plan_source: Path | None = None
    channel_names: Sequence[str] = ()
    inferer: NumpyInferer = field(init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.inferer = numpy_inferer_for(self.plan, self.settings, plan_source=self.plan_source)
        self.plan = self.inferer.plan
        self.class_names = list(self.class_names)
        if self.class_names:
            self.session.num_classes = len(self.class_names)
        channels = self.session.in_channels
        if channels is not None and channels != self.plan.in_channels:
            raise InputError(
                f"{self.session.path} takes {channels} input channel(s) but a scan gives it {self.plan.in_channels} "
                f"under its plan (the slice and {self.plan.context_slices} context slice(s) on each side); the graph "
                "and its recorded plan do not belong together. Export the model again."
            )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        settings: InferenceSettings | None = None,
        *,
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
    ) -> OnnxPredictor:
        """The predictor of an ``.onnx`` file (its plan and classes from its metadata, else from the files beside it).

        Args:
            path: The graph ``perspective-unet export --format onnx`` wrote.
            settings: The inference settings (``device``, ``resampler`` and ``amp_dtype`` do not apply).
            providers: ONNX Runtime's execution providers (``auto``: TensorRT and CUDA where installed, then the CPU).
            threads: ONNX Runtime's intra-op threads (default: every core).
        """
        session = OnnxSession(path, providers=providers, threads=threads)
        return cls.from_session(session, session.info(), settings)

    @classmethod
    def from_session(
        cls, session: OnnxSession, info: InferenceInfo, settings: InferenceSettings | None = None
    ) -> OnnxPredictor:
        """Wrap a session with what its training recorded."""
        return cls(session, **cls.resolve(info, settings or InferenceSettings()))

    def predict_canonical(
        self, volume: np.ndarray, return_probabilities: bool = False, spacing: Sequence[float] | None = None
    ) -> Prediction:
        return self.inferer(self.session, volume, spacing=spacing, return_probabilities=return_probabilities)
