"""The experiment folder: its layout, and the rules that keep every number it reports true to the settings asked for.

Layout::

    DIR/
      experiment.yaml                        the experiment as last run (written once every run's check passed)
      <configuration>/seed_<S>[/fold_<K>]/   one run: train's files (last.pt, best.pt, config.json, ...)
        run.json                             the training settings the run trained with (its record)
        evaluation/                          evaluate's reports (summary.json, per_case.csv, summary.md)
        evaluation.<split>-tta-<on|off>/     an earlier evaluation with other settings, kept aside
        status.json, job.json                where the run stands, and its executor's job (``experiment status``)
        logs/<job>.log                       each job's log

The rules:

- A run's record (``run.json``) is written with its first checkpoint (just before it), never before training
  starts and never rewritten: a resumed run keeps the record it was trained with. A record in a folder without a
  checkpoint or an evaluation claims nothing and is replaced when the run starts again.
- A run folder holding a checkpoint or an evaluation but no record, or an unreadable record, or a record of other
  training settings than the experiment asks for, is refused with its folder named.
- An evaluation counts only when it is complete (``summary.json`` and ``per_case.csv``) and made with the
  experiment's evaluation settings (split, test-time augmentation, and the metric protocol among its scores). One
  made with other settings is kept aside under a name that says them, and the run is evaluated again.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perspective_unet.config.experiment import EvaluationSettings, ExperimentConfig, ExperimentRun
from perspective_unet.errors import InputError
from perspective_unet.evaluation import PER_CASE_FILE, SUMMARY_FILE, SUMMARY_FORMAT_VERSION
from perspective_unet.outputs import atomic_write, lock_holder, read_json, read_yaml, text_writer
from perspective_unet.runs import RunFolder

__all__ = [
    "EXPERIMENT_FILE",
    "JOB_FILE",
    "LOGS_DIR",
    "RUN_LOCK",
    "RUN_RECORD",
    "STATUS_FILE",
    "RunCheck",
    "RunStatus",
    "check_run",
    "evaluation_problem",
    "read_experiment",
    "read_job",
    "read_status",
    "release_lock_of",
    "run_record",
    "set_evaluation_aside",
    "write_job",
    "write_status",
]

EXPERIMENT_FILE = "experiment.yaml"
RUN_RECORD = "run.json"
LOGS_DIR = "logs"
STATUS_FILE = "status.json"
JOB_FILE = "job.json"
# Held by the run's job while it trains and evaluates (train and evaluate hold the folder's own lock inside it).
RUN_LOCK = ".perspective-unet-experiment.lock"
# Settings that say where and how a run is computed, not what it is: a record may differ in them.
_NOT_COMPARED = ("output",)


def read_experiment(root: Path) -> ExperimentConfig:
    """The experiment an experiment folder was last run with (its ``experiment.yaml``).

    Raises:
        InputError: The folder holds no experiment, or an unreadable one.
    """
    path = root / EXPERIMENT_FILE
    if not path.is_file():
        raise InputError(f"{root} holds no {EXPERIMENT_FILE}; give the folder `perspective-unet experiment run` wrote.")
    data = read_yaml(path, "give the folder `perspective-unet experiment run` wrote.")
    try:
        if not isinstance(data, dict):
            raise ValueError(f"it holds a {type(data).__name__}, not the experiment's mapping")
        return ExperimentConfig.from_dict(data)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise InputError(f"{path} is not a valid experiment ({exc}).") from None


def run_record(run: ExperimentRun) -> dict[str, Any]:
    """What a run's ``run.json`` holds: the training settings of the run, as JSON reads them back."""
    return json.loads(json.dumps(run.config.to_dict()))


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RUN_RECORD
    if not path.exists():
        return None
    record = read_json(
        path,
        f"the settings {folder} was trained with are unknown; restore the file, or move the folder away to rerun it.",
    )
    if not isinstance(record, dict):
        raise InputError(
            f"{path} holds no training settings (a JSON object is expected); restore the file, or move {folder} away "
            "to run it again."
        )
    return record


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def _protocols(summary: dict[str, Any]) -> set[str]:
    """The metric protocols an evaluation's scores hold (``evaluate`` writes both unless asked otherwise)."""
    protocols = summary.get("protocols")
    return {p for p in protocols if isinstance(p, str)} if isinstance(protocols, list) else set()


def evaluation_problem(folder: Path, settings: EvaluationSettings) -> str | None:
    """Why a run folder's evaluation does not count for ``settings``; None when it is complete and made with them."""
    evaluation = RunFolder(folder).evaluation
    if not evaluation.is_dir():
        return "not evaluated"
    summary = _summary(evaluation)
    if summary is None:
        missing = not (evaluation / SUMMARY_FILE).exists()
        return f"{evaluation.name}/{SUMMARY_FILE} is {'missing' if missing else 'unreadable'}"
    if summary.get("format_version") != SUMMARY_FORMAT_VERSION:
        return f"{evaluation.name}/{SUMMARY_FILE} was written by an earlier version (another format)"
    if not (evaluation / PER_CASE_FILE).is_file():
        return f"{evaluation.name}/{PER_CASE_FILE} is missing"
    if summary.get("split") != settings.split:
        return f"evaluated on the {summary.get('split')!r} split, the experiment asks for {settings.split!r}"
    if summary.get("tta") is not settings.tta:
        said = {True: "on", False: "off"}
        return f"evaluated with tta {said.get(summary.get('tta'), '?')}, the experiment asks for {said[settings.tta]}"
    if settings.protocol not in _protocols(summary):
        return f"the evaluation holds no {settings.protocol!r} scores"
    return None


