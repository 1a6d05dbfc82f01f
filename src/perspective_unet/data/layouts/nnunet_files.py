"""What the files of an nnU-Net raw dataset say, read in one place: the classes and the ignore label of
``dataset.json``'s ``labels`` (:func:`label_ids`), its ``channel_names`` (:func:`channel_names`), and the channel
files of each case, ``<case>_<XXXX><file_ending>`` (:func:`channel_files`, :func:`split_channel`, checked by
:func:`case_files`).

Prediction groups the files of a case the same way (``perspective-unet predict`` on an ``imagesTs`` folder).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perspective_unet.data.layouts.info import IGNORE_LABEL
from perspective_unet.errors import InputError

__all__ = ["IGNORE_NAME", "case_files", "channel_files", "channel_names", "label_ids", "split_channel"]

# The name nnU-Net v2 gives the label of voxels without annotation.
IGNORE_NAME = "ignore"
_CHANNEL_STEM = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_channel(stem: str) -> tuple[str, int] | None:
    """``<case>_<XXXX>`` -> ``(case, XXXX)``; None for a name without a channel suffix.

    Example:
        >>> split_channel("liver_007_0001"), split_channel("scan")
        (('liver_007', 1), None)
    """
    match = _CHANNEL_STEM.match(stem)
    return None if match is None else (match["case"], int(match["channel"]))


def channel_files(images: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """The image files of a folder by case and channel: ``<case>_<XXXX><file_ending>`` -> ``{case: {XXXX: path}}``.

    The one place channels are read: a case's channels are the files that share its name.
    """
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(images.iterdir()):
        if not path.name.endswith(file_ending):
            continue
        parsed = split_channel(path.name[: -len(file_ending)])
        if parsed:
            found.setdefault(parsed[0], {})[parsed[1]] = path
    return found


def case_files(
    images: Path, file_ending: str, channels: Sequence[int], declared: int | None = None
) -> dict[str, tuple[Path, ...]]:
    """Every case's files of the given channels, in that order.

    Args:
        images: The folder (``imagesTr``, ``imagesTs``, a folder to predict).
        file_ending: The files' suffix.
        channels: The channels wanted, by number.
        declared: How many channels there are; a file of a channel beyond is refused. None: not checked.

    Raises:
        InputError: A case lacks one of the channels (the missing file is named), or has one beyond ``declared``.
    """
    paths = {}
    for case, files in channel_files(images, file_ending).items():
        beyond = sorted(c for c in files if declared is not None and c >= declared)
        if beyond:
            raise InputError(
                f"{files[beyond[0]]} is channel {beyond[0]} but the dataset declares {declared} channel(s) in "
                "channel_names; declare it or remove the file."
            )
        missing = [c for c in channels if c not in files]
        if missing:
            raise InputError(
                f"{images / f'{case}_{missing[0]:04d}{file_ending}'} is missing: case {case!r} needs one file per "
                f"channel ({', '.join(f'_{c:04d}' for c in channels)})."
            )
        paths[case] = tuple(files[c] for c in channels)
    return paths


def channel_names(channels: Any, json_path: Path) -> list[str]:
    """The channel names of dataset.json's ``channel_names`` by index (keys "0", "1", ... without gaps)."""
    if not isinstance(channels, dict) or not channels:
        raise InputError(f'{json_path}: channel_names must map channel numbers to names, such as {{"0": "CT"}}.')
    try:
        by_index = {int(key): str(value) for key, value in channels.items()}
    except (TypeError, ValueError):
        raise InputError(f"{json_path}: channel_names {channels!r} must be keyed by channel numbers.") from None
    missing = [i for i in range(len(by_index)) if i not in by_index]
    if missing:
        raise InputError(
            f"{json_path}: channel_names {channels!r} has no channel {missing[0]}; channels are numbered 0, 1, ... as "
            "the files' suffixes _0000, _0001, ..."
        )
    return [by_index[i] for i in range(len(by_index))]


def label_ids(labels: Any, json_path: Path) -> tuple[list[str], int | None]:
    """The class names by id and the id of nnU-Net's ignore label (None without one).

    Raises:
        InputError: Regions, ids that are no integers or are shared, gaps, fewer than two classes, an ignore label
            that is not the highest id.
    """
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
            ignore = (
                " (nnU-Net's ignore label takes an id of its own, the highest)"
                if IGNORE_NAME in (label_name, by_id[class_id])
                else ""
            )
            raise InputError(f"{json_path}: labels {by_id[class_id]!r} and {label_name!r} share id {class_id}{ignore}.")
        by_id[class_id] = str(label_name)
    ignore_id = None
    if IGNORE_NAME in labels:
        ignore_id = int(labels[IGNORE_NAME])
        if ignore_id != max(by_id):
            raise InputError(
                f"{json_path}: the ignore label has id {ignore_id} but {by_id[max(by_id)]!r} has {max(by_id)}; "
                "nnU-Net's ignore label takes the highest id, one above the last class."
            )
        del by_id[ignore_id]
    if sorted(by_id) != list(range(len(by_id))):
        raise InputError(f"{json_path}: label ids {sorted(by_id)} must be consecutive from 0 (background).")
    if len(by_id) < 2:
        raise InputError(f"{json_path}: 'labels' declares {len(by_id)} class; a segmentation needs at least two.")
    if ignore_id is not None and len(by_id) > IGNORE_LABEL:
        raise InputError(f"{json_path}: {len(by_id)} classes and an ignore label do not fit 8-bit labels.")
    return [by_id[i] for i in range(len(by_id))], ignore_id
