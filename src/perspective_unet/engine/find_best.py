"""``perspective-unet find-best DIR_A DIR_B ...``: which configuration (or ensemble) to use, and its post-processing.

Each ``DIR`` is a configuration: a folder of fold runs whose folds predicted their held-out cases
(:mod:`perspective_unet.engine.crossval`). As nnU-Net's ``find_best_configuration``, on those out-of-fold predictions:

1. every configuration and every pair of configurations (an ensemble: the mean of their saved probabilities) is
   scored on every case with nnU-Net's Dice, and ranked by the foreground mean Dice (each class averaged over
   cases, then the classes averaged);
2. each is shown with its spread over the folds (mean and sample standard deviation of the folds' foreground mean
   Dice) and a paired two-sided Wilcoxon signed-rank test on the cases' mean Dice (:mod:`perspective_unet.stats`):
   the best against the runner-up, every other against the best;
3. post-processing is decided on the best one's predictions: keeping only the largest component of all foreground
   classes together is kept if it raises the foreground mean Dice and lowers no class's; then, for each class,
   keeping only its largest component is kept if it raises that class's mean Dice
   (:class:`~perspective_unet.postprocessing.Postprocessing`).

Written into the output folder: ``postprocessing.json``, ``find_best.json`` and ``find_best.md`` (the ranking) and
``inference_instructions.txt`` with the exact ``predict`` command. All configurations must share their classes,
cases, splits and data. Cases are read one at a time, so memory holds one case of every configuration.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data import VolumeDataset
from perspective_unet.data.io import read_image
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.crossval import CrossValidation, gather_folds
from perspective_unet.engine.fold_validation import from_own_grid
from perspective_unet.errors import InputError
from perspective_unet.evaluation import CaseScores, EvaluationSummary, nanmean, score_volume
from perspective_unet.outputs import output_lock, remove_stale_temporaries, text_writer, write_all
from perspective_unet.postprocessing import POSTPROCESSING_FILE, Postprocessing, keep_largest_component
from perspective_unet.runs import RunFolder
from perspective_unet.stats import Comparison, Spread, paired_wilcoxon, spread
from perspective_unet.table import format_table

__all__ = ["Candidate", "ModelChoice", "find_best"]

log = logging.getLogger(__name__)

FIND_BEST_FILES = ("find_best.json", "find_best.md", "inference_instructions.txt", POSTPROCESSING_FILE)


@dataclass(frozen=True)
class Candidate:
    """A configuration or an ensemble of configurations, scored on the out-of-fold predictions.

    Attributes:
        members: The configuration folders (one, or several for an ensemble), as given.
        summary: Every case's Dice.
        folds: The foreground mean Dice of each fold's cases, as a spread.
        comparison: The paired test against ``compared_with`` (the runner-up for the best, the best for the others).
        compared_with: The name of the candidate it is compared with.
    """

    members: tuple[str, ...]
    summary: EvaluationSummary
    folds: Spread
    comparison: Comparison | None = None
    compared_with: str | None = None

    @property
    def name(self) -> str:
        """The members' folders as given, joined by `` + ``."""
        return " + ".join(self.members)

    @property
    def dice(self) -> float:
        """The foreground mean Dice (each class averaged over cases, then the classes)."""
        return self.summary.foreground_mean()["Dice"]


