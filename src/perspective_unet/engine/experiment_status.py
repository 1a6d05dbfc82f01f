"""``perspective-unet experiment status``: where each run of an experiment stands, whatever its executor.

Read from the run folders alone: each run's ``status.json`` (written by ``experiment run`` and by the run itself),
its job's id, its lock (a run said to be running whose process on this machine is gone was stopped without a word),
its training log (epochs done) and its evaluation (whether it counts for the experiment's settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from perspective_unet.config.experiment import EvaluationSettings, ExperimentRun
from perspective_unet.engine.experiment_folder import (
    RUN_LOCK,
    RunStatus,
    evaluation_problem,
    read_experiment,
    read_job,
    read_status,
)
from perspective_unet.evaluation import SUMMARY_FILE
from perspective_unet.outputs import lock_holder
from perspective_unet.runs import RunFolder
from perspective_unet.table import format_table

__all__ = ["STATES", "RunLine", "experiment_status", "format_status"]

STATES = ("finished", "running", "waiting", "interrupted", "failed")


@dataclass(frozen=True)
class RunLine:
    """One run's line of the status.

    Attributes:
        label: The run (``<configuration>/seed_<S>[/fold_<K>]``).
        state: ``waiting`` (not started, handed to its executor, or to be evaluated again), ``running``,
            ``finished``, ``interrupted`` (stopped; the next ``experiment run`` resumes it) or ``failed``.
        where: Its job, and the host and process it runs or ran on.
        detail: Progress (epochs), the score of a finished run, or the error's line of a failed one.
    """

    label: str
    state: str
    where: str
    detail: str


def experiment_status(root: str | os.PathLike[str]) -> list[RunLine]:
    """Each run's line, in grid order.

    Raises:
        InputError: The folder holds no experiment.
    """
    root = Path(root)
    experiment = read_experiment(root)
    return [_line(run, root / run.folder, experiment.evaluate) for run in experiment.runs()]


def _epochs(run: ExperimentRun, folder: Path) -> str:
    try:
        done = max(len(RunFolder(folder).train_log.read_text().splitlines()) - 1, 0)
    except OSError:
        done = 0
    return f"epoch {done}/{run.config.epochs}"


def _where(status: RunStatus, job: str | None) -> str:
    parts = [status.job or job or status.executor]
    if status.host:
        parts.append(f"{status.host} (pid {status.pid})")
    if status.device:
        parts.append(status.device)
    return ", ".join(parts)


def _score(folder: Path, settings: EvaluationSettings) -> str:
    summary = json.loads((RunFolder(folder).evaluation / SUMMARY_FILE).read_text())
    metric = "legacy_Dice" if settings.protocol == "legacy" else "Dice"
    dice = summary.get("foreground_mean", {}).get(metric)
    tta = "on" if settings.tta else "off"
    shown = "n/a" if dice is None else f"{100 * dice:.2f}"
    return f"mean Dice {shown} ({settings.protocol}, {settings.split} split, tta {tta})"


def _line(run: ExperimentRun, folder: Path, settings: EvaluationSettings) -> RunLine:
    status, job = read_status(folder), read_job(folder)
    problem = evaluation_problem(folder, settings)
    if status is None:  # a folder of an earlier version, or a run not handed to an executor yet
        if problem is None:
            return RunLine(run.label, "finished", "", _score(folder, settings))
        return RunLine(run.label, "waiting", "", "not started")
    where = _where(status, job)
    if status.state == "running":
        if lock_holder(folder, RUN_LOCK) is None:
            detail = f"its process ended without a word at {_epochs(run, folder)}; `experiment run` resumes it"
            return RunLine(run.label, "interrupted", where, detail)
        return RunLine(run.label, "running", where, f"{_epochs(run, folder)}, since {status.since}")
    if status.state == "finished":
        if problem is None:
            return RunLine(run.label, "finished", where, _score(folder, settings))
        return RunLine(run.label, "waiting", where, f"to be evaluated again: {problem}")
    if status.state == "interrupted":
        return RunLine(run.label, "interrupted", where, f"at {_epochs(run, folder)}: {status.message}")
    if status.state == "failed":
        return RunLine(run.label, "failed", where, status.message)
    return RunLine(run.label, "waiting", where, f"since {status.since}")


def format_status(root: str | os.PathLike[str], lines: list[RunLine]) -> str:
    """The status as the command prints it: a count per state, then a table of the runs."""
    counts = ", ".join(f"{n} {state}" for state in STATES if (n := sum(line.state == state for line in lines)))
    table = format_table(
        ["run", "state", "where", "detail"], [[line.label, line.state, line.where, line.detail] for line in lines]
    )
    return f"{root}: {len(lines)} runs: {counts}\n{table}"
