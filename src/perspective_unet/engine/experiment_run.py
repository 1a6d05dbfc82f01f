"""One run of an experiment, as every executor runs it: :func:`execute_run`.

The local executor calls it in this process or in one worker process per device, the SLURM executor in a submitit
job, the Ray executor in a Ray task; each gets the same lock, check, status file, log, resumption and evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from perspective_unet.config.experiment import EvaluationSettings, ExperimentRun
from perspective_unet.engine.experiment_folder import (
    LOGS_DIR,
    RUN_LOCK,
    RUN_RECORD,
    RunCheck,
    RunStatus,
    check_run,
    release_lock_of,
    run_record,
    set_evaluation_aside,
    write_status,
)
from perspective_unet.errors import InputError
from perspective_unet.outputs import atomic_write, output_lock, temporary_path, text_writer
from perspective_unet.runs import RunFolder

__all__ = ["RunJob", "RunJobs", "RunOutcome", "execute_run", "report_outcome"]

log = logging.getLogger(__name__)

# What a failed run reports as its outcome; anything else (Ctrl-C, SIGTERM, a scheduler's requeue) stops the job.
_RUN_ERRORS = (InputError, ValueError, FileExistsError, OSError, RuntimeError, MemoryError)


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run: ``skipped`` (finished before), ``done`` or ``failed`` (with the error's line).

    ``message`` also says why a trained run was evaluated again.
    """

    label: str
    status: str
    message: str = ""


@dataclass(frozen=True)
class RunJob:
    """One run as an executor hands it over (picklable: it travels to worker processes, jobs and tasks).

    Attributes:
        run: The run of the grid.
        root: The experiment folder.
        evaluation: How the run is evaluated.
        executor: The executor's name (``local``, ``slurm``, ``ray``), for the status and the log's name.
        device: The device to train on, or None for the run's own ``device`` setting.
    """

    run: ExperimentRun
    root: Path
    evaluation: EvaluationSettings
    executor: str = "local"
    device: str | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.run.folder


# What an executor offers: run a list of jobs, return their outcomes in the order they end.
RunJobs = Callable[[Sequence[RunJob]], list[RunOutcome]]


def report_outcome(outcome: RunOutcome) -> None:
    """Log one run's outcome as an executor receives it."""
    level = logging.ERROR if outcome.status == "failed" else logging.INFO
    log.log(level, "%s: %s%s", outcome.label, outcome.status, f" ({outcome.message})" if outcome.message else "")


def execute_run(job: RunJob, job_id: str | None = None) -> RunOutcome:
    """Train (or resume) and evaluate one run, holding its folder; writes its status and its log there.

    Args:
        job: The run.
        job_id: The executor's id of this job (``slurm-1234_5``); None: ``<executor>-<pid>``.

    Returns:
        Its outcome: ``skipped`` when it was finished already, ``done``, or ``failed`` with the error's line (a run
        refused by its check, bad data, an error during training). Interrupts (Ctrl-C, SIGTERM, a scheduler's
        requeue) are not caught: the status then says ``interrupted`` and the next ``experiment run`` resumes it.
    """
    job_id = job_id or f"{job.executor}-{os.getpid()}"
    if release_lock_of(job.folder, job_id):
        log.info("%s: %s takes over the folder from its earlier attempt", job.run.label, job_id)
    try:
        log_path = job.folder / LOGS_DIR / f"{job_id}.log"
        with (
            output_lock(job.folder, "experiment run", name=RUN_LOCK),
            _job_log(log_path, capture_output=job.executor != "local"),
        ):
            return _execute_locked(job, job_id)
    except InputError as exc:  # the folder is held by another job: its status is that job's to write
        return RunOutcome(job.run.label, "failed", str(exc))