@dataclass(frozen=True)
class ModelChoice:
    """What ``find-best`` found.

    Attributes:
        candidates: Every candidate, best first.
        postprocessing: The post-processing decided on the best candidate.
        dice_before: The best candidate's mean Dice per class (and ``foreground``) before post-processing.
        dice_after: The same after it.
        predict_command: The ``predict`` command that applies the choice.
    """

    candidates: tuple[Candidate, ...]
    postprocessing: Postprocessing
    dice_before: dict[str, float] = field(default_factory=dict)
    dice_after: dict[str, float] = field(default_factory=dict)
    predict_command: str = ""

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def _dice_only(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[int, dict[str, float]]:
    return score_volume(pred, ref, num_classes, spacing=None, protocols=())


def _check_same_task(gathered: Sequence[CrossValidation], folders: Sequence[str]) -> None:
    first = gathered[0]
    for folder, other in zip(folders[1:], gathered[1:]):
        if other.summary.class_names != first.summary.class_names:
            raise InputError(
                f"{folder} predicts {list(other.summary.class_names)}, {folders[0]} "
                f"{list(first.summary.class_names)}; configurations compared must share their classes."
            )
        if (
            set(other.fold_of_case) != set(first.fold_of_case)
            or other.record()["splits_sha256"] != first.record()["splits_sha256"]
        ):
            raise InputError(
                f"{folder} and {folders[0]} were cross-validated on other cases or folds; configurations compared "
                "must be trained on the same splits file."
            )


class _Predictions:
    """The out-of-fold predictions of the configurations, read one case at a time on the canonical grid."""

    def __init__(self, folders: Sequence[str], gathered: Sequence[CrossValidation]) -> None:
        self.folders = list(folders)
        self.runs = [RunFolder(folder) for folder in folders]
        self.fold_of_case = gathered[0].fold_of_case

    def _fold(self, index: int, case: str) -> RunFolder:
        return RunFolder(self.runs[index].path / self.fold_of_case[case])

    def labels(self, index: int, case: str, attrs: dict[str, Any]) -> np.ndarray:
        path = self._fold(index, case).validation_labels(case)
        return from_own_grid(read_image(path, as_label=True)[0], attrs).astype(np.int64)

    def probabilities(self, index: int, case: str, attrs: dict[str, Any]) -> np.ndarray:
        path = self._fold(index, case).validation_probabilities(case)
        if not path.is_file():
            raise InputError(
                f"{path} is missing: an ensemble averages the folds' saved probabilities; train the fold again, or "
                "pass --no-ensembles."
            )
        with np.load(path) as saved:
            probabilities = saved["probabilities"].astype(np.float32)
        return np.stack([from_own_grid(p, attrs) for p in probabilities])

    def candidate_labels(
        self, members: tuple[int, ...], case: str, attrs: dict[str, Any], cache: dict[int, np.ndarray]
    ) -> np.ndarray:
        if len(members) == 1:
            return self.labels(members[0], case, attrs)
        for index in members:
            if index not in cache:
                cache[index] = self.probabilities(index, case, attrs)
        return np.mean([cache[i] for i in members], axis=0).argmax(axis=0)


def _cases(data: str, cases: Sequence[str]) -> Iterator[dict[str, Any]]:
    dataset = VolumeDataset(open_dataset(data), cases=list(cases))
    for index in range(len(dataset)):
        yield dataset[index]


def _score_candidates(
    predictions: _Predictions, groups: Sequence[tuple[int, ...]], data: str, class_names: Sequence[str]
) -> list[list[CaseScores]]:
    scored: list[list[CaseScores]] = [[] for _ in groups]
    for item in _cases(data, sorted(predictions.fold_of_case)):
        cache: dict[int, np.ndarray] = {}
        for position, members in enumerate(groups):
            labels = predictions.candidate_labels(members, item["case"], item["meta"], cache)
            metrics = _dice_only(labels, item["label"], len(class_names))
            scored[position].append(CaseScores(item["case"], metrics))
    return scored


def _fold_spread(summary: EvaluationSummary, fold_of_case: dict[str, str]) -> Spread:
    by_fold: dict[str, list[CaseScores]] = {}
    for case in summary.cases:
        by_fold.setdefault(fold_of_case[case.case], []).append(case)
    values = [
        EvaluationSummary(tuple(cases), summary.class_names, ()).foreground_mean()["Dice"] for cases in by_fold.values()
    ]
    return spread(values)


def _compare(ranked: list[Candidate]) -> list[Candidate]:
    """Each candidate with its paired test: the best against the runner-up, the others against the best."""
    out = []
    for position, candidate in enumerate(ranked):
        if len(ranked) < 2:
            out.append(candidate)
            continue
        other = ranked[1] if position == 0 else ranked[0]
        mine, theirs = candidate.summary.case_scores(), other.summary.case_scores()
        keys = sorted(set(mine) & set(theirs))
        comparison = paired_wilcoxon([mine[k] for k in keys], [theirs[k] for k in keys])
        out.append(Candidate(candidate.members, candidate.summary, candidate.folds, comparison, other.name))
    return out


def _decide_postprocessing(
    predictions: _Predictions, members: tuple[int, ...], data: str, class_names: Sequence[str]
) -> tuple[Postprocessing, dict[str, float], dict[str, float]]:
    """nnU-Net's decision on the best candidate's predictions, in one pass over the cases (see the module
    docstring): each case is scored as predicted (``plain``), with the foreground's largest component kept
    (``whole``), and with each class's largest component kept on both of these (``single``, ``single_after_whole``).
    A class's step changes only that class's voxels, so each class is decided on its own."""
    num_classes = len(class_names)
    classes = list(range(1, num_classes))
    variants: dict[str, list[CaseScores]] = {"plain": [], "whole": [], "single": [], "single_after_whole": []}
    for item in _cases(data, sorted(predictions.fold_of_case)):
        labels = predictions.candidate_labels(members, item["case"], item["meta"], {})
        reference, case = item["label"], item["case"]
        kept = keep_largest_component(labels, classes)
        for name, variant in (("plain", labels), ("whole", kept)):
            variants[name].append(CaseScores(case, _dice_only(variant, reference, num_classes)))
        for name, variant in (("single", labels), ("single_after_whole", kept)):
            per_class = {
                k: _dice_only(keep_largest_component(variant, [k]), reference, num_classes)[k] for k in classes
            }
            variants[name].append(CaseScores(case, per_class))
    mean = {name: EvaluationSummary(tuple(v), tuple(class_names), ()).mean() for name, v in variants.items()}
    use_whole = _improves(mean["whole"], mean["plain"], classes)
    base, single = (mean["whole"], mean["single_after_whole"]) if use_whole else (mean["plain"], mean["single"])
    chosen = [k for k in classes if single[k]["Dice"] > base[k]["Dice"]]
    after = {k: (single if k in chosen else base)[k]["Dice"] for k in classes}
    before = {k: mean["plain"][k]["Dice"] for k in classes}
    named_before = {class_names[k]: before[k] for k in classes} | {"foreground": nanmean(before.values())}
    named_after = {class_names[k]: after[k] for k in classes} | {"foreground": nanmean(after.values())}
    return Postprocessing(tuple(class_names), use_whole, tuple(chosen)), named_before, named_after


def _improves(after: dict[int, dict[str, float]], before: dict[int, dict[str, float]], classes: list[int]) -> bool:
    """nnU-Net's rule for the foreground step: a higher foreground mean Dice, and no class's mean Dice lower."""
    higher = nanmean(after[k]["Dice"] for k in classes) > nanmean(before[k]["Dice"] for k in classes)
    return higher and not any(after[k]["Dice"] < before[k]["Dice"] for k in classes)


def _command(members: Sequence[str], output: Path) -> str:
    parts = ["perspective-unet", "predict", "--checkpoint", *members, "-i", "INPUT_FOLDER", "-o", "OUTPUT_FOLDER"]
    parts += ["--postprocess", str(output / POSTPROCESSING_FILE)]
    return shlex.join(parts)


def find_best(
    configurations: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    ensembles: bool = True,
    data: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ModelChoice:
    """Rank configurations and their pairwise ensembles, decide post-processing, write the files (module docstring).

    Args:
        configurations: Folders of fold runs, one per configuration.
        output: Where postprocessing.json, find_best.json/.md and inference_instructions.txt go.
        ensembles: Also score every pair of configurations as an ensemble.
        data: The prepared dataset with the references (default: the one the folds recorded).
        overwrite: Replace the files of an earlier choice in ``output``.

    Raises:
        InputError: No configuration, a configuration with a missing fold, configurations of other classes or
            splits, or missing saved probabilities for an ensemble.
        FileExistsError: ``output`` holds an earlier choice and ``overwrite`` is False.
    """
    folders = [str(c) for c in configurations]
    if not folders:
        raise InputError("give at least one configuration (a folder of fold runs).")
    if len(set(folders)) != len(folders):
        raise InputError(f"a configuration is given twice ({folders}).")
    output = Path(output)
    existing = [name for name in FIND_BEST_FILES if (output / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{output / existing[0]} already exists; nothing was written. Pass --overwrite.")
    gathered = [gather_folds(folder) for folder in folders]
    _check_same_task(gathered, folders)
    class_names = list(gathered[0].summary.class_names)
    data = str(data) if data is not None else gathered[0].data
    predictions = _Predictions(folders, gathered)
    groups = [(i,) for i in range(len(folders))]
    if ensembles:
        groups += list(itertools.combinations(range(len(folders)), 2))
    log.info("scoring %d configuration(s) and %d ensemble(s)", len(folders), len(groups) - len(folders))
    scored = _score_candidates(predictions, groups, data, class_names)
    candidates = []
    for members, cases in zip(groups, scored):
        summary = EvaluationSummary(tuple(cases), tuple(class_names), ())
        folds = _fold_spread(summary, predictions.fold_of_case)
        candidates.append(Candidate(tuple(folders[i] for i in members), summary, folds))
    ranked = _compare(sorted(candidates, key=lambda c: (-_sortable(c.dice), c.name)))
    best_members = groups[[c.members for c in candidates].index(ranked[0].members)]
    post, before, after = _decide_postprocessing(predictions, best_members, data, class_names)
    post = Postprocessing(
        post.class_names,
        post.foreground_as_one,
        post.largest_component_classes,
        {"decided_on": ranked[0].name, "dice_before": before, "dice_after": after},
    )
    choice = ModelChoice(tuple(ranked), post, before, after, _command(ranked[0].members, output))
    _write(choice, output)
    return choice


def _sortable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def markdown(choice: ModelChoice) -> str:
    """The ranking, the post-processing and the command, as Markdown."""
    rows = []
    for rank, c in enumerate(choice.candidates, 1):
        folds = f"{c.folds.mean * 100:.2f} ± {c.folds.std * 100:.2f}" if math.isfinite(c.folds.std) else "n/a"
        test = ("", "") if c.comparison is None else (_p(c.comparison.p_value), c.compared_with or "")
        rows.append([rank, c.name, f"{c.dice * 100:.2f}", folds, len(c.summary.cases), *test])
    header = ["rank", "configuration", "Dice (%)", "folds (mean ± std)", "cases", "p (Wilcoxon)", "against"]
    before, after = choice.dice_before, choice.dice_after
    changes = [[name, f"{before[name] * 100:.2f}", f"{after[name] * 100:.2f}"] for name in before]
    return "\n".join(
        [
            "# Model choice on the out-of-fold predictions",
            "",
            "Foreground mean Dice of every configuration and pairwise ensemble (mean of the probabilities); spread "
            "over the folds; paired two-sided Wilcoxon signed-rank test on the cases' mean Dice: the best against the "
            "runner-up, the others against the best.",
            "",
            format_table(header, rows, markdown=True),
            "",
            f"## Post-processing of {choice.best.name}",
            "",
            f"Steps: {choice.postprocessing.describe()}.",
            "",
            format_table(["class", "Dice before (%)", "Dice after (%)"], changes, markdown=True),
            "",
            "## Predict with",
            "",
            choice.predict_command,
            "",
        ]
    )


def _write(choice: ModelChoice, output: Path) -> None:
    record = {
        "ranking": [
            {
                "name": c.name,
                "members": list(c.members),
                "foreground_dice": c.dice,
                "fold_dice_mean": c.folds.mean,
                "fold_dice_std": None if math.isnan(c.folds.std) else c.folds.std,
                "cases": len(c.summary.cases),
                "p_wilcoxon": None
                if c.comparison is None or math.isnan(c.comparison.p_value)
                else c.comparison.p_value,
                "compared_with": c.compared_with,
            }
            for c in choice.candidates
        ],
        "best": choice.best.name,
        "postprocessing": POSTPROCESSING_FILE,
        "predict_command": choice.predict_command,
    }
    with output_lock(output, "find-best"):
        remove_stale_temporaries(output)
        write_all(
            {
                output / POSTPROCESSING_FILE: text_writer(json.dumps(choice.postprocessing.to_dict(), indent=2) + "\n"),
                output / "find_best.json": text_writer(json.dumps(record, indent=2) + "\n"),
                output / "find_best.md": text_writer(markdown(choice)),
                output / "inference_instructions.txt": text_writer(choice.predict_command + "\n"),
            }
        )
