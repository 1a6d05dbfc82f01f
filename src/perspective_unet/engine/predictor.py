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

from perspective_unet.data.io import read_image, write_label_map, write_probabilities
from perspective_unet.data.orientation import CANONICAL_ORIENTATION, canonical_spacing, from_canonical, to_canonical
from perspective_unet.engine.inference import model_device
from perspective_unet.engine.inferers import Inferer, inferer_for
from perspective_unet.engine.runtime import resolve_device
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, normalize_intensity, resolve_intensity
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.outputs import write_all
from perspective_unet.plan import Plan
from perspective_unet.runs import LoadedModel, ModelSource, load
from perspective_unet.runtime.inference_settings import InferenceSettings

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
            Hounsfield units) are scaled by their type's range when the model expects a CT window.

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
    inferer: Inferer = field(init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.inferer = inferer_for(self.plan, self.settings)
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
        if plan is not None and settings.overrides_intensity:
            plan = plan.replace(intensity=plan.intensity.with_stored_range(chosen))  # type: ignore[arg-type]
        elif plan is None:
            # Without a plan: the paper protocol at the training size; an unknown stored range keeps the CT fallback.
            plan = Plan("paper", info.img_size, chosen or IntensitySpec("unit"))
        recorded = info.orientation
        return cls(
            model,
            plan,
            settings,
            orientation=settings.orientation or (recorded if recorded and recorded != "2d" else CANONICAL_ORIENTATION),
            class_names=info.class_names,
            intensity_known=info.plan is not None or chosen is not None,
            intensity_from_user=settings.overrides_intensity,
        )

    def stored_range_for(self, meta: dict[str, Any]) -> IntensitySpec | None:
        """Stage 1 for one image (None: the CT fallback): pictures get their type's range unless the user chose."""
        spec = self.plan.intensity if self.intensity_known else None
        is_picture = meta.get("format") == "picture"
        if is_picture and not self.intensity_from_user and (spec is None or spec.kind == "ct_window"):
            return IntensitySpec("picture")
        return spec

    def prepare(self, array: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        """Raw voxels of ``read_image`` to the canonical (Z, H, W) volume of stored values in [0, 1]."""
        spec = self.stored_range_for(meta)
        unit = normalize_intensity(array, spec, source=meta.get("path"), warn=not self._warned)
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
        return self.inferer(self.model, volume, spacing=spacing, return_probabilities=return_probabilities)

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

        Overwrites without asking; :func:`~perspective_unet.engine.predict.predict_path` checks for existing outputs
        first. ``series`` chooses one DICOM series (SeriesInstanceUID) of a folder that holds several.
        """
        array, meta = read_image(input_path, series=series if Path(input_path).is_dir() else None)
        if array.size == 0:
            raise InputError(f"{input_path} holds no voxels (shape {array.shape}).")
        result = self.predict_image(array, meta, return_probabilities=probabilities_path is not None)
        labels, probabilities = result if probabilities_path is not None else (result, None)
        writers: dict[Path, Any] = {Path(output_path): lambda path: write_label_map(labels, meta, path)}
        if probabilities is not None and probabilities_path is not None:
            writers[Path(probabilities_path)] = lambda path: write_probabilities(
                probabilities, meta, path, self.class_names
            )
        return write_all(writers)[0]  # the label map and its probabilities appear together or not at all
