"""The PyTorch predictor: a model with everything needed to segment new images as its training data were prepared.

:class:`Predictor` is a :class:`~perspective_unet.runtime.predictor.ScanPredictor` (the model's plan, orientation,
stored range and the files in and out, shared with the light ONNX runtime) whose network is a PyTorch model, run by
the plan's inferer (:mod:`perspective_unet.engine.inferers`). Files in and out for many inputs:
:mod:`perspective_unet.engine.predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perspective_unet.data.orientation import CANONICAL_ORIENTATION
from perspective_unet.engine.inference import model_device
from perspective_unet.engine.inferers import Inferer, inferer_for
from perspective_unet.engine.runtime import check_memory, resolve_device
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.plan import Plan
from perspective_unet.runs import LoadedModel, ModelSource, load
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predictor import Prediction, ScanPredictor

__all__ = ["Predictor"]


@dataclass
class Predictor(ScanPredictor):
    """A PyTorch model with everything needed to segment new images as its training data were prepared.

    Build it with :meth:`from_source`, or around a model with :meth:`from_model` (or directly).

    Args:
        model: The segmentation model (put in eval mode), on the device to run on.
        plan: The model's plan (protocol, spacing, patch size, intensity, context slices), with the settings' patch
            size and the user's stored range applied.
        settings: Batch size, mirroring, resampler and the other inference settings.
        orientation: Canonical orientation code the training volumes were cut in (``"SPL"``, ``"stored"``, ...).
        class_names: Names by class id, stored with probability maps.
        intensity_known: Whether the plan's stored range is known; if not, new images get the CT fallback (see
            :func:`~perspective_unet.intensity.normalize_intensity`).
        intensity_from_user: Whether the stored range was chosen by the user; if not, pictures (which hold no
            Hounsfield units) are scaled by their type's range when the model expects a CT window (and the settings
            allow a picture into a CT model at all).
        plan_source: The file the plan was read from, named when a size it sets cannot be met.
        channel_names: The input channels' names of a model of several (empty for one channel).

    Example:
        >>> import perspective_unet
        >>> from perspective_unet.intensity import IntensitySpec
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
        num_classes = getattr(getattr(model, "config", None), "num_classes", None)
        return cls(model, **cls.resolve(info, settings, num_classes))

    def predict_canonical(
        self, volume: np.ndarray, return_probabilities: bool = False, spacing: Sequence[float] | None = None
    ) -> Prediction:
        return self.inferer(self.model, volume, spacing=spacing, return_probabilities=return_probabilities)

    def check_resources(self) -> None:
        """Refuse a batch that cannot fit in the device's memory."""
        batch_size = self.settings.batch_size
        height, width = self.plan.patch_size
        check_memory(
            self.model,
            batch_size * height * width,
            self.device,
            training=False,
            what=f"predict with {batch_size} x {height} x {width} pixels per forward pass",
        )
