"""Any dataset in the nnU-Net v2 raw layout (:class:`NnUNetRaw`), to the prepared layout.

```
RAW/
  dataset.json            channel_names {"0": "CT"}, labels {"background": 0, "liver": 1, ...}, file_ending
  imagesTr/<case>_0000<file_ending>
  labelsTr/<case><file_ending>
  imagesTs/, labelsTs/    optional; with labels they form the test split, without labels they are skipped
```

Volumes are reoriented to the canonical axial orientation (``"SPL"``, see ``io.to_canonical``; ``"stored"`` keeps
the acquisition's slice axis) and cut into slices. Normalization: CT (``channel_names`` says "CT") by a HU window,
given or taken from the 0.5th / 99.5th percentiles of the training cases' foreground (nnU-Net's rule); any other
modality per volume (see ``intensity.percentile_minmax``). Every case of ``imagesTr`` is a training case by default,
so cross-validation (``train --fold K``, see ``perspective_unet.data.folds``) draws its folds from all of them, as
nnU-Net does; the test split is ``imagesTs`` with ``labelsTs``, or, when asked (``test_fraction``, ``val_fraction``),
a seeded share of ``imagesTr``.
A ``file_ending`` of a 2D picture format (``.png``, ...) gives a 2D dataset (see ``folder2d``).

A folder without ``dataset.json`` but with ``images/`` and ``masks/`` (or ``labels/``) is read as a plain 2D
dataset (see ``pictures``).

The files of a case's channels (``_0000``, ``_0001``, ...) are found in one place, :func:`channel_files`; the
prepared layout holds one channel (``channel``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.checks import check_ct_window, check_percentiles, require_files
from perspective_unet.data.io import PICTURE_SUFFIXES
from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.data.layouts.pictures import PictureFolders, prepare_pictures
from perspective_unet.data.layouts.prepared import PreparedWriter
from perspective_unet.data.layouts.raw import (
    CanonicalPair,
    RawDataset,
    progress,
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
    ct_window,
    describe_ct_window,
    describe_mr,
    percentile_minmax,
    percentile_window,
)
from perspective_unet.outputs import read_json

__all__ = ["NnUNetRaw", "channel_files", "prepare_nnunet"]

logger = logging.getLogger(__name__)

_REQUIRED_FIELDS = ("channel_names", "labels", "file_ending")


_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_files(images: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """The image files of a folder by case and channel: ``<case>_<XXXX><file_ending>`` -> ``{case: {XXXX: path}}``.

    The one place channels are read: a case's channels are the files that share its name.
    """
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(images.iterdir()):
        if not path.name.endswith(file_ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match:
            found.setdefault(match["case"], {})[int(match["channel"])] = path
    return found


class NnUNetRaw(RawDataset):
    """An nnU-Net raw folder: its parsed ``dataset.json`` and its cases, checked.

    Attributes:
        root: The raw folder.
        dataset_json: The whole dataset.json.
        name: Dataset name (``name`` of dataset.json, or the folder name).
        class_names: Class names by id, background first.
        channel: The channel used.
        modality: The channel's name, such as "CT" or "T2".
        file_ending: Suffix of every image and label file.
        training: (case, image path, label path) of ``imagesTr``.
        testing: (case, image path, label path) of ``imagesTs`` cases that have a label in ``labelsTs``.

    Raises:
        InputError: No dataset.json, invalid JSON, a missing field, bad labels, missing files.
    """

    command = "nnunet"
    description = "nnU-Net raw dataset"

    def __init__(self, root: str | os.PathLike[str], channel: int = 0) -> None:
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
        channels = info["channel_names"]
        if not isinstance(channels, dict) or str(channel) not in {str(k) for k in channels}:
            raise InputError(
                f"{json_path}: channel_names {channels!r} has no channel {channel}; pick one with "
                "--channel or fix channel_names."
            )
        self.modality = str({str(k): v for k, v in channels.items()}[str(channel)])
        self.class_names = _class_names(info["labels"], json_path)
        self.channel = channel
        self.training = self._cases("imagesTr", "labelsTr", require_labels=True)
        self.testing = self._cases("imagesTs", "labelsTs", require_labels=False)

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()

    @property
    def is_ct(self) -> bool:
        """Whether the channel is CT, which decides between a HU window and per-volume normalization."""
        return self.modality.strip().upper() == "CT"

    @property
    def is_2d(self) -> bool:
        """Whether the files are 2D pictures."""
        return self.file_ending.lower() in PICTURE_SUFFIXES

    def _cases(self, images_name: str, labels_name: str, require_labels: bool) -> list[tuple[str, Path, Path | None]]:
        images, labels = self.root / images_name, self.root / labels_name
        if not images.is_dir():
            if require_labels:
                raise InputError(f"{images} is missing; an nnU-Net raw dataset keeps its training images there.")
            return []
        ending = self.file_ending
        image_files = {
            case: files[self.channel] for case, files in channel_files(images, ending).items() if self.channel in files
        }
        if require_labels:
            require_files(list(image_files.values()), images, f"files named <case>_{self.channel:04d}{ending}")
        cases = []
        for case, image_path in image_files.items():
            label_path = labels / f"{case}{ending}"
            if not label_path.exists():
                if require_labels:
                    raise InputError(f"{image_path} has no label {label_path}; every training case needs one.")
                continue
            cases.append((case, image_path, label_path))
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
        num_channels = len(self.dataset_json["channel_names"])
        if num_channels > 1:
            logger.info(
                "%s has %d channels; only channel %d (%s) is used.",
                self.root,
                num_channels,
                self.channel,
                self.modality,
            )
        splits = _case_splits(self, val_fraction, test_fraction, seed)
        all_cases = self.training + self.testing
        source = f"nnU-Net raw dataset {self.name} ({self.root})"
        raw_license = self.dataset_json.get("licence") or self.dataset_json.get("license")
        license = str(raw_license or "as stated by the dataset's owners")
        if self.is_2d:
            return prepare_pictures(
                all_cases, out, splits, self.class_names, self.name, source, license, overwrite, protocol, self.root
            )
        allowed = range(len(self.class_names))
        by_case = {case: (image, label) for case, image, label in all_cases}

        def read(case: str) -> CanonicalPair:
            image_path, label_path = by_case[case]
            return read_pair(image_path, label_path, allowed, orientation)

        window, normalization = _normalization(self, read, splits["train"], ct_window_hu, percentiles, seed)
        with PreparedWriter(out, overwrite=overwrite) as writer:
            any_foreground = False
            for split in ("train", "val", "test"):
                for case in progress(splits[split], f"{split} cases"):
                    pair = read(case)
                    image = ct_window(pair.image, window) if self.is_ct else percentile_minmax(pair.image, percentiles)
                    attrs = volume_attrs(pair, by_case[case][0].name)
                    if split == "train":
                        assert pair.label is not None
                        any_foreground = any_foreground or bool(pair.label.any())
                        writer.add_train_volume(
                            case, image, pair.label, spacing=pair.spacing, attrs=attrs, raw=pair.image
                        )
                    else:
                        writer.add_volume(split, case, image, pair.label, pair.spacing, attrs, raw=pair.image)
            if splits["train"]:
                warn_if_all_background(any_foreground, self.root)
            intensity = (
                IntensitySpec("ct_window", window=window)
                if self.is_ct
                else IntensitySpec("percentile_minmax", percentiles=percentiles)
            )
            return writer.finish(
                DatasetInfo(
                    name=self.name,
                    class_names=self.class_names,
                    modality=self.modality,
                    normalization=normalization,
                    intensity=intensity,
                    orientation=orientation,
                    source=source,
                    license=license,
                    split_seed=seed,
                ),
                protocol=protocol,
            )


def _class_names(labels: Any, json_path: Path) -> list[str]:
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{json_path}: 'labels' must map class names to ids, such as {{\"background\": 0, ...}}.")
    by_id: dict[int, str] = {}
    for label_name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"{json_path}: label {label_name!r} is a region ({value}); region-based labels are not "
                "supported, declare one id per class."
            )
        try:
            class_id = int(value)
        except (TypeError, ValueError):
            raise InputError(f"{json_path}: label {label_name!r} has id {value!r}, not an integer.") from None
        if class_id in by_id:
            raise InputError(f"{json_path}: labels {by_id[class_id]!r} and {label_name!r} share id {class_id}.")
        by_id[class_id] = str(label_name)
    if sorted(by_id) != list(range(len(by_id))):
        raise InputError(f"{json_path}: label ids {sorted(by_id)} must be consecutive from 0 (background).")
    if len(by_id) < 2:
        raise InputError(f"{json_path}: 'labels' declares {len(by_id)} class; a segmentation needs at least two.")
    return [by_id[i] for i in range(len(by_id))]


def prepare_nnunet(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    ct_window_hu: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = MR_PERCENTILES,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 1234,
    orientation: str = CANONICAL_ORIENTATION,
    channel: int = 0,
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
        channel: Which input channel to use (the layout holds one channel).
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


def _images_and_labels(read: Any, cases: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    for case in progress(cases, "CT window statistics"):
        pair = read(case)
        yield pair.image, pair.label


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
    read: Any,
    training: list[str],
    ct_window_hu: tuple[float, float] | None,
    percentiles: tuple[float, float],
    seed: int,
) -> tuple[tuple[float, float], str]:
    """The CT window (given, or the training foreground's percentiles) and the text describing the normalization;
    for other modalities (per-image percentiles) the window is unused."""
    if not dataset.is_ct:
        return (0.0, 1.0), describe_mr(percentiles)
    if ct_window_hu is None:
        window = percentile_window(_images_and_labels(read, training), percentiles, seed)
        how = f"{percentiles[0]:g}th/{percentiles[1]:g}th percentiles of the training foreground"
    else:
        window, how = (float(ct_window_hu[0]), float(ct_window_hu[1])), "given"
    logger.info("CT window: [%g, %g] HU", *window)
    return window, describe_ct_window(window, how)
