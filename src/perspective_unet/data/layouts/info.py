"""What a dataset is: :class:`DatasetInfo`, the typed form of a prepared folder's ``dataset.json`` (or of the
description inferred for TransUNet-style files), and of the summary of it a checkpoint keeps.

The dict form exists only at the file boundary: :meth:`DatasetInfo.from_dict` reads ``dataset.json`` (files written
by every version of this package, including the earlier British keys ``normalisation`` and ``licence``) and
:meth:`DatasetInfo.to_dict` gives the same file back, key for key.

Example:
    >>> info = DatasetInfo("toy", ("background", "organ"), modality="MR", splits={"train": ("a", "b")})
    >>> info.num_classes, info.cases("train"), info.cases("test")
    (2, ('a', 'b'), ())
    >>> DatasetInfo.from_dict(info.to_dict()) == info
    True
    >>> info.stored_intensity().kind
    'percentile_minmax'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from perspective_unet.intensity import IntensitySpec, recorded_intensity

__all__ = ["IGNORE_LABEL", "IMG_FORMAT_VERSION", "SPLITS", "DatasetInfo"]

IMG_FORMAT_VERSION = 1
# The value prepared labels give voxels without annotation (nnU-Net's ignore label, whatever its id in the raw data):
# above any class id the uint8 labels can hold beside it, the same for every dataset.
IGNORE_LABEL = 255
SPLITS = ("train", "val", "test")
# dataset.json keys of folders prepared before the American spelling -> today's keys.
_OLD_KEYS = {"normalisation": "normalization", "licence": "license"}
# Entries after "normalization", in the order dataset.json has always had them; those that are None are left out.
_ENTRIES = (
    "intensity",
    "orientation",
    "source",
    "license",
    "channel_names",
    "label_origin",
    "label_map",
    "split_seed",
    "notes",
    "slice_split",
    "class_voxels",
    "ignore_label",
    "other_channels",
)
# What a checkpoint keeps of the description: what prediction needs later (classes, modality, intensities, channels).
_SUMMARY = ("name", "num_classes", "class_names", "modality", "normalization", *_ENTRIES[:4], "channel_names")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's description.

    Attributes:
        name: Dataset name.
        class_names: Class names by class id, ``background`` first (the ignore label is no class).
        splits: Case names by split (``train``, ``val``, ``test``); a split not listed has no cases.
        modality: ``CT``, ``MR``, ``2D`` or the channel's name (the channels' names joined by ``+`` for several).
        normalization: How raw intensities became the stored [0, 1] range, for people.
        intensity: The same, machine-readable (stage 1 of the intensity normalization; input channel 0's when there
            are several); None when not recorded.
        orientation: The canonical orientation of the stored (Z, H, W) arrays (``SPL``, ``stored``, ``2d``, ...), or
            None when unknown (TransUNet-style files).
        source: Where the data came from.
        license: The data's license or terms.
        channel_names: The input channels by index (nnU-Net's ``channel_names``); None for the one channel the
            modality names. Images of several channels are stored channel axis first per slice: (C, H, W) slices,
            (Z, C, H, W) volumes.
        label_origin: How the labels were made, when that matters (model output rather than annotation).
        label_map: Source label value -> class id, for converters that remap labels.
        split_seed: Seed of a drawn case split.
        notes: Free text.
        slice_split: How a volume was split into blocks of slices (the demo).
        class_voxels: Voxels per class and side of the split (the demo).
        ignore_label: The label value of voxels without annotation (:data:`IGNORE_LABEL` in prepared data), which
            are no class: left out of the loss, the metrics and the intensity fingerprint; None when every voxel is
            annotated.
        other_channels: The stored range of input channels 1, 2, ... (channel 0's is ``intensity``); None for one
            channel.
        extra: Any other entries of ``dataset.json``, kept as they are.
        img_format_version: Version of the prepared layout.
    """

    name: str
    class_names: tuple[str, ...]
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modality: str = ""
    normalization: str = ""
    intensity: IntensitySpec | None = None
    orientation: str | None = None
    source: str = ""
    license: str = ""
    channel_names: Mapping[str, str] | None = None
    label_origin: str | None = None
    label_map: Mapping[str, int] | None = None
    split_seed: int | None = None
    notes: str | None = None
    slice_split: Mapping[str, Any] | None = None
    class_voxels: Mapping[str, Mapping[str, int]] | None = None
    ignore_label: int | None = None
    other_channels: tuple[IntensitySpec, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    img_format_version: int = IMG_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "splits", {str(k): tuple(str(c) for c in v) for k, v in self.splits.items()})
        if self.other_channels is not None:
            specs = tuple(
                s if isinstance(s, IntensitySpec) else IntensitySpec.from_dict(s) for s in self.other_channels
            )
            object.__setattr__(self, "other_channels", specs or None)
        if self.ignore_label is not None:
            ignore = self.ignore_label
            if isinstance(ignore, bool) or not isinstance(ignore, int) or not self.num_classes <= ignore <= 255:
                raise ValueError(
                    f"ignore_label must be an integer from {self.num_classes} (above the class ids) to 255, got "
                    f"{ignore!r}."
                )
        names = self.channel_names
        if names is not None and len(names) > 1 and len(names) != self.num_channels:
            raise ValueError(
                f"channel_names names {len(names)} channels but other_channels gives the intensities of "
                f"{self.num_channels}."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (the ignore label is none)."""
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        """Number of input channels of the stored images."""
        return 1 + len(self.other_channels or ())

    def channel_list(self) -> tuple[str, ...]:
        """The input channels' names in channel order (the modality alone for one channel without names)."""
        if self.channel_names:
            return tuple(str(self.channel_names[key]) for key in sorted(self.channel_names, key=int))
        return (self.modality,)

    def cases(self, split: str) -> tuple[str, ...]:
        """The cases of a split (none when the split is not listed)."""
        return self.splits.get(split, ())

    def replace(self, **changes: Any) -> DatasetInfo:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def stored_intensity(self) -> IntensitySpec | None:
        """The stored range (with the paper's ``symmetric`` scaling), or None when the description does not say.

        The machine-readable ``intensity`` when recorded; for older descriptions the CT window written in the
        ``normalization`` text, per-image percentiles for MR, and the type range for 2D pictures.
        """
        return recorded_intensity(self.intensity, self.normalization, self.modality)

    def stored_intensities(self) -> tuple[IntensitySpec, ...] | None:
        """Every input channel's stored range, channel 0's first, or None when the description does not say."""
        first = self.stored_intensity()
        return None if first is None else (first, *(self.other_channels or ()))

    def to_dict(self) -> dict[str, Any]:
        """``dataset.json``'s content, key for key as the prepared writer has always written it."""
        out: dict[str, Any] = {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "modality": self.modality,
            "normalization": self.normalization,
        }
        for key in _ENTRIES:
            value = getattr(self, key)
            if value is not None:
                out[key] = _plain(value)
        out.update(_plain(self.extra))
        out["splits"] = {split: list(cases) for split, cases in self.splits.items()}
        out["img_format_version"] = self.img_format_version
        return out

    def summary(self) -> dict[str, Any]:
        """The entries a checkpoint keeps (name, classes, modality, intensity normalization, orientation, source,
        license), as plain JSON values."""
        data = self.to_dict()
        return {key: data[key] for key in _SUMMARY if key in data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """Build from ``dataset.json``'s content or a checkpoint's summary; entries that are absent take their
        defaults, unknown entries go to ``extra``, ``num_classes`` is the number of ``class_names``.

        Raises:
            ValueError: An entry has the wrong type, or the intensity is invalid (named).
        """
        data = dict(data)
        for old, new in _OLD_KEYS.items():
            if old in data:
                value = data.pop(old)
                data.setdefault(new, value)
        class_names = _names(data.pop("class_names", ()), "class_names")
        data.pop("num_classes", None)
        splits = data.pop("splits", None) or {}
        if not isinstance(splits, Mapping):
            raise ValueError(f"splits must map split names to case lists, got {type(splits).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)} - {"class_names", "splits", "extra"}
        fields = {key: data.pop(key) for key in list(data) if key in known}
        for key in ("name", "modality", "normalization", "source", "license"):
            fields[key] = str(fields.get(key) or "")
        # An empty entry says as little as none: the normalization text and the modality decide.
        fields["intensity"] = IntensitySpec.from_dict(fields["intensity"]) if fields.get("intensity") else None
        if fields.get("other_channels") is not None:
            others = fields["other_channels"]
            if isinstance(others, (str, Mapping)) or not isinstance(others, Sequence):
                raise ValueError(f"other_channels must be a list of intensity records, got {others!r}.")
            fields["other_channels"] = tuple(IntensitySpec.from_dict(spec) for spec in others)
        if "img_format_version" in fields:
            fields["img_format_version"] = int(fields["img_format_version"])
        return cls(
            class_names=class_names,
            splits={str(k): _names(v, f"splits.{k}") for k, v in splits.items()},
            extra=data,
            **fields,
        )


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of names, got {value!r}.")
    return tuple(str(v) for v in value)


def _plain(value: Any) -> Any:
    """JSON values of a field: mappings and sequences as dicts and lists, an intensity as its stored range."""
    if isinstance(value, IntensitySpec):
        return value.stored_range()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
