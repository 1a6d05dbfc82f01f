"""Cross-validation folds: splits by case, written once to ``splits.json`` beside the prepared data.

The folds partition the cases a dataset keeps for development, its ``train`` and ``val`` splits; its ``test`` cases
are never in a fold, so training, validation and checkpoint selection never see them. The file has nnU-Net's layout
(``splits_final.json``): a list with one ``{"train": [...], "val": [...]}`` per fold. It is written on first use and
read as it is afterwards, so every run of a dataset, whatever its seed, uses the same folds; edit it (or delete it to
draw new ones) by hand if a study needs other folds.

Which file: a file given (``train --splits FILE``), else nnU-Net's ``splits_final.json`` beside the data, else
``splits.json`` beside the data (drawn on first use). When both files lie beside the data they must hold the same
folds. Each fold carries the SHA-256 of its file's folds (:func:`splits_hash`), which a checkpoint records so that a
resumed run refuses folds that changed since it started.

Example:
    >>> folds = make_folds([f"case{i}" for i in range(7)], num_folds=3, seed=0)
    >>> [len(f["val"]) for f in folds], sorted(sum((f["val"] for f in folds), [])) == [f"case{i}" for i in range(7)]
    ([3, 2, 2], True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perspective_unet.data.layouts.info import DatasetInfo
from perspective_unet.errors import InputError
from perspective_unet.outputs import read_json

__all__ = [
    "ALL_FOLDS",
    "NNUNET_SPLITS_FILE",
    "SPLITS_FILE",
    "Fold",
    "development_cases",
    "fold_cases",
    "make_folds",
    "read_splits",
    "splits_hash",
]

SPLITS_FILE = "splits.json"
NNUNET_SPLITS_FILE = "splits_final.json"
ALL_FOLDS = "all"
DEFAULT_FOLD_SEED = 12345  # nnU-Net's


@dataclass(frozen=True)
class Fold:
    """The cases one run trains and validates on.

    Attributes:
        name: ``"fold_K"``, or ``"fold_all"`` for training on every development case.
        train: Cases to train on.
        val: Cases to validate on (empty for ``fold_all``).
        splits_file: The file the folds were read from.
        splits_sha256: :func:`splits_hash` of that file's folds.
    """

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    splits_file: str = ""
    splits_sha256: str = ""

    def record(self) -> dict[str, object]:
        """What a checkpoint records of its fold (``InferenceInfo`` reads it back)."""
        return {
            "name": self.name,
            "train": list(self.train),
            "val": list(self.val),
            "splits_file": self.splits_file,
            "splits_sha256": self.splits_sha256,
        }


def splits_hash(folds: Sequence[dict[str, Sequence[str]]]) -> str:
    """SHA-256 of the folds' content (sorted keys, no whitespace): the same folds give the same hash however the
    file is laid out."""
    canonical = json.dumps([{k: list(f[k]) for k in sorted(f)} for f in folds], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def development_cases(info: DatasetInfo) -> list[str]:
    """The cases folds are drawn from: the dataset's ``train`` and ``val`` splits, never its ``test`` split."""
    return sorted({*info.cases("train"), *info.cases("val")})


def make_folds(cases: Sequence[str], num_folds: int = 5, seed: int = DEFAULT_FOLD_SEED) -> list[dict[str, list[str]]]:
    """Deal seeded, shuffled cases into ``num_folds`` validation sets of near-equal size (larger ones first).

    The cases are sorted before shuffling, so the folds depend on the set of cases and the seed only.

    Raises:
        ValueError: Fewer cases than folds, fewer than two folds, or duplicate case names.
    """
    if len(set(cases)) != len(cases):
        raise ValueError("make_folds got duplicate case names.")
    if num_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {num_folds}.")
    if len(cases) < num_folds:
        raise ValueError(f"{num_folds} folds need at least {num_folds} cases, got {len(cases)}.")
    ordered = sorted(cases)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    folds = []
    for part in np.array_split(np.arange(len(shuffled)), num_folds):
        val = sorted(shuffled[i] for i in part)
        folds.append({"train": sorted(set(ordered) - set(val)), "val": val})
    return folds