@dataclass(frozen=True)
class RunCheck:
    """What a run folder holds, once its record has been checked against the experiment.

    Attributes:
        state: ``new`` (nothing trained: start it), ``resume`` (a ``last.pt``: continue the training, which ends at
            once when it is complete, then evaluate) or ``finished`` (an evaluation that counts).
        reason: Why a trained run is evaluated (again): what :func:`evaluation_problem` said.
    """

    state: str
    reason: str = ""


def check_run(run: ExperimentRun, folder: Path, settings: EvaluationSettings) -> RunCheck:
    """Check a run folder against what the experiment asks for; reads only, writes nothing.

    Raises:
        InputError: The folder is refused (see the module docstring); the message names the folder or file.
    """
    record = _read_record(folder)
    run_folder = RunFolder(folder)
    trained = [path.name for path in (run_folder.last, run_folder.best) if path.exists()]
    evaluated = run_folder.evaluation.exists()
    if record is None:
        if trained or evaluated:
            held = ", ".join([*trained, *([f"{run_folder.evaluation.name}/"] if evaluated else [])])
            raise InputError(
                f"{folder} holds a run ({held}) but no {RUN_RECORD}, so the settings it was trained with are unknown; "
                "restore the file, or move the folder away to run it again."
            )
        return RunCheck("new")
    if not trained and not evaluated:
        return RunCheck("new")  # a record written just before a first checkpoint that never came
    asked = run_record(run)
    differing = sorted(k for k in set(record) | set(asked) if record.get(k) != asked.get(k) and k not in _NOT_COMPARED)
    if differing:
        raise InputError(
            f"{folder} was trained with other settings ({', '.join(differing)} differ from the experiment file); "
            "restore the file, or move the folder away to run it again."
        )
    problem = evaluation_problem(folder, settings)
    if problem is None:
        return RunCheck("finished")
    if run_folder.last.name not in trained:
        raise InputError(
            f"{folder} cannot be evaluated again ({problem}) without its {run_folder.last.name}, which is missing; "
            "restore it, or move the folder away to run it again."
        )
    return RunCheck("resume", problem)


def set_evaluation_aside(folder: Path) -> Path:
    """Rename a run's ``evaluation/`` to a name saying its settings (``evaluation.test-tta-off``, ``.2`` ...)."""
    evaluation = RunFolder(folder).evaluation
    summary = _summary(evaluation)
    if summary is None:
        name = f"{evaluation.name}.incomplete"
    else:
        name = f"{evaluation.name}.{summary.get('split')}-tta-{'on' if summary.get('tta') else 'off'}"
    target, number = folder / name, 1
    while target.exists():
        number += 1
        target = folder / f"{name}.{number}"
    os.replace(evaluation, target)
    return target


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, in its ``status.json``.

    Attributes:
        state: ``waiting`` (handed to its executor), ``running``, ``finished``, ``failed`` or ``interrupted``
            (stopped by a signal, a preemption or Ctrl-C; the next ``experiment run`` resumes it).
        executor: ``local``, ``slurm`` or ``ray``.
        job: The job's id (``slurm-1234_5``, ``ray-...``, ``local-<pid>``), once known.
        host: The machine the run runs on.
        pid: Its process there.
        device: The device asked for, when one was.
        since: When the state began (ISO 8601, local time with offset).
        message: The error's line of a failed run, or a note.
    """

    state: str
    executor: str = "local"
    job: str | None = None
    host: str | None = None
    pid: int | None = None
    device: str | None = None
    since: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    message: str = ""

    @classmethod
    def here(cls, state: str, executor: str, job: str | None, device: str | None, message: str = "") -> RunStatus:
        """A status of this process on this machine."""
        return cls(state, executor, job, socket.gethostname(), os.getpid(), device, message=message)


def write_status(folder: Path, status: RunStatus) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / STATUS_FILE, text_writer(json.dumps(asdict(status), indent=2)))


def read_status(folder: Path) -> RunStatus | None:
    """A run's status, or None when it has none (or an unreadable one: the status only informs)."""
    try:
        data = json.loads((folder / STATUS_FILE).read_text())
        return RunStatus(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None


def write_job(folder: Path, executor: str, job: str) -> None:
    """Record the executor's id of a run's job (written by ``experiment run`` once the executor gives it)."""
    text = json.dumps({"executor": executor, "job": job, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write(folder / JOB_FILE, text_writer(text))


def read_job(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / JOB_FILE).read_text())["job"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None


def release_lock_of(folder: Path, job: str) -> bool:
    """Remove a run folder's lock if the run's status says the job ``job`` holds it; returns whether it did.

    For a job known to have ended (killed on another machine, where its lock cannot be seen to be stale), and for the
    next attempt of the same job (a requeued SLURM job, a retried Ray task), which takes over what its earlier
    attempt left.
    """
    holder, status = lock_holder(folder, RUN_LOCK), read_status(folder)
    if holder is None or status is None or status.job != job or (status.pid, status.host) != holder:
        return False
    (folder / RUN_LOCK).unlink(missing_ok=True)
    return True
