"""What inference needs to know about a saved model, beside its weights: :class:`InferenceInfo`.

A checkpoint of this project records it in its ``plan``, ``dataset``, ``epoch`` and ``train_config`` entries; a model
folder and an exported ONNX graph in ``preprocessing.json`` and ``labels.json`` (the graph also in its own metadata,
the same texts). Those on-disk dicts are read into an :class:`InferenceInfo` here
(:meth:`InferenceInfo.from_checkpoint`, :meth:`InferenceInfo.from_files`, :func:`read_inference_info`) and written
back from it (:func:`inference_file_texts`), so everything after loading works with the typed value. The module
imports no PyTorch: the light ONNX runtime reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, recorded_intensity
from perspective_unet.outputs import read_json
from perspective_unet.plan import Plan

__all__ = [
    "DEFAULT_IMG_SIZE",
    "LABELS_FILE",
    "PREPROCESSING_FILE",
    "InferenceInfo",
    "inference_file_texts",
    "labels_record",
    "read_inference_info",
]

# The paper protocol's slice size, assumed when a saved model records neither a plan nor a training size.
DEFAULT_IMG_SIZE = (224, 224)
# The files beside a model folder's weights or an ONNX graph that say how inference sees a new scan.
PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.json"
# The dataset description keys a model folder's preprocessing.json keeps, in this order.
_RECORD_KEYS = ("name", "modality", "normalization", "intensity", "orientation", "channel_names", "license")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class InferenceInfo:
    """A saved model's plan and its training data's description, as inference needs them.

    Attributes:
        plan: The plan the model was trained with, or None (checkpoints written before plans existed, released
            checkpoints): the paper protocol at ``img_size`` then.
        img_size: The training size (the plan's patch size when there is a plan).
        class_names: Names by class id, background first; empty when not recorded.
        modality: The training data's modality (``CT``, ``MR``, ``2D``, ...), when recorded.
        intensity: The training data's stored range as recorded (stage 1 only), or None; see
            :meth:`stored_intensity` for the range the older records imply.
        normalization: The training data's normalization as text, when recorded.
        orientation: The canonical orientation code the training volumes were cut in, when recorded.
        channel_names: The input channels' names in channel order, recorded for data of several channels (empty
            otherwise: the one channel is the ``modality``).
        dataset_name: The training dataset's name, when recorded.
        license: The training data's license, when recorded.
        epoch: The epoch the checkpoint was written after, when recorded.
        train_config: The training settings as saved (a dict, as older versions' fields may differ); empty when not
            recorded.
        sources: The files the model was loaded from.
        plan_source: The file the plan was read from (a checkpoint, or the ``preprocessing.json`` of a model folder or
            ONNX graph), named when a size the plan sets cannot be met; None without a plan.
        fold: The cross-validation fold the model was trained on (``fold_K``, ``fold_all``), or None.
        held_out: The fold's validation cases, which it never trained on.
        splits_file: The splits file the fold came from, as training found it.
        splits_sha256: The hash of that file's folds (see ``perspective_unet.data.folds``).
    """

    plan: Plan | None = None
    img_size: tuple[int, int] = DEFAULT_IMG_SIZE
    class_names: tuple[str, ...] = ()
    modality: str | None = None
    intensity: IntensitySpec | None = None
    normalization: str | None = None
    orientation: str | None = None
    channel_names: tuple[str, ...] = ()
    dataset_name: str | None = None
    license: str | None = None
    epoch: int | None = None
    train_config: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()
    plan_source: Path | None = None
    fold: str | None = None
    held_out: tuple[str, ...] = ()
    splits_file: str | None = None
    splits_sha256: str | None = None

    def __post_init__(self) -> None:
        size = self.plan.patch_size if self.plan is not None else self.img_size
        object.__setattr__(self, "img_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "held_out", tuple(str(case) for case in self.held_out))
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        object.__setattr__(self, "channel_names", tuple(str(name) for name in self.channel_names))
        object.__setattr__(self, "sources", tuple(Path(source) for source in self.sources))

    def stored_intensity(self) -> IntensitySpec | None:
        """The training data's stored range: the record, else what its normalization text or modality implies."""
        return recorded_intensity(self.intensity, self.normalization, self.modality)

    def replace(self, **changes: Any) -> InferenceInfo:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def check_model(self, in_channels: int, repeat_gray_to_rgb: bool, origin: str | os.PathLike[str]) -> None:
        """Raise ``InputError`` when the plan asks for another number of input channels than the model takes."""
        plan = self.plan
        if plan is not None and in_channels != plan.in_channels and not repeat_gray_to_rgb:
            data = "" if plan.num_channels == 1 else f"{plan.num_channels} data channels, each "
            raise InputError(
                f"{origin}: its plan gives {plan.in_channels} input channel(s) ({data}the slice and "
                f"{plan.context_slices} context slices on each side) but its model takes {in_channels}; the file is "
                "inconsistent."
            )

    def check_classes(self, num_classes: int, origin: str | os.PathLike[str]) -> None:
        """Raise ``InputError`` when the recorded class names are another number than the model's classes.

        Args:
            num_classes: The model's classes.
            origin: The file that records the names (a model folder's ``labels.json``, a checkpoint), named.
        """
        if self.class_names and len(self.class_names) != num_classes:
            raise InputError(
                f"{origin} names {len(self.class_names)} classes but its model has {num_classes}; the files are "
                "inconsistent (damaged or edited): export the model again."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # The file boundary: on-disk dicts in and out
    # ----------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_record(
        cls,
        plan: Mapping[str, Any] | Plan | None,
        dataset: Mapping[str, Any] | None,
        origin: str | os.PathLike[str],
        **fields: Any,
    ) -> InferenceInfo:
        """From a saved plan and dataset description (a checkpoint's ``dataset`` entry, or preprocessing.json's).

        Args:
            plan: The plan, as a dict or a :class:`Plan`, or None.
            dataset: The description: ``class_names``, ``modality``, ``normalization`` (older files:
                ``normalisation``), ``intensity``, ``orientation``, ``channel_names`` (``{"0": name, ...}``),
                ``name``, ``license``.
            origin: The file, named in errors.
            **fields: Other fields (``img_size``, ``epoch``, ``train_config``, ``sources``).

        Raises:
            InputError: The plan or the intensity record is invalid.
        """
        dataset = dict(dataset or {})
        try:
            plan = plan if plan is None or isinstance(plan, Plan) else Plan.from_dict(plan)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{origin} holds an invalid plan ({exc}); it was not written by this version of perspective-unet, or "
                "it was edited."
            ) from None
        try:
            intensity = dataset.get("intensity")
            intensity = IntensitySpec.from_dict(intensity) if intensity else None
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{origin} records an unknown intensity normalization {dataset.get('intensity')!r} ({exc}); the file "
                "is damaged or was edited."
            ) from None
        channels = dataset.get("channel_names") or {}
        try:
            channel_names = tuple(str(channels[key]) for key in sorted(channels, key=int))
        except (TypeError, ValueError, AttributeError):
            raise InputError(f"{origin} records channel_names {channels!r}, not numbered channels.") from None
        return cls(
            plan=plan,
            class_names=tuple(dataset.get("class_names") or ()),
            channel_names=channel_names,
            modality=_text(dataset.get("modality")),
            intensity=intensity,
            normalization=_text(dataset.get("normalization", dataset.get("normalisation"))),
            orientation=_text(dataset.get("orientation")),
            dataset_name=_text(dataset.get("name")),
            license=_text(dataset.get("license")),
            **fields,
        )

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any], origin: str | os.PathLike[str]) -> InferenceInfo:
        """From a checkpoint's content (``plan``, ``dataset``, ``epoch``, ``train_config``, ``fold``; each may be
        absent)."""
        train_config = dict(data.get("train_config") or {})
        epoch = data.get("epoch")
        fold = data.get("fold") or {}
        try:
            fold_fields = {
                "fold": _text(fold.get("name")),
                "held_out": tuple(fold.get("val") or ()),
                "splits_file": _text(fold.get("splits_file")),
                "splits_sha256": _text(fold.get("splits_sha256")),
            }
        except (AttributeError, TypeError):
            raise InputError(f"{origin} holds an invalid fold record; the file is damaged or was edited.") from None
        return cls.from_record(
            data.get("plan"),
            data.get("dataset"),
            origin,
            img_size=tuple(train_config.get("img_size") or DEFAULT_IMG_SIZE),
            epoch=None if epoch is None else int(epoch),
            train_config=train_config,
            sources=(Path(origin),),
            plan_source=Path(origin) if data.get("plan") is not None else None,
            **fold_fields,
        )

    @classmethod
    def from_files(
        cls, preprocessing: Mapping[str, Any], labels: Mapping[str, Any], origin: str | os.PathLike[str]
    ) -> InferenceInfo:
        """From the contents of a model folder's (or an ONNX graph's) ``preprocessing.json`` and ``labels.json``.

        Raises:
            InputError: A file lacks a field or holds the wrong types (``origin`` names the folder).
        """
        try:
            names = [str(labels[str(i)]["name"]) for i in range(len(labels))]
            dataset = {**dict(preprocessing.get("dataset") or {}), "class_names": names}
            img_size = tuple(preprocessing["img_size"])
            plan = preprocessing.get("plan")
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"{origin}: preprocessing.json or labels.json lacks {exc}; export the model again."
            ) from None
        return cls.from_record(plan, dataset, origin, img_size=img_size, sources=(Path(origin),))

    def dataset_record(self) -> dict[str, Any]:
        """preprocessing.json's ``dataset`` entry: name, modality, normalization, intensity, orientation, the channel
        names of several and the training data's license (as known; the license travels with the weights)."""
        values = {
            "name": self.dataset_name,
            "modality": self.modality,
            "normalization": self.normalization,
            "intensity": self.intensity.stored_range() if self.intensity is not None else None,
            "orientation": self.orientation,
            "channel_names": {str(i): name for i, name in enumerate(self.channel_names)} or None,
            "license": self.license,
        }
        return {key: values[key] for key in _RECORD_KEYS if values[key] is not None}

    def class_names_for(self, num_classes: int) -> list[str]:
        """The class names, or ``class_<i>`` for a model whose names were not recorded.

        Raises:
            ValueError: The recorded names are another number than ``num_classes``.
        """
        names = list(self.class_names) or [f"class_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for a model of {num_classes} classes.")
        return names

    def agreement(self, num_classes: int, in_channels: int) -> dict[str, Any]:
        """What members of an ensemble must share: classes, class names, plan (or training size), input channels."""
        return {
            "classes": int(num_classes),
            "class names": list(self.class_names),
            "plan": self.plan.to_dict() if self.plan is not None else {"img_size": list(self.img_size)},
            "input channels": int(in_channels),
        }


