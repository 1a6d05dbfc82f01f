"""The predictor: a model with everything needed to segment new images as its training data were prepared.

:class:`Predictor` reads a checkpoint's plan (or, for checkpoints without one, its training size and the dataset's
recorded intensity normalization), turns raw voxels into the stored [0, 1] range and segments canonical volumes with
:func:`~perspective_unet.engine.sliding_window.predict_with_plan`. :func:`resolve_intensity` and
:func:`normalize_intensity` choose and apply the stored range for new images, with the CT fallback for checkpoints
that record none. Files in and out: :mod:`perspective_unet.engine.predict`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perspective_unet.data.io import read_image, write_label_map, write_probabilities
from perspective_unet.data.orientation import CANONICAL_ORIENTATION, canonical_spacing, from_canonical, to_canonical
from perspective_unet.data.planning import dataset_intensity
from perspective_unet.engine.runtime import resolve_device
from perspective_unet.engine.sliding_window import predict_with_plan
from perspective_unet.errors import InputError
from perspective_unet.intensity import MR_PERCENTILES, SYNAPSE_HU_WINDOW, IntensitySpec, ct_window, picture_to_unit
from perspective_unet.outputs import write_all
from perspective_unet.plan import Plan

__all__ = ["INTENSITY_KINDS", "Predictor", "normalize_intensity", "resolve_intensity"]

logger = logging.getLogger(__name__)

INTENSITY_KINDS = ("ct_window", "percentile_minmax", "picture", "unit")


# --------------------------------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------------------------------


def resolve_intensity(
    dataset_info: dict[str, Any] | None,
    *,
    window: Sequence[float] | None = None,
    mr_normalize: bool = False,
) -> dict[str, Any] | None:
    """The intensity normalization to apply to new images, from the user's choice or the training data's record.

    Args:
        dataset_info: The checkpoint's ``dataset`` entry (``info["dataset"]`` of ``load_for_inference``).
        window: A CT window (low, high) in HU chosen by the user; overrides the checkpoint.
        mr_normalize: Use per-volume MR percentile normalization; overrides the checkpoint.

    Returns:
        A spec dict (see the module docstring), or ``None`` when nothing is known: :func:`normalize_intensity` then
        uses [0, 1] data as they are and assumes the Synapse CT window otherwise, with a warning.

    Example:
        >>> resolve_intensity({"intensity": {"kind": "ct_window", "window": [-125, 275]}})
        {'kind': 'ct_window', 'window': [-125, 275]}
        >>> resolve_intensity({}, window=(-160, 240))
        {'kind': 'ct_window', 'window': [-160.0, 240.0]}
        >>> resolve_intensity({"modality": "MR"})
        {'kind': 'percentile_minmax', 'percentiles': [0.5, 99.5]}
    """
    if window is not None and mr_normalize:
        raise ValueError("choose either a CT window (--window) or MR normalization (--mr-normalize), not both.")
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"a CT window needs LOW < HIGH, got {low:g} {high:g}.")
        return {"kind": "ct_window", "window": [low, high]}
    if mr_normalize:
        return {"kind": "percentile_minmax", "percentiles": list(MR_PERCENTILES)}
    info = dataset_info or {}
    spec = info.get("intensity")
    if spec:
        _check_spec(spec)
        return dict(spec)
    recorded = dataset_intensity(info)  # the window in the normalization text, MR percentiles, pictures
    return None if recorded is None else recorded.stored_range()


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or spec.get("kind") not in INTENSITY_KINDS:
        raise ValueError(
            f"unknown intensity normalization {spec!r}; expected a dict with kind in {INTENSITY_KINDS}. Pass "
            "--window LOW HIGH or --mr-normalize to choose one."
        )
    if spec["kind"] == "ct_window" and len(spec.get("window", ())) != 2:
        raise ValueError(f"intensity spec {spec!r} needs 'window': [low, high].")
    if spec["kind"] == "percentile_minmax" and len(spec.get("percentiles", MR_PERCENTILES)) != 2:
        raise ValueError(f"intensity spec {spec!r} needs 'percentiles': [low, high].")


def normalize_intensity(
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
        >>> normalize_intensity(np.array([-1000, 75, 3000]), {"kind": "ct_window", "window": [-125, 275]})
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
                "%s: the checkpoint does not record how its training intensities were normalized; assuming CT in HU "
                "with the Synapse window [%g, %g]%s. Pass --window LOW HIGH or --mr-normalize if that is wrong.",
                name,
                *SYNAPSE_HU_WINDOW,
                hint,
            )
        return ct_window(volume, SYNAPSE_HU_WINDOW)
    _check_spec(intensity_spec)
    if intensity_spec["kind"] == "picture":
        return picture_to_unit(volume, name)
    return IntensitySpec.from_dict(intensity_spec).to_unit(volume)


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
        checkpoint: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        device: str | torch.device = "auto",
        window: Sequence[float] | None = None,
        mr_normalize: bool = False,
        orientation: str | None = None,
        img_size: Sequence[int] | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a checkpoint and read its plan (or training size), classes, orientation and intensity normalization.

        Args:
            checkpoint: A ``.pt`` written by ``train`` or ``convert-official``, a run folder, a folder of fold runs,
                or several of these: an ensemble averaging their probabilities (see
                :func:`~perspective_unet.models.ensemble.load_ensemble_for_inference`).
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            window: CT window overriding the checkpoint's normalization.
            mr_normalize: Per-volume MR normalization overriding the checkpoint's.
            orientation: Canonical orientation overriding the checkpoint's (default ``"SPL"`` when not recorded).
            img_size: Model input size (paper protocol) or sliding window (spacing protocol) overriding the plan's.
            **options: ``tta``, ``batch_size``, ``resampler``.
        """
        from perspective_unet.models.ensemble import load_ensemble_for_inference

        torch_device = device if isinstance(device, torch.device) else resolve_device(device)
        model, info = load_ensemble_for_inference(checkpoint, torch_device)
        return cls.from_model(
            model,
            info,
            device=torch_device,
            window=window,
            mr_normalize=mr_normalize,
            orientation=orientation,
            img_size=img_size,
            **options,
        )

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        info: dict[str, Any] | None = None,
        *,
        device: torch.device | None = None,
        window: Sequence[float] | None = None,
        mr_normalize: bool = False,
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
        intensity = resolve_intensity(dataset, window=window, mr_normalize=mr_normalize)
        if plan is not None:
            if window is not None or mr_normalize:
                plan = plan.replace(intensity=plan.intensity.with_stored_range(IntensitySpec.from_dict(intensity)))
            if img_size is not None:
                plan = plan.replace(patch_size=tuple(int(s) for s in img_size))
        size = img_size or info.get("img_size") or (224, 224)
        return cls(
            model,
            img_size=(int(size[0]), int(size[1])),
            intensity=intensity,
            intensity_from_user=window is not None or mr_normalize,
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
        return predict_with_plan(
            self.model,
            volume,
            self.plan,
            spacing=spacing,
            batch_size=self.batch_size,
            device=self.device,
            tta=self.tta,
            resampler=self.resampler,
            return_probabilities=return_probabilities,
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
            writers[Path(probabilities_path)] = lambda path: write_probabilities(
                probabilities, meta, path, self.class_names
            )
        return write_all(writers)[0]  # the label map and its probabilities appear together or not at all
