"""Any dataset in the nnU-Net v2 raw layout (:class:`NnUNetRaw`), to the prepared layout.

```
RAW/
  dataset.json            channel_names {"0": "CT"}, labels {"background": 0, "liver": 1, ...}, file_ending
  imagesTr/<case>_0000<file_ending>   one file per channel: _0000, _0001, ... as channel_names numbers them
  labelsTr/<case><file_ending>
  imagesTs/, labelsTs/    optional; with labels they form the test split, without labels they are skipped
```

Volumes are reoriented to the canonical axial orientation (``"SPL"``, see ``io.to_canonical``; ``"stored"`` keeps
the acquisition's slice axis) and cut into slices. Normalization, per channel by its name: CT (``channel_names``
says "CT") by a HU window, given or taken from the 0.5th / 99.5th percentiles of the training cases' foreground
(nnU-Net's rule); any other modality per volume (see ``intensity.percentile_minmax``). Every channel is kept (the
prepared images get a channel axis, see ``DatasetInfo.channel_names``) unless ``channel`` picks one; the channel files
of a case must share one voxel grid. Every case of ``imagesTr`` is a training case by default, so cross-validation
(``train --fold K``, see ``perspective_unet.data.folds``) draws its folds from all of them, as nnU-Net does; the test
split is ``imagesTs`` with ``labelsTs``, or, when asked (``test_fraction``, ``val_fraction``), a seeded share of
``imagesTr``. A ``file_ending`` of a 2D picture format (``.png``, ...) gives a 2D dataset (see ``folder2d``; one
channel).

nnU-Net's ignore label (the label named ``"ignore"``, the highest id: voxels without annotation) is no class: it is
stored as ``IGNORE_LABEL`` (255) and recorded as ``ignore_label``, and its voxels are not foreground for the CT window
and the fingerprint.

A folder without ``dataset.json`` but with ``images/`` and ``masks/`` (or ``labels/``) is read as a plain 2D
dataset (see ``pictures``).

The files of a case's channels (``_0000``, ``_0001``, ...) and dataset.json's labels and channel names are read in
:mod:`~perspective_unet.data.layouts.nnunet_files`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.checks import check_ct_window, check_percentiles, require_files
from perspective_unet.data.io import PICTURE_SUFFIXES
from perspective_unet.data.layouts.info import IGNORE_LABEL, DatasetInfo
from perspective_unet.data.layouts.nnunet_files import case_files, channel_names, label_ids
from perspective_unet.data.layouts.pictures import PictureFolders, prepare_pictures
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import (
    CanonicalPair,
    RawDataset,
    progress,
    read_channels,
    read_pair,
    volume_attrs,
    warn_if_all_background,
)
from perspective_unet.data.orientation import CANONICAL_ORIENTATION
from perspective_unet.data.splits import split_cases
from perspective_unet.errors import InputError
from perspective_unet.intensity import (
    MR_PERCENTILES,
    IntensitySpec,
    describe_ct_window,
    describe_mr,
    foreground_mask,
    percentile_window,
)
from perspective_unet.outputs import read_json

__all__ = ["NnUNetRaw", "prepare_nnunet"]

logger = logging.getLogger(__name__)

_REQUIRED_FIELDS = ("channel_names", "labels", "file_ending")


class NnUNetRaw(RawDataset):
    """An nnU-Net raw folder: its parsed ``dataset.json`` and its cases, checked.

    Attributes:
        root: The raw folder.
        dataset_json: The whole dataset.json.
        name: Dataset name (``name`` of dataset.json, or the folder name).
        class_names: Class names by id, background first (the ignore label is none).
        ignore_id: The raw id of nnU-Net's ignore label (voxels without annotation), or None.
        channels: The input channels used, by index.
        channel_modalities: Their names, such as "CT" or "T2".
        modality: The channel's name, or the names joined by ``+`` for several.
        file_ending: Suffix of every image and label file.
        training: (case, image paths by channel, label path) of ``imagesTr``.
        testing: (case, image paths by channel, label path) of ``imagesTs`` cases that have a label in ``labelsTs``.

    Args:
        root: The raw folder.
        channel: Use this input channel only; None uses every channel of ``channel_names``.

    Raises:
        InputError: No dataset.json, invalid JSON, a missing field, bad labels or channels, missing files.
    """

    command = "nnunet"
    description = "nnU-Net raw dataset"

    def __init__(self, root: str | os.PathLike[str], channel: int | None = None) -> None:
        super().__init__(root)
        json_path = self.root / "dataset.json"
        if not json_path.is_file():
            raise InputError(
                f"{json_path} is missing; an nnU-Net raw dataset needs dataset.json with channel_names, "
                "labels and file_ending (or give a folder with images/ and masks/ for 2D pictures)."
            )
        info = read_json(json_path, "fix the file.")
        if not isinstance(info, dict):
            raise InputError(f"{json_path} must hold a JSON object.")
        for field in _REQUIRED_FIELDS:
            if field not in info:
                raise InputError(
                    f"{json_path} lacks the field '{field}'; nnU-Net's dataset.json needs "
                    f"{', '.join(_REQUIRED_FIELDS)}."
                )
        self.dataset_json = info
        self.name = str(info.get("name") or self.root.name)
        self.file_ending = str(info["file_ending"])
        names = channel_names(info["channel_names"], json_path)
        if channel is not None and not 0 <= channel < len(names):
            raise InputError(
                f"{json_path}: channel_names {info['channel_names']!r} has no channel {channel}; pick one with "
                "--channel or fix channel_names."
            )
        self.declared_channels = len(names)
        self.channels = tuple(range(len(names))) if channel is None else (channel,)
        self.channel_modalities = tuple(names[c] for c in self.channels)
        self.modality = "+".join(self.channel_modalities)
        self.class_names, self.ignore_id = label_ids(info["labels"], json_path)
        self.training = self._cases("imagesTr", "labelsTr", require_labels=True)
        self.testing = self._cases("imagesTs", "labelsTs", require_labels=False)

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()

    @property
    def is_2d(self) -> bool:
        """Whether the files are 2D pictures."""
        return self.file_ending.lower() in PICTURE_SUFFIXES

    @property
    def ignore_label(self) -> int | None:
        """The value the ignore label gets in the prepared labels (None without one)."""
        return None if self.ignore_id is None else IGNORE_LABEL

    def _cases(
        self, images_name: str, labels_name: str, require_labels: bool
    ) -> list[tuple[str, tuple[Path, ...], Path]]:
        images, labels = self.root / images_name, self.root / labels_name
        if not images.is_dir():
            if require_labels:
                raise InputError(f"{images} is missing; an nnU-Net raw dataset keeps its training images there.")
            return []
        image_files = case_files(images, self.file_ending, self.channels, self.declared_channels)
        if require_labels:
            require_files(
                list(image_files.values()), images, f"files named <case>_{self.channels[0]:04d}{self.file_ending}"
            )
        cases = []
        for case, image_paths in image_files.items():
            label_path = labels / f"{case}{self.file_ending}"
            if not label_path.exists():
                if require_labels:
                    raise InputError(f"{image_paths[0]} has no label {label_path}; every training case needs one.")
                continue
            cases.append((case, image_paths, label_path))
        if not require_labels and image_files and not cases:
            logger.info(
                "%s has no labels in %s: its cases are skipped (use `perspective-unet predict` on them).",
                images,
                labels,
            )
        number = self.dataset_json.get("numTraining")
        if require_labels and number is not None and int(number) != len(cases):
            logger.warning(
                "%s: numTraining is %s but %s holds %d cases; using the files.",
                self.root / "dataset.json",
                number,
                images,
                len(cases),
            )
        return cases

    def prepare(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        ct_window_hu: tuple[float, float] | None = None,
        percentiles: tuple[float, float] = MR_PERCENTILES,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 1234,
        orientation: str = CANONICAL_ORIENTATION,
        protocol: str = "spacing",
    ) -> Path:
        """Convert the folder into the prepared layout (see :func:`prepare_nnunet` for the options)."""
        percentiles = check_percentiles(percentiles, "percentiles")
        if ct_window_hu is not None:
            ct_window_hu = check_ct_window(ct_window_hu, "ct_window_hu")
        if len(self.channels) < self.declared_channels:
            used = f"only channel {self.channels[0]} ({self.modality}) is used"
            logger.info("%s has %d channels; %s.", self.root, self.declared_channels, used)
        splits = _case_splits(self, val_fraction, test_fraction, seed)
        source = f"nnU-Net raw dataset {self.name} ({self.root})"
        raw_license = self.dataset_json.get("licence") or self.dataset_json.get("license")
        license = str(raw_license or "as stated by the dataset's owners")
        if self.is_2d:
            return self._prepare_pictures(out, splits, source, license, overwrite, protocol)
        read = self._reader(orientation)
        stored = [
            _normalization(self, c, read, splits["train"], ct_window_hu, percentiles, seed)
            for c in range(len(self.channels))
        ]
        channels, ignore_label = len(self.channels), self.ignore_label
        with PreparedWriter(out, overwrite=overwrite, channels=channels, ignore_label=ignore_label) as writer:
            any_foreground = False
            for split in ("train", "val", "test"):
                for case in progress(splits[split], f"{split} cases"):
                    pair = read(case)
                    image = _stored_image(pair.image, [spec for spec, _ in stored])
                    attrs = volume_attrs(pair, self.files[case][0][0].name)
                    if split == "train":
                        assert pair.label is not None
                        any_foreground = any_foreground or bool(foreground_mask(pair.label, ignore_label).any())
                        writer.add_train_volume(
                            case, image, pair.label, spacing=pair.spacing, attrs=attrs, raw=pair.image
                        )
                    else:
                        writer.add_volume(split, case, image, pair.label, pair.spacing, attrs, raw=pair.image)
            if splits["train"]:
                warn_if_all_background(any_foreground, self.root)
            return writer.finish(self._info(stored, orientation, source, license, seed), protocol=protocol)

    @property
    def files(self) -> dict[str, tuple[tuple[Path, ...], Path]]:
        """(image paths by channel, label path) of every labeled case."""
        return {case: (paths, label) for case, paths, label in self.training + self.testing}

    def _reader(self, orientation: str) -> Callable[[str], CanonicalPair]:
        """Reads a case: its channels (checked to share one grid) and its label, the ignore label's id as
        ``IGNORE_LABEL``."""
        classes = range(len(self.class_names))
        allowed = [*classes, *([] if self.ignore_id is None else [self.ignore_id])]
        label_map = None if self.ignore_id is None else {**{i: i for i in classes}, self.ignore_id: IGNORE_LABEL}
        files = self.files

        def read(case: str) -> CanonicalPair:
            paths, label_path = files[case]
            pair = read_pair(paths[0], label_path, allowed, orientation, label_map)
            return read_channels(pair, paths[0], paths[1:])

        return read

    def _prepare_pictures(self, out: str | os.PathLike[str], splits: dict[str, list[str]], *details: Any) -> Path:
        """A dataset of 2D pictures (one channel); ``details`` are :func:`prepare_pictures`' source to folder."""
        if len(self.channels) > 1:
            raise InputError(
                f"{self.root / 'dataset.json'} declares {len(self.channels)} channels of 2D pictures; pictures "
                "of several channels are not supported: prepare one of them with --channel K."
            )
        pairs = [(case, paths[0], label) for case, paths, label in self.training + self.testing]
        names = (self.class_names, self.name)
        return prepare_pictures(pairs, out, splits, *names, *details, self.root, ignore_id=self.ignore_id)

    def _info(
        self,
        stored: list[tuple[IntensitySpec, str]],
        orientation: str,
        source: str,
        license: str,
        seed: int,
    ) -> DatasetInfo:
        """The description of the prepared data: one channel as always; several with their names and intensities."""
        several, names = len(stored) > 1, self.channel_modalities
        texts = [f"channel {i} ({names[i]}) {text}" if several else text for i, (_, text) in enumerate(stored)]
        return DatasetInfo(
            name=self.name,
            class_names=self.class_names,
            modality=self.modality,
            normalization="; ".join(texts),
            intensity=stored[0][0],
            orientation=orientation,
            source=source,
            license=license,
            channel_names={str(i): name for i, name in enumerate(names)} if several else None,
            split_seed=seed,
            ignore_label=self.ignore_label,
            other_channels=tuple(spec for spec, _ in stored[1:]) or None,
        )


