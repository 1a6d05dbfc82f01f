"""Where the slices of a dataset live, in any of the three layouts, how to read one, and which are its neighbors.

A :class:`SliceRef` names one 2D slice: a training ``.npz`` file, a slice of a validation or test volume (``.npy.h5``
or an ACDC ``.npz`` volume), with the case it belongs to and its position among that case's slices, so that the
slices above and below (2.5D context) can be found.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import h5py
import numpy as np

from perspective_unet.data.layout import TEST_DIR, TRAIN_DIR, VOLUME_SUFFIX, volume_dir
from perspective_unet.errors import InputError

__all__ = [
    "ACDC_FOLDERS",
    "SliceRef",
    "acdc_case",
    "case_of_slice",
    "case_slices",
    "context_indices",
    "list_slices",
    "load_h5",
    "load_npz",
    "load_slice",
    "synapse_list",
    "volume_files",
]

ACDC_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


def synapse_list(root: Path, name: str) -> list[str] | None:
    """Names in a TransUNet-style list file (``lists/``, ``lists/lists_Synapse/`` or ``lists_Synapse/``), if any."""
    for folder in (root / "lists", root / "lists" / "lists_Synapse", root / "lists_Synapse"):
        path = folder / name
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


def case_of_slice(name: str) -> str:
    """``<case>_slice<NNN>`` -> ``<case>``."""
    return name.rsplit("_slice", 1)[0]


def acdc_case(stem: str) -> str:
    """An ACDC file's case: ``case_001_sliceED_3`` -> ``case_001_ED``; ``case_001_volume_ES`` -> ``case_001_ES``."""
    parts = stem.split("_")
    if len(parts) >= 4 and parts[2].startswith("slice"):
        return f"{parts[0]}_{parts[1]}_{parts[2][len('slice') :]}"
    if len(parts) >= 4 and parts[2] == "volume":
        return f"{parts[0]}_{parts[1]}_{parts[3]}"
    return stem


def _position(name: str) -> int:
    """The number after the last ``_slice`` or ``_`` of a slice name (``case_slice012`` -> 12), else 0."""
    tail = name.rsplit("_slice", 1)[-1] if "_slice" in name else name
    digits = tail.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


@dataclass(frozen=True)
class SliceRef:
    """Where one slice lives.

    Attributes:
        name: ``<case>_slice<NNN>`` (or the ACDC file's stem).
        path: A 2D ``.npz`` file (``z`` is None) or a volume file.
        z: The slice's index in a volume file.
        case: The case it belongs to.
        position: Its order among the case's slices.
    """

    name: str
    path: Path
    z: int | None = None
    case: str = ""
    position: int = 0


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image, label or None)`` of an ``.npz`` file with keys image (or img) and label."""
    try:
        with np.load(path) as data:
            key = "image" if "image" in data.files else "img" if "img" in data.files else None
            if key is None:
                raise InputError(f"{path} has no 'image' (or 'img') array; keys are {data.files}.")
            label = np.asarray(data["label"]) if "label" in data.files else None
            return np.asarray(data[key]), label
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Cannot read {path}: {type(exc).__name__}: {exc}; prepare or copy the file again.") from exc


@overload
def load_h5(
    path: Path, z: int | None = None, *, label_only: Literal[False] = False
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]: ...


@overload
def load_h5(
    path: Path, z: int | None = None, *, label_only: Literal[True]
) -> tuple[None, np.ndarray | None, dict[str, Any]]: ...


def load_h5(
    path: Path, z: int | None = None, *, label_only: bool = False
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """``(image, label or None, attributes)`` of a volume file, or of its slice ``z`` (then without attributes).

    With ``label_only`` the image is neither read nor required (it comes back as None): a figure of a label map need
    not read the far larger float image.
    """
    try:
        with h5py.File(path, "r") as f:
            index = slice(None) if z is None else z
            image = None if label_only else np.asarray(f["image"][index])
            label = np.asarray(f["label"][index]) if "label" in f else None
            attrs = {key: _plain(value) for key, value in f.attrs.items()} if z is None else {}
        return image, label, attrs
    except Exception as exc:
        raise InputError(f"Cannot read {path}: {type(exc).__name__}: {exc}; prepare or copy the file again.") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return value.astype(str)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _volume_depth(path: Path) -> int:
    if path.name.endswith(VOLUME_SUFFIX):
        try:
            with h5py.File(path, "r") as f:
                return int(f["image"].shape[0])
        except Exception as exc:
            raise InputError(f"Cannot read {path}: {type(exc).__name__}: {exc}.") from exc
    image, _ = load_npz(path)
    return int(image.shape[0])


def volume_files(info: dict[str, Any], split: str) -> list[tuple[str, Path]]:
    """(case, file) of a split's volumes in any layout."""
    root = Path(info["root"])
    layout = info["layout"]
    if layout == "acdc_files":
        folder = root / ACDC_FOLDERS[split]
        return [(acdc_case(p.stem), p) for p in sorted(folder.glob("case_*_volume_*.npz"))] if folder.is_dir() else []
    if split == "train" or (layout == "synapse_files" and split == "val"):
        return []
    folder = root / (volume_dir(split) if layout == "prepared" else TEST_DIR)
    return [(case, folder / f"{case}{VOLUME_SUFFIX}") for case in info["splits"].get(split, [])]


