"""``perspective-unet crossval RUN_DIR``: the folds' out-of-fold predictions gathered into one cross-validation
summary.

Each fold run of ``RUN_DIR`` (``fold_0`` ... ``fold_K``, see :class:`~perspective_unet.runs.RunFolder`) ended by
predicting its held-out cases into ``fold_K/validation/`` with their ``summary.json``. Together the folds predict
every development case exactly once, with a model that never trained on it; their per-case scores, pooled, are the
cross-validation result: ``RUN_DIR/crossval/summary.json`` (and ``per_case.csv``, ``summary.md``) in the schema of
every evaluation (:mod:`perspective_unet.evaluation`), the means taken over all cases (not over fold means).

A fold that is missing, or has not finished (no ``validation/summary.json``), is refused unless ``allow_missing``; the
folds must come from one splits file (the same hash) and one dataset, and no case may be predicted twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perspective_unet.engine.report import REPORT_FILE
from perspective_unet.errors import InputError
from perspective_unet.evaluation import REPORTS, EvaluationSummary, write_summary
from perspective_unet.outputs import output_lock, read_json, remove_stale_temporaries
from perspective_unet.runs import RunFolder

__all__ = ["CrossValidation", "FoldResult", "crossval", "gather_folds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    """One fold's out-of-fold scores.

    Attributes:
        run: The fold's run folder.
        summary: The scores of its held-out cases.
        record: What ``summary.json`` records beside the scores (fold, splits file and hash, data, epoch, ...).
    """

    run: RunFolder
    summary: EvaluationSummary
    record: dict[str, Any]


@dataclass(frozen=True)
class CrossValidation:
    """The folds of a folder of fold runs, gathered.

    Attributes:
        folder: The folder of fold runs.
        folds: The finished folds, by index.
        missing: The folds expected but not finished (names).
        summary: Every held-out case's scores, pooled.
    """

    folder: Path
    folds: tuple[FoldResult, ...]
    missing: tuple[str, ...]
    summary: EvaluationSummary

    @property
    def data(self) -> str:
        """The prepared dataset the folds were trained on."""
        return str(self.folds[0].record.get("data", ""))

    @property
    def fold_of_case(self) -> dict[str, str]:
        """The fold whose model predicted each case."""
        return {case.case: fold.run.path.name for fold in self.folds for case in fold.summary.cases}

    def record(self) -> dict[str, Any]:
        """What the cross-validation summary records beside the scores."""
        first = self.folds[0].record
        return {
            "folder": str(self.folder),
            "folds": [fold.run.path.name for fold in self.folds],
            "missing_folds": list(self.missing),
            "splits_file": first.get("splits_file"),
            "splits_sha256": first.get("splits_sha256"),
            "data": first.get("data"),
            "split": "val (out-of-fold)",
            "tta": first.get("tta", False),
        }


def _expected_folds(runs: list[RunFolder], records: list[dict[str, Any]]) -> int:
    """How many folds the splits hold: recorded by the folds' trainings, else the highest fold index found."""
    counted = {int(r["num_folds"]) for r in records if isinstance(r.get("num_folds"), int)}
    if len(counted) > 1:
        raise InputError(f"the fold runs were trained with different numbers of folds ({sorted(counted)}).")
    found = max((int(run.path.name.split("_")[1]) for run in runs), default=-1) + 1
    return counted.pop() if counted else found


def _read_fold(run: RunFolder) -> FoldResult | None:
    path = run.validation_summary
    if not path.is_file():
        return None
    data = read_json(path, f"train the fold again (or resume it) to predict its held-out cases into {run.validation}.")
    summary = EvaluationSummary.from_dict(data, path)
    return FoldResult(run, summary, {k: v for k, v in data.items() if k not in ("metric_per_case", "mean")})


def _check_consistent(folds: list[FoldResult], folder: Path) -> None:
    first = folds[0]
    for fold in folds[1:]:
        for key, what in (("splits_sha256", "splits file"), ("data", "dataset")):
            if fold.record.get(key) != first.record.get(key):
                raise InputError(
                    f"{fold.run.validation_summary} and {first.run.validation_summary} come from another {what} "
                    f"({fold.record.get(key)} vs {first.record.get(key)}); the folds of one cross-validation share "
                    "their splits and data."
                )


def gather_folds(folder: str | os.PathLike[str], *, allow_missing: bool = False) -> CrossValidation:
    """The finished folds of a folder of fold runs and their pooled scores.

    Raises:
        InputError: No fold run, a fold missing or unfinished (unless ``allow_missing``), folds of other splits or
            data, or a case predicted by two folds.
    """
    root = RunFolder(folder)
    runs = root.fold_runs()
    if not runs:
        raise InputError(f"{root.path} holds no fold runs (fold_0, fold_1, ...); train them with `train --fold K`.")
    folds = [fold for fold in (_read_fold(run) for run in runs) if fold is not None]
    expected = _expected_folds(runs, [fold.record for fold in folds])
    done = {fold.run.path.name for fold in folds}
    missing = tuple(f"fold_{k}" for k in range(expected) if f"fold_{k}" not in done)
    if missing and not allow_missing:
        raise InputError(
            f"{root.path}: {', '.join(missing)} of {expected} folds have no out-of-fold predictions "
            "(validation/summary.json); train them (`train --fold K`), or pass --allow-missing to summarize the "
            "others."
        )
    if not folds:
        raise InputError(f"{root.path}: no fold has finished (no fold_K/validation/summary.json).")
    _check_consistent(folds, root.path)
    summary = folds[0].summary
    for fold in folds[1:]:
        try:
            summary = summary.merged(fold.summary)
        except ValueError as exc:
            raise InputError(
                f"{fold.run.validation_summary}: {exc} Each case belongs to one fold's held-out cases."
            ) from None
    if missing:
        log.warning("%s: %s missing; the summary covers %d cases", root.path, ", ".join(missing), len(summary.cases))
    return CrossValidation(root.path, tuple(folds), missing, summary)


def crossval(
    folder: str | os.PathLike[str], *, allow_missing: bool = False, overwrite: bool = False
) -> tuple[CrossValidation, dict[str, Any]]:
    """Write the cross-validation summary of a folder of fold runs into ``folder/crossval``.

    Returns:
        The gathered folds and ``summary.json``'s content.

    Raises:
        InputError: See :func:`gather_folds`.
        FileExistsError: A summary exists and ``overwrite`` is False (nothing is written).
    """
    output = RunFolder(folder).crossval
    existing = [name for name in REPORTS if (output / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{output / existing[0]} already exists; nothing was written. Pass --overwrite to replace it."
        )
    gathered = gather_folds(folder, allow_missing=allow_missing)
    with output_lock(output, "crossval"):
        remove_stale_temporaries(output)
        written = write_summary(gathered.summary, output, gathered.record())
        # A page of the summary just replaced would show its scores beside the new one (--report draws it again).
        (output / REPORT_FILE).unlink(missing_ok=True)
        return gathered, written