def _is_ct(name: str) -> bool:
    """Whether a channel name says CT, which decides between a HU window and per-volume normalization."""
    return name.strip().upper() == "CT"


def _stored_image(raw: np.ndarray, specs: list[IntensitySpec]) -> np.ndarray:
    """Stage 1 of every channel: (Z, H, W) or (Z, C, H, W) raw values to the stored [0, 1] range."""
    if len(specs) == 1:
        return specs[0].to_unit(raw)
    return np.stack([spec.to_unit(raw[:, c]) for c, spec in enumerate(specs)], axis=1)


def prepare_nnunet(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    ct_window_hu: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = MR_PERCENTILES,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 1234,
    orientation: str = CANONICAL_ORIENTATION,
    channel: int | None = None,
    overwrite: bool = False,
    protocol: str = "spacing",
) -> Path:
    """Prepare an nnU-Net raw dataset (:class:`NnUNetRaw`), or a plain folder of 2D images and masks
    (:class:`~perspective_unet.data.layouts.pictures.PictureFolders`).

    Args:
        raw: The raw dataset folder.
        out: Output folder (written atomically).
        ct_window_hu: HU window (low, high) for CT; None takes the percentiles of the training foreground.
        percentiles: Percentiles of the CT rule and of the per-volume MR normalization.
        val_fraction: Share of ``imagesTr`` cases kept out of training as a val split (0: every case trains and
            cross-validation folds hold cases out instead).
        test_fraction: Share of ``imagesTr`` cases kept as a test split (ignored when ``imagesTs`` has labels in
            ``labelsTs``, which then form the test split).
        seed: Seed of the case split.
        orientation: Canonical orientation code, ``"SPL"`` (axial) by default, or ``"stored"``.
        channel: Use this input channel only; None keeps every channel of ``channel_names``.
        overwrite: Replace an existing ``out``.
        protocol: Protocol of the plan written beside the data (``spacing`` by default, see ``perspective_unet.plan``).

    Returns:
        The output folder.

    Raises:
        InputError: Bad input files, or ``percentiles`` / ``ct_window_hu`` out of order or out of range.
    """
    root = Path(raw)
    # Checked before any file is read: a reversed pair would otherwise give a silently empty normalization.
    percentiles = check_percentiles(percentiles, "percentiles")
    if ct_window_hu is not None:
        ct_window_hu = check_ct_window(ct_window_hu, "ct_window_hu")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the nnU-Net raw dataset folder.")
    if not (root / "dataset.json").exists() and PictureFolders.recognizes(root):
        pictures = PictureFolders.of_folder(root)
        split = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
        return pictures.prepare(out, overwrite=overwrite, name=root.name, protocol=protocol, **split)
    return NnUNetRaw(root, channel).prepare(
        out,
        overwrite=overwrite,
        ct_window_hu=ct_window_hu,
        percentiles=percentiles,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        orientation=orientation,
        protocol=protocol,
    )