def _execute_locked(job: RunJob, job_id: str) -> RunOutcome:
    label = job.run.label

    def status(state: str, message: str = "") -> None:
        write_status(job.folder, RunStatus.here(state, job.executor, job_id, job.device, message))

    status("running")
    log.info("%s: running as %s", label, job_id)
    try:
        check = check_run(job.run, job.folder, job.evaluation)  # again: the folder may have changed since submission
        if check.state == "finished":
            status("finished", "finished before")
            return RunOutcome(label, "skipped")
        message = _train_and_evaluate(job, check)
    except _RUN_ERRORS as exc:
        line = " ".join(f"{type(exc).__name__}: {exc}".split())
        log.error("%s failed: %s\n%s", label, line, traceback.format_exc())
        status("failed", line)
        return RunOutcome(label, "failed", line)
    except BaseException as exc:
        status("interrupted", f"{type(exc).__name__}; the next `experiment run` resumes it")
        raise
    status("finished", message)
    log.info("%s: trained and evaluated", label)
    return RunOutcome(label, "done", message)


def _train_and_evaluate(job: RunJob, check: RunCheck) -> str:
    """Train or resume, then evaluate into a temporary folder renamed into place; returns a note on what was done."""
    from perspective_unet.engine.evaluate import evaluate
    from perspective_unet.engine.train import train
    from perspective_unet.engine.training import TrainingCheckpoint
    from perspective_unet.runtime.inference_settings import InferenceSettings

    folder, run = job.folder, job.run
    run_folder = RunFolder(folder)
    device = {"device": job.device} if job.device else {}
    record = folder / RUN_RECORD

    def record_with_first_checkpoint(_: Path) -> None:
        if not record.exists():  # never rewritten: a resumed run keeps the record it was trained with
            atomic_write(record, text_writer(json.dumps(run_record(run), indent=2)))

    if check.state == "resume":
        log.info("%s: resuming from its last.pt (%s)", run.label, check.reason)
        resume = TrainingCheckpoint.read(run_folder.last)
        config = resume.config(device)
        train(config, resume=resume, before_checkpoint=record_with_first_checkpoint)
    else:
        record.unlink(missing_ok=True)  # a record without a checkpoint claims nothing
        config = replace(run.config, output=str(folder), **device)
        # Nothing was trained here: leftovers of a run stopped before its first checkpoint go.
        train(config, overwrite=True, before_checkpoint=record_with_first_checkpoint)
    note = ""
    if run_folder.evaluation.exists():
        kept = set_evaluation_aside(folder)
        note = f"evaluated again ({check.reason}); the earlier evaluation is in {kept.name}/"
        log.info("%s: %s", run.label, note)
    settings = job.evaluation
    pending = temporary_path(run_folder.evaluation)
    try:
        evaluate(
            run_folder.checkpoint(),  # type: ignore[arg-type]  # best.pt (selected on validation cases), else last.pt
            config.data,
            pending,
            InferenceSettings(tta=settings.tta, device=config.device),
            split=settings.split,
            progress=False,
        )
        os.replace(pending, run_folder.evaluation)
    finally:
        if pending.exists():
            shutil.rmtree(pending, ignore_errors=True)
    return note


@contextlib.contextmanager
def _job_log(path: Path, *, capture_output: bool) -> Iterator[None]:
    """Keep the job's log in the run folder while the block runs.

    ``capture_output``: the process's standard output and error go to the file (a job's or task's own process:
    tracebacks, warnings and progress bars too). Otherwise (runs in the command's process) the package's log
    messages are copied to the file and the terminal keeps showing them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    package = logging.getLogger("perspective_unet")
    level, propagate = package.level, package.propagate
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    with contextlib.ExitStack() as stack:
        if capture_output:
            stack.enter_context(_output_to(path))
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            package.propagate = False  # the job's process may log to its own handlers: one line each, here
        else:
            handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        try:
            yield
        finally:
            package.removeHandler(handler)
            handler.close()
            package.setLevel(level)
            package.propagate = propagate


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """The process's standard output and error (file descriptors 1 and 2) appended to ``path`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("a") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