def read_splits(path: Path, cases: Sequence[str]) -> list[dict[str, list[str]]]:
    """The folds of a ``splits.json``, checked against the dataset's development cases.

    Raises:
        InputError: The file is not valid JSON or not a list of folds, or a fold names a case outside ``cases``,
            puts a case on both sides, or leaves one out.
    """
    folds = read_json(path, "fix it or delete it to draw new folds.")
    if (
        not isinstance(folds, list)
        or not folds
        or not all(
            isinstance(f, dict)
            and set(f) == {"train", "val"}
            and all(isinstance(f[k], list) and all(isinstance(c, str) for c in f[k]) for k in f)
            for f in folds
        )
    ):
        raise InputError(
            f'{path} must hold a list of folds, each {{"train": [case, ...], "val": [case, ...]}}; fix it or '
            "delete it to draw new folds."
        )
    known = set(cases)
    for index, fold in enumerate(folds):
        train, val = set(fold["train"]), set(fold["val"])
        unknown = sorted((train | val) - known)
        if unknown:
            raise InputError(
                f"{path}, fold {index}: cases {unknown[:3]} are not development cases (train or val "
                "split) of the dataset; test cases never enter a fold. Fix the file or delete it."
            )
        if train & val:
            raise InputError(f"{path}, fold {index}: cases {sorted(train & val)[:3]} are on both sides.")
        if train | val != known:
            raise InputError(
                f"{path}, fold {index}: cases {sorted(known - train - val)[:3]} are on neither side; "
                "the file was written for other data. Delete it to draw new folds."
            )
    return folds


def _write_once(path: Path, folds: list[dict[str, list[str]]]) -> None:
    """Write ``path`` only if it does not exist yet; a concurrent writer's file wins, never half a file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(json.dumps(folds, indent=2) + "\n")
        with contextlib.suppress(FileExistsError):  # another run wrote the file first: its folds stand
            os.link(temporary, path)
    except OSError as exc:
        raise InputError(
            f"cannot write {path} ({exc.strerror or exc}); folds are kept beside the prepared data, so "
            "the folder must be writable (or copy the dataset somewhere writable)."
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def _splits_file(root: Path, given: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The splits file of a run and whether it exists: the given one, else nnU-Net's, else ``splits.json``.

    Raises:
        InputError: A given file is missing, or the two files beside the data hold different folds.
    """
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise InputError(f'{path} does not exist; give the splits file (a list of {{"train", "val"}} folds).')
        return path, True
    nnunet, ours = root / NNUNET_SPLITS_FILE, root / SPLITS_FILE
    if nnunet.is_file() and ours.is_file():
        read = [read_json(path, "fix it or delete it to draw new folds.") for path in (nnunet, ours)]
        if read[0] != read[1]:
            raise InputError(
                f"{nnunet} and {ours} hold different folds; keep the one your runs use and delete the other."
            )
    if nnunet.is_file():
        return nnunet, True
    return ours, ours.is_file()


def fold_cases(
    root: str | os.PathLike[str],
    info: DatasetInfo,
    fold: int | str,
    num_folds: int = 5,
    seed: int = DEFAULT_FOLD_SEED,
    *,
    splits: str | os.PathLike[str] | None = None,
    draw: bool = True,
) -> Fold:
    """The training and validation cases of ``fold`` (0..num_folds-1, or ``"all"``).

    The folds come from ``splits``, else from ``root/splits_final.json``, else from ``root/splits.json``, which is
    drawn and written on first use; later calls read it, whatever ``seed`` they give.

    Args:
        root: The prepared dataset folder.
        info: Its description (the development cases).
        fold: The fold's index, or ``"all"``.
        num_folds: The folds the file must hold (and how many to draw).
        seed: Seed of a new draw.
        splits: A splits file of the user's instead of the files beside the data.
        draw: Draw and write ``splits.json`` when there is no file (False: refuse; a resumed run never draws).

    Raises:
        InputError: Fewer development cases than folds, a fold index out of range, an invalid or missing splits file.
    """
    cases = development_cases(info)
    path, exists = _splits_file(Path(root), splits)
    if not exists:
        if not draw:
            raise InputError(f"{path} is missing; restore the splits file the run was trained with.")
        try:
            _write_once(path, make_folds(cases, num_folds, seed))
        except ValueError as exc:
            raise InputError(f"{root}: {exc} (development cases are the train and val splits).") from None
    folds = read_splits(path, cases)
    if len(folds) != num_folds:
        raise InputError(
            f"{path} holds {len(folds)} folds but {num_folds} were asked for; ask for {len(folds)} (--num-folds), "
            "or delete the file to draw new folds (runs of the old folds then no longer compare)."
        )
    digest = splits_hash(folds)
    if fold == ALL_FOLDS:
        return Fold("fold_all", tuple(cases), (), str(path), digest)
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise InputError(f"fold must be 0..{len(folds) - 1} (the folds of {path}) or 'all', got {fold!r}.")
    return Fold(f"fold_{fold}", tuple(folds[fold]["train"]), tuple(folds[fold]["val"]), str(path), digest)