def _images_and_labels(read: Any, cases: list[str], channel: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    for case in progress(cases, "CT window statistics"):
        pair = read(case)
        yield (pair.image if pair.image.ndim == 3 else pair.image[:, channel]), pair.label


def _case_splits(dataset: NnUNetRaw, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded split of imagesTr; labeled imagesTs cases, when there are any, are the test split."""
    cases = [case for case, _, _ in dataset.training]
    if not dataset.testing:
        return split_cases(cases, val_fraction, test_fraction, seed)
    splits = split_cases(cases, val_fraction, 0.0, seed)
    splits["test"] = [case for case, _, _ in dataset.testing]
    clash = set(splits["test"]) & set(cases)
    if clash:
        raise InputError(f"{dataset.root}: cases {sorted(clash)} are in both imagesTr and imagesTs; rename them.")
    return splits


def _normalization(
    dataset: NnUNetRaw,
    channel: int,
    read: Any,
    training: list[str],
    ct_window_hu: tuple[float, float] | None,
    percentiles: tuple[float, float],
    seed: int,
) -> tuple[IntensitySpec, str]:
    """The stored range of one of the channels used (by its position) and the text describing it: a CT window (given,
    or the training foreground's percentiles) for CT, per-image percentiles otherwise."""
    if not _is_ct(dataset.channel_modalities[channel]):
        return IntensitySpec("percentile_minmax", percentiles=percentiles), describe_mr(percentiles)
    if ct_window_hu is None:
        volumes = _images_and_labels(read, training, channel)
        window = percentile_window(volumes, percentiles, seed, ignore_label=dataset.ignore_label)
        how = f"{percentiles[0]:g}th/{percentiles[1]:g}th percentiles of the training foreground"
    else:
        window, how = (float(ct_window_hu[0]), float(ct_window_hu[1])), "given"
    logger.info("CT window: [%g, %g] HU", *window)
    return IntensitySpec("ct_window", window=window), describe_ct_window(window, how)
