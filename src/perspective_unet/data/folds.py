"""Cross-validation folds: splits by case, written once to ``splits.json`` beside the prepared data.

The folds partition the cases a dataset keeps for development, its ``train`` and ``val`` splits; its ``test`` cases
are never in a fold, so training, validation and checkpoint selection never see them. The file has nnU-Net's layout
(``splits_final.json``): a list with one ``{"train": [...], "val": [...]}`` per fold. It is written on first use and
read as it is afterwards, so every run of a dataset, whatever its seed, uses the same folds; edit it (or delete it to
draw new ones) by hand if a study needs other folds.

Example:
    >>> folds = make_folds([f"case{i}" for i in range(7)], num_folds=3, seed=0)
    >>> [len(f["val"]) for f in folds], sorted(sum((f["val"] for f in folds), [])) == [f"case{i}" for i in range(7)]
    ([3, 2, 2], True)
"""

from __future__ import annotations

import contextlib
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

__all__ = ["ALL_FOLDS", "SPLITS_FILE", "Fold", "development_cases", "fold_cases", "make_folds", "read_splits"]

SPLITS_FILE = "splits.json"
ALL_FOLDS = "all"
DEFAULT_FOLD_SEED = 12345  # nnU-Net's


@dataclass(frozen=True)
class Fold:
    """The cases one run trains and validates on.

    Attributes:
        name: ``"fold_K"``, or ``"fold_all"`` for training on every development case.
        train: Cases to train on.
        val: Cases to validate on (empty for ``fold_all``).
    """

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]


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
            isinstance(f, dict) and set(f) == {"train", "val"} and all(isinstance(f[k], list) for k in f) for f in folds
        )
    ):
        raise InputError(
            f'{path} must hold a list of folds, each {{"train": [...], "val": [...]}}; fix it or '
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


def fold_cases(
    root: str | os.PathLike[str],
    info: DatasetInfo,
    fold: int | str,
    num_folds: int = 5,
    seed: int = DEFAULT_FOLD_SEED,
) -> Fold:
    """The training and validation cases of ``fold`` (0..num_folds-1, or ``"all"``), from ``root/splits.json``.

    The file is drawn and written on first use; later calls read it, whatever ``seed`` they give.

    Raises:
        InputError: Fewer development cases than folds, a fold index out of range, or an invalid ``splits.json``.
    """
    cases = development_cases(info)
    path = Path(root) / SPLITS_FILE
    if not path.exists():
        try:
            _write_once(path, make_folds(cases, num_folds, seed))
        except ValueError as exc:
            raise InputError(f"{root}: {exc} (development cases are the train and val splits).") from None
    folds = read_splits(path, cases)
    if len(folds) != num_folds:
        raise InputError(
            f"{path} holds {len(folds)} folds but {num_folds} were asked for; ask for {len(folds)}, or "
            "delete the file to draw new folds (runs of the old folds then no longer compare)."
        )
    if fold == ALL_FOLDS:
        return Fold("fold_all", tuple(cases), ())
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise InputError(f"fold must be 0..{len(folds) - 1} (the folds of {path}) or 'all', got {fold!r}.")
    return Fold(f"fold_{fold}", tuple(folds[fold]["train"]), tuple(folds[fold]["val"]))
