"""The array files every layout of this line of work stores, ``.npz`` slices (or ACDC ``.npz`` volumes) and
``.npy.h5`` volumes, and :class:`FolderWriter`, which writes a dataset folder all at once or not at all.

Each reader gives one :class:`~perspective_unet.errors.InputError` naming the file when it cannot read it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import h5py
import numpy as np

from perspective_unet.errors import InputError

__all__ = ["VOLUME_SUFFIX", "FolderWriter", "h5_depth", "load_h5", "load_npz", "save_h5", "save_npz"]

_Writer = TypeVar("_Writer", bound="FolderWriter")

VOLUME_SUFFIX = ".npy.h5"


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


def h5_depth(path: Path) -> int:
    """Number of slices of an ``.npy.h5`` volume, without reading them."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["image"].shape[0])
    except Exception as exc:
        raise InputError(f"Cannot read {path}: {type(exc).__name__}: {exc}.") from exc


def save_npz(path: Path, image: np.ndarray, label: np.ndarray | None, image_key: str = "image") -> None:
    """Write a compressed ``.npz`` with the image (float32) under ``image_key`` and the label (uint8) if any."""
    arrays = {image_key: np.asarray(image, dtype=np.float32)}
    if label is not None:
        arrays["label"] = np.asarray(label, dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def save_h5(path: Path, image: np.ndarray, label: np.ndarray | None, attrs: Mapping[str, Any] | None = None) -> None:
    """Write a ``(Z, H, W)`` (or ``(Z, C, H, W)``) volume (image float32, label uint8 (Z, H, W) if any) with its
    attributes as ``.npy.h5``."""
    image = np.asarray(image, dtype=np.float32)
    # One chunk per slice: a slice-wise reader touches one chunk, and gzip keeps the files small.
    chunks = (1, *image.shape[1:])
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, chunks=chunks, compression="gzip", compression_opts=4)
        if label is not None:
            label = np.asarray(label, dtype=np.uint8)
            label_chunks = (1, *label.shape[1:])
            f.create_dataset("label", data=label, chunks=label_chunks, compression="gzip", compression_opts=4)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


class FolderWriter:
    """Writes a dataset folder atomically: files go to a hidden temporary folder beside ``out``, which
    :meth:`commit` renames to ``out``; leaving the ``with`` block without it (an exception) deletes the temporary
    folder, so a failure never leaves half a dataset.

    Args:
        out: Final folder of the dataset.
        overwrite: Replace an existing ``out``; without it an existing ``out`` raises ``FileExistsError``.
        folders: Sub-folders to create in the temporary folder.
    """

    def __init__(self, out: str | os.PathLike[str], overwrite: bool = False, folders: tuple[str, ...] = ()) -> None:
        self.out = Path(out).absolute()
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already exists; choose another output folder or pass --overwrite.")
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.folders = folders
        self.finished = False

    def __enter__(self: _Writer) -> _Writer:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True)
        try:
            for sub in self.folders:
                (self.tmp / sub).mkdir(parents=True)
        except BaseException:
            # __exit__ does not run when __enter__ fails, and an interrupt (SIGTERM) can land right here.
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.finished:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def root(self) -> Path:
        """The temporary folder being written; extra files (README, LICENSE) may be put here before committing."""
        return self.tmp

    def commit(self) -> Path:
        """Move the written folder to ``out`` (replacing an old one only once the new one is in place)."""
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        self.finished = True
        return self.out