def labels_record(class_names: Sequence[str], colors: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """``labels.json``'s content: ``{"0": {"name": "background", "color": [0, 0, 0]}, ...}``."""
    return {
        str(i): {"name": str(name), **({"color": [int(c) for c in colors[i]]} if colors is not None else {})}
        for i, name in enumerate(class_names)
    }


def inference_file_texts(
    info: InferenceInfo, num_classes: int, colors: Sequence[Sequence[int]] | None = None
) -> dict[str, str]:
    """The texts of ``preprocessing.json`` and ``labels.json``, the files inference reads beside a model folder's
    weights or an ONNX graph (and in the graph's metadata): one form for all, so that a graph exported into a model
    folder recognizes its files.

    Raises:
        ValueError: ``info`` names another number of classes than ``num_classes``.
    """
    preprocessing = {
        "plan": info.plan.to_dict() if info.plan is not None else None,
        "img_size": list(info.img_size),
        "dataset": info.dataset_record(),
    }
    return {
        PREPROCESSING_FILE: json.dumps(preprocessing, indent=2) + "\n",
        LABELS_FILE: json.dumps(labels_record(info.class_names_for(num_classes), colors), indent=2) + "\n",
    }


def read_inference_info(folder: str | os.PathLike[str]) -> InferenceInfo:
    """What inference needs from ``preprocessing.json`` and ``labels.json`` in ``folder``, without the model.

    Raises:
        InputError: A file is missing, not JSON, or holds the wrong fields (the message names it).
    """
    folder = Path(folder)
    contents = []
    for name in (PREPROCESSING_FILE, LABELS_FILE):
        path = folder / name
        if not path.is_file():
            raise InputError(
                f"{path} is missing; a model folder holds config.json, model.safetensors, {PREPROCESSING_FILE} and "
                f"{LABELS_FILE}. Export the model again."
            )
        contents.append(read_json(path, "the file is damaged or was edited; export the model again."))
    preprocessing, labels = contents
    if not isinstance(preprocessing, dict) or not isinstance(labels, dict):
        raise InputError(f"{folder}: {PREPROCESSING_FILE} and {LABELS_FILE} must hold JSON objects; export again.")
    info = InferenceInfo.from_files(preprocessing, labels, folder)
    return info.replace(plan_source=folder / PREPROCESSING_FILE) if info.plan is not None else info