def _train_names(root: Path, info: dict[str, Any]) -> list[str]:
    if info["layout"] == "synapse_files":
        names = synapse_list(root, "train.txt")
    else:
        list_path = root / "lists" / "train.txt"
        names = None
        if list_path.is_file():
            names = [n.strip() for n in list_path.read_text().splitlines() if n.strip()]
    if names is None:
        names = sorted(p.stem for p in (root / TRAIN_DIR).glob("*.npz"))
    if info["layout"] == "prepared":
        cases = set(info["splits"]["train"])
        names = [n for n in names if case_of_slice(n) in cases]
    return names


def list_slices(root: str | os.PathLike[str], info: dict[str, Any], split: str) -> list[SliceRef]:
    """Every slice of a split: the training ``.npz`` files, or the slices of the validation / test volumes.

    Raises:
        InputError: A volume the dataset lists is missing.
    """
    root = Path(root)
    if info["layout"] == "acdc_files" and split in ("train", "val"):
        folder = root / ACDC_FOLDERS[split]
        files = sorted(folder.glob("case_*_slice*.npz")) if folder.is_dir() else []
        return [SliceRef(p.stem, p, None, acdc_case(p.stem), _position(p.stem)) for p in files]
    if split == "train":
        names = _train_names(root, info)
        return [SliceRef(n, root / TRAIN_DIR / f"{n}.npz", None, case_of_slice(n), _position(n)) for n in names]
    samples = []
    for case, path in volume_files(info, split):
        if not path.exists():
            raise InputError(f"{path} is missing; the dataset lists case {case!r} in its {split} split.")
        samples += [SliceRef(f"{case}_slice{z:03d}", path, z, case, z) for z in range(_volume_depth(path))]
    return samples


def case_slices(root: str | os.PathLike[str], info: dict[str, Any], cases: Sequence[str]) -> list[SliceRef]:
    """Every slice of the given development cases, wherever they are stored (training slices or validation volumes).

    Raises:
        InputError: A case has no slices in the train or val split (test cases never do: they are not for training).
    """
    wanted = set(cases)
    refs = [ref for split in ("train", "val") for ref in list_slices(root, info, split) if ref.case in wanted]
    missing = sorted(wanted - {ref.case for ref in refs})
    if missing:
        raise InputError(
            f"{root} has no training or validation slices of cases {missing[:3]}; folds take their cases "
            "from the train and val splits only."
        )
    return refs


def load_slice(ref: SliceRef) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored slice: image float32 (H, W) and label int64 (H, W) or None."""
    if ref.z is None:
        image, label = load_npz(ref.path)
    elif ref.path.name.endswith(VOLUME_SUFFIX):
        image, label, _ = load_h5(ref.path, ref.z)
    else:
        volume, labels = load_npz(ref.path)
        image, label = volume[ref.z], None if labels is None else labels[ref.z]
    if image.ndim != 2 or (label is not None and image.shape != label.shape):
        shape = None if label is None else label.shape
        raise InputError(f"{ref.path}: slice image {image.shape} and label {shape} must be equal 2D shapes.")
    return image.astype(np.float32), None if label is None else np.rint(label).astype(np.int64)


def context_indices(samples: Sequence[SliceRef], context: int) -> list[tuple[int, ...]]:
    """For every slice, the indices of the ``2 * context + 1`` slices around it, from below to above.

    Neighbors are the slices of the same case in position order; past the first or last slice of a case the end
    slice is repeated, as inference pads a volume.

    Example:
        >>> refs = [SliceRef(f"a_slice{z:03d}", Path("x"), None, "a", z) for z in (4, 5, 6)]
        >>> context_indices(refs, 1)
        [(0, 0, 1), (0, 1, 2), (1, 2, 2)]
    """
    if context == 0:
        return [(i,) for i in range(len(samples))]
    by_case: dict[str, list[int]] = defaultdict(list)
    for index, ref in enumerate(samples):
        by_case[ref.case].append(index)
    out: list[tuple[int, ...]] = [()] * len(samples)
    for members in by_case.values():
        ordered = sorted(members, key=lambda i: samples[i].position)
        last = len(ordered) - 1
        for rank, index in enumerate(ordered):
            out[index] = tuple(ordered[min(max(rank + d, 0), last)] for d in range(-context, context + 1))
    return out
