"""The predictor: a model with everything needed to segment new images as its training data were prepared.

:class:`Predictor` holds the model's :class:`~perspective_unet.plan.Plan` (for models without one, the paper protocol
at the training size with the training data's recorded stored range), turns raw voxels into the stored [0, 1] range
(:func:`~perspective_unet.intensity.normalize_intensity`, with the CT fallback for models that record no
normalization) and segments canonical volumes with the plan's inferer (:mod:`perspective_unet.engine.inferers`).
Files in and out: :mod:`perspective_unet.engine.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perspective_unet.channels import input_mismatch
from perspective_unet.data.checks import check_channel_grid
from perspective_unet.data.dicom_seg import write_dicom_seg
from perspective_unet.data.io import read_image, write_label_map, write_probabilities
from perspective_unet.data.orientation import CANONICAL_ORIENTATION, canonical_spacing, from_canonical, to_canonical
from perspective_unet.engine.inference import model_device
from perspective_unet.engine.inference_settings import InferenceSettings
from perspective_unet.engine.inferers import Inferer, inferer_for
from perspective_unet.engine.runtime import resolve_device
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, normalize_intensity, resolve_intensity
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.outputs import write_all
from perspective_unet.plan import Plan
from perspective_unet.runs import LoadedModel, ModelSource, load

__all__ = ["Predictor"]


@dataclass
class Predictor:
    """A model with everything needed to segment new images as its training data were prepared.

    Build it with :meth:`from_source`, or around a model with :meth:`from_model` (or directly).

    Args:
        model: The segmentation model (put in eval mode), on the device to run on.
        plan: The model's plan (protocol, spacing, patch size, intensity, context slices), with the settings'
            patch size and the user's stored range applied.
        settings: Batch size, mirroring, resampler and the other inference settings.
        orientation: Canonical orientation code the training volumes were cut in (``"SPL"``, ``"stored"``, ...).
        class_names: Names by class id, stored with probability maps.
        intensity_known: Whether the plan's stored range is known; if not, new images get the CT fallback (see
            :func:`~perspective_unet.intensity.normalize_intensity`).
        intensity_from_user: Whether the stored range was chosen by the user; if not, pictures (which hold no
            Hounsfield units) are scaled by their type's range when the model expects a CT window (and the settings
            allow a picture into a CT model at all).
        channel_names: The input channels' names of a model of several (empty for one channel).
        plan_source: The file the plan was read from, named when a size it sets cannot be met.

    Example:
        >>> import perspective_unet
        >>> model = perspective_unet.create_model("perspective_unet_tiny", num_classes=3)
        >>> predictor = Predictor(model, Plan("paper", (32, 32), IntensitySpec("unit")))
        >>> predictor.predict_canonical(np.random.rand(2, 40, 36).astype("float32")).shape
        (2, 40, 36)
    """

    model: torch.nn.Module
    plan: Plan
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    orientation: str = CANONICAL_ORIENTATION
    class_names: Sequence[str] = ()
    intensity_known: bool = True
    intensity_from_user: bool = False
    plan_source: Path | None = None
    channel_names: Sequence[str] = ()
    inferer: Inferer = field(init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.inferer = inferer_for(self.plan, self.settings, plan_source=self.plan_source)
        self.plan = self.inferer.plan
        self.class_names = list(self.class_names)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return model_device(self.model)

    @classmethod
    def from_source(
        cls, source: ModelSource | Sequence[ModelSource] | LoadedModel, settings: InferenceSettings | None = None
    ) -> Predictor:
        """Load a model source and read its plan (or training size), classes, orientation and stored range.

        Args:
            source: A checkpoint, a released checkpoint, a model folder, an ONNX file, a run folder, a folder of
                fold runs, or several of these: an ensemble averaging their probabilities (see
                :func:`perspective_unet.runs.load`); or a model already loaded.
            settings: The inference settings; ``device`` says where the model is loaded.
        """
        settings = settings or InferenceSettings()
        if not isinstance(source, LoadedModel):
            device = settings.device
            source = load(source, device if isinstance(device, torch.device) else resolve_device(device))
        return cls.from_model(source.model, source.info, settings)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, info: InferenceInfo | None = None, settings: InferenceSettings | None = None
    ) -> Predictor:
        """Wrap a model with what its training recorded (``info``; without it the paper protocol at 224 x 224 and the
        CT fallback). The model moves to ``settings.device`` unless that is ``auto``."""
        info = info or InferenceInfo()
        settings = settings or InferenceSettings()
        if settings.device != "auto":
            device = settings.device
            model = model.to(device if isinstance(device, torch.device) else resolve_device(device))
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
            # Without a plan: the paper protocol at the training size; an unknown stored range keeps the CT fallback.
            plan = Plan("paper", info.img_size, chosen or IntensitySpec("unit"))
        recorded = info.orientation
        if settings.postprocessing is not None:
            num_classes = getattr(getattr(model, "config", None), "num_classes", len(info.class_names))
            settings.postprocessing.check_classes(
                info.class_names, num_classes, info.sources[0] if info.sources else "the model"
            )
        return cls(
            model,
            plan,
            settings,
            orientation=settings.orientation or (recorded if recorded and recorded != "2d" else CANONICAL_ORIENTATION),
            class_names=info.class_names,
            intensity_known=info.plan is not None or chosen is not None,
            intensity_from_user=settings.overrides_intensity,
            plan_source=info.plan_source if info.plan is not None else None,
            channel_names=info.channel_names,
        )

    def stored_range_for(self, meta: dict[str, Any], channel: int = 0) -> IntensitySpec | None:
        """Stage 1 for one image's input channel (None: the CT fallback): pictures get their type's range unless the
        user chose."""
        spec = self.plan.intensities[channel] if self.intensity_known else None
        is_picture = meta.get("format") == "picture"
        if is_picture and not self.intensity_from_user and (spec is None or spec.kind == "ct_window"):
            return IntensitySpec("picture")
        return spec

    def check_fit(self, array: np.ndarray, meta: dict[str, Any], channel: int = 0) -> None:
        """Refuse an image that does not fit the model (:func:`~perspective_unet.intensity.input_mismatch`) unless the
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

    def predict_canonical(
        self, volume: np.ndarray, return_probabilities: bool = False, spacing: Sequence[float] | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Labels (Z, H, W) uint8 [and probabilities (C, Z, H, W) float16] of a canonical volume in [0, 1].

        Args:
            volume: Canonical stored values.
            return_probabilities: Also return the class probabilities.
            spacing: In-plane pixel size (row, column) in mm; the spacing protocol needs it.
        """
        return self.inferer(self.model, volume, spacing=spacing, return_probabilities=return_probabilities)

    def predict_image(
        self, array: np.ndarray, meta: dict[str, Any], return_probabilities: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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

        Overwrites without asking; :func:`~perspective_unet.engine.predict.predict_path` checks for existing outputs
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
