"""Any dataset in the nnU-Net v2 raw layout, to the prepared layout.

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
modality per volume (see ``intensity.percentile_minmax``). The cases of ``imagesTr`` get a seeded case-level split.
A ``file_ending`` of a 2D picture format (``.png``, ...) gives a 2D dataset (see ``folder2d``).

A folder without ``dataset.json`` but with ``images/`` and ``masks/`` (or ``labels/``) is read as a plain 2D
dataset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.checks import check_ct_window, check_percentiles, require_files
from perspective_unet.data.common import CanonicalPair, progress, read_pair, volume_attrs, warn_if_all_background
from perspective_unet.data.folder2d import prepare_folder_2d, prepare_pictures
from perspective_unet.data.io import PICTURE_SUFFIXES
from perspective_unet.data.layout import PreparedWriter
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

__all__ = ["NnUNetDataset", "prepare_nnunet", "read_nnunet_dataset"]

logger = logging.getLogger(__name__)

_REQUIRED_FIELDS = ("channel_names", "labels", "file_ending")


class NnUNetDataset:
    """The parsed ``dataset.json`` and the cases of an nnU-Net raw folder.

    Attributes:
        root: The raw folder.
        name: Dataset name (``name`` of dataset.json, or the folder name).
        class_names: Class names by id, background first.
        modality: The channel's name, such as "CT" or "T2".
        file_ending: Suffix of every image and label file.
        training: (case, image path, label path) of ``imagesTr``.
        testing: (case, image path, label path) of ``imagesTs`` cases that have a label in ``labelsTs``.
        info: The whole dataset.json.
    """

    def __init__(self, root: Path, info: dict[str, Any], channel: int) -> None:
        self.root = root
        self.info = info
        json_path = root / "dataset.json"
        self.name = str(info.get("name") or root.name)
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
        suffix = f"_{self.channel:04d}{ending}"
        image_files = sorted(p for p in images.iterdir() if p.name.endswith(suffix))
        if require_labels:
            require_files(image_files, images, f"files named <case>{suffix}")
        cases = []
        for image_path in image_files:
            case = image_path.name[: -len(suffix)]
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
        number = self.info.get("numTraining")
        if require_labels and number is not None and int(number) != len(cases):
            logger.warning(
                "%s: numTraining is %s but %s holds %d cases; using the files.",
                self.root / "dataset.json",
                number,
                images,
                len(cases),
            )
        return cases


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


def read_nnunet_dataset(raw: str | os.PathLike[str], channel: int = 0) -> NnUNetDataset:
    """Parse and check an nnU-Net raw folder's ``dataset.json`` and list its cases.

    Raises:
        InputError: No dataset.json, invalid JSON, a missing field, bad labels, missing files.
    """
    root = Path(raw)
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError(
            f"{json_path} is missing; an nnU-Net raw dataset needs dataset.json with channel_names, "
            "labels and file_ending (or give a folder with images/ and masks/ for 2D pictures)."
        )
    try:
        info = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{json_path} is not valid JSON ({exc}); fix the file.") from None
    if not isinstance(info, dict):
        raise InputError(f"{json_path} must hold a JSON object.")
    for field in _REQUIRED_FIELDS:
        if field not in info:
            raise InputError(
                f"{json_path} lacks the field '{field}'; nnU-Net's dataset.json needs {', '.join(_REQUIRED_FIELDS)}."
            )
    return NnUNetDataset(root, info, channel)


def prepare_nnunet(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    ct_window_hu: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = MR_PERCENTILES,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 1234,
    orientation: str = CANONICAL_ORIENTATION,
    channel: int = 0,
    overwrite: bool = False,
    protocol: str = "spacing",
) -> Path:
    """Prepare an nnU-Net raw dataset (or a plain folder of 2D images and masks).

    Args:
        raw: The raw dataset folder.
        out: Output folder (written atomically).
        ct_window_hu: HU window (low, high) for CT; None takes the percentiles of the training foreground.
        percentiles: Percentiles of the CT rule and of the per-volume MR normalization.
        val_fraction: Share of ``imagesTr`` cases for validation.
        test_fraction: Share of ``imagesTr`` cases for testing (0 when ``imagesTs`` has labels, which then form the
            test split).
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
    if not (root / "dataset.json").exists():
        masks = next((root / n for n in ("masks", "labels") if (root / n).is_dir()), None)
        if (root / "images").is_dir() and masks is not None:
            return prepare_folder_2d(
                root / "images",
                masks,
                out,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                name=root.name,
                overwrite=overwrite,
                protocol=protocol,
            )
    dataset = read_nnunet_dataset(root, channel)
    num_channels = len(dataset.info["channel_names"])
    if num_channels > 1:
        logger.info("%s has %d channels; only channel %d (%s) is used.", root, num_channels, channel, dataset.modality)
    splits = _case_splits(dataset, val_fraction, test_fraction, seed)
    all_cases = dataset.training + dataset.testing
    source = f"nnU-Net raw dataset {dataset.name} ({root})"
    license = str(dataset.info.get("licence") or dataset.info.get("license") or "as stated by the dataset's owners")
    if dataset.is_2d:
        return prepare_pictures(
            all_cases, out, splits, dataset.class_names, dataset.name, source, license, overwrite, protocol, folder=root
        )

    allowed = range(len(dataset.class_names))
    by_case = {case: (image, label) for case, image, label in all_cases}

    def read(case: str) -> CanonicalPair:
        image_path, label_path = by_case[case]
        return read_pair(image_path, label_path, allowed, orientation)

    window, normalization = _normalization(dataset, read, splits["train"], ct_window_hu, percentiles, seed)

    any_foreground = False
    with PreparedWriter(out, overwrite=overwrite) as writer:
        for split in ("train", "val", "test"):
            for case in progress(splits[split], f"{split} cases"):
                pair = read(case)
                image = ct_window(pair.image, window) if dataset.is_ct else percentile_minmax(pair.image, percentiles)
                if split == "train":
                    assert pair.label is not None
                    any_foreground = any_foreground or bool(pair.label.any())
                    writer.add_train_volume(
                        case,
                        image,
                        pair.label,
                        spacing=pair.spacing,
                        attrs=volume_attrs(pair, by_case[case][0].name),
                        raw=pair.image,
                    )
                else:
                    writer.add_volume(
                        split,
                        case,
                        image,
                        pair.label,
                        pair.spacing,
                        volume_attrs(pair, by_case[case][0].name),
                        raw=pair.image,
                    )
        if splits["train"]:
            warn_if_all_background(any_foreground, root)
        return writer.finish(
            {
                "name": dataset.name,
                "class_names": dataset.class_names,
                "modality": dataset.modality,
                "normalization": normalization,
                "intensity": (
                    IntensitySpec("ct_window", window=window)
                    if dataset.is_ct
                    else IntensitySpec("percentile_minmax", percentiles=percentiles)
                ).stored_range(),
                "orientation": orientation,
                "source": source,
                "license": license,
                "split_seed": seed,
            },
            protocol=protocol,
        )


def _images_and_labels(read: Any, cases: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    for case in progress(cases, "CT window statistics"):
        pair = read(case)
        yield pair.image, pair.label


def _case_splits(dataset: NnUNetDataset, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
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
    dataset: NnUNetDataset,
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
