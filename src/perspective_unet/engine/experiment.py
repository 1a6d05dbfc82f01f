"""``perspective-unet experiment run``: every run of an experiment's grid, trained and evaluated, resumable, on this
machine or on a cluster.

Every run is checked before any runs (see :mod:`~perspective_unet.engine.experiment_folder` for the folder's layout
and rules): a finished run is skipped; an interrupted one resumes from its ``last.pt``; a trained run evaluated with
other settings is evaluated again, its earlier evaluation kept aside; a run folder trained with other settings, or
whose record is missing or unreadable, is refused, and then nothing runs and nothing is written, not even
``experiment.yaml``.

The runs left are handed to an executor, each calling :func:`~perspective_unet.engine.experiment_run.execute_run`
for its runs: ``local`` (in this process, or one worker process per device), ``slurm`` (a SLURM job per run,
through submitit) or ``ray`` (a Ray task per run). The executors adapt that one function to their engines; they
schedule nothing themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import multiprocessing
import os
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from perspective_unet.config.experiment import ExecutorSettings, ExperimentConfig
from perspective_unet.engine.experiment_folder import (
    EXPERIMENT_FILE,
    JOB_FILE,
    RUN_LOCK,
    STATUS_FILE,
    RunCheck,
    RunStatus,
    check_run,
    read_status,
    write_status,
)
from perspective_unet.engine.experiment_run import RunJob, RunJobs, RunOutcome, execute_run, report_outcome
from perspective_unet.errors import InputError
from perspective_unet.outputs import atomic_write, lock_holder, output_lock

__all__ = ["EXPERIMENT_LOCK", "check_runs", "executor_session", "run_experiment"]

log = logging.getLogger(__name__)

# Held by `experiment run` on the experiment folder while it runs (a run folder has a lock of its own).
EXPERIMENT_LOCK = ".perspective-unet-experiment.lock"
# The package each cluster executor needs, and where it is installed from.
_PACKAGES = {"slurm": "submitit", "ray": "ray"}
_INSTALL = 'pip install "perspective-unet[cluster]"'


def check_runs(experiment: ExperimentConfig, root: Path) -> list[RunCheck]:
    """Every run's check, in grid order; reads only.

    Raises:
        InputError: A run folder is refused: the first one's line, and how many more were.
    """
    checks, refusals = [], []
    for run in experiment.runs():
        try:
            checks.append(check_run(run, root / run.folder, experiment.evaluate))
        except InputError as exc:
            refusals.append(str(exc))
    if refusals:
        more = f" ({len(refusals) - 1} more run folder(s) refused likewise)" if len(refusals) > 1 else ""
        raise InputError(f"{refusals[0]}{more} Nothing was run or written.")
    return checks


@contextlib.contextmanager
def executor_session(
    settings: ExecutorSettings, root: Path, name: str, devices: Sequence[str] | None = None
) -> Iterator[RunJobs]:
    """The executor ready to run jobs: its package imported, its cluster reached and checked (so a missing package,
    no ``sbatch`` or a Ray cluster without the resources a run asks for stop the command before anything is
    written), and released at the end.

    Raises:
        InputError: The executor cannot run the experiment's jobs here (the message says what to do).
    """
    if settings.name == "local":
        if devices and len(devices) > 1:
            yield lambda jobs: _run_in_parallel(jobs, devices)
        else:
            yield _run_one_after_another
        return
    package = _PACKAGES[settings.name]
    try:
        importlib.import_module(package)
    except ImportError:
        raise InputError(
            f"--executor {settings.name} needs the {package} package, which is not installed; {_INSTALL}."
        ) from None
    if settings.name == "slurm":
        from perspective_unet.engine.experiment_slurm import slurm_session as session
    else:
        from perspective_unet.engine.experiment_ray import ray_session as session
    with session(settings, root, name) as run_jobs:
        yield run_jobs


def run_experiment(
    experiment: ExperimentConfig | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    devices: Sequence[str] | None = None,
    executor: ExecutorSettings | None = None,
) -> list[RunOutcome]:
    """Run every run of the grid that is not finished yet, then return what happened to each.

    Args:
        experiment: The experiment, or its YAML file.
        output: The experiment folder; created if needed.
        devices: Local executor only: one worker process per device (``cuda:0 cuda:1``, ``cpu``), each taking the
            next run; None or one device: the runs one after another in this process (on the runs' own ``device``
            setting when None).
        executor: Where the runs run; None: the experiment's ``executor`` block. It is recorded in
            ``experiment.yaml``.

    Returns:
        One :class:`RunOutcome` per run, in grid order. A failed run does not stop the others; the caller reports it.

    Raises:
        InputError: A run folder is refused, the executor's package is missing, ``devices`` was given to another
            executor than ``local``, or another command runs this experiment folder; nothing was run or written.
    """
    if not isinstance(experiment, ExperimentConfig):
        experiment = ExperimentConfig.from_yaml(experiment)
    settings = executor or experiment.executor
    experiment = dataclasses.replace(experiment, executor=settings)
    if devices and settings.name != "local":
        raise InputError(f"--devices is for the local executor; --executor {settings.name} places runs itself.")
    root = Path(output)
    runs = experiment.runs()
    checks = check_runs(experiment, root)
    # With every run finished no cluster is reached: the report is ready.
    unfinished = settings if any(c.state != "finished" for c in checks) else ExecutorSettings()
    with (
        executor_session(unfinished, root, experiment.name, devices) as run_jobs,
        output_lock(root, "experiment run", name=EXPERIMENT_LOCK),
    ):
        text = yaml.safe_dump(experiment.self_contained().to_dict(), sort_keys=False)
        atomic_write(root / EXPERIMENT_FILE, lambda path: path.write_text(text))
        device = devices[0] if devices and len(devices) == 1 else None
        jobs = [RunJob(run, root, experiment.evaluate, settings.name, device) for run in runs]
        outcomes = _hand_over(jobs, checks)
        jobs = [job for job in jobs if job.run.label not in outcomes]
        log.info("experiment %s: %d runs, %d to do (%s executor)", experiment.name, len(runs), len(jobs), settings.name)
        try:
            outcomes.update({outcome.label: outcome for outcome in run_jobs(jobs)})
        except BaseException:
            if settings.name != "slurm":  # SLURM jobs go on without this command; runs here or on Ray stop with it
                _withdraw(jobs)
            raise
    return [outcomes[run.label] for run in runs]


def _withdraw(jobs: Sequence[RunJob]) -> None:
    """Clear the ``waiting`` status of runs that never started, so the status does not say they are queued."""
    for job in jobs:
        status = read_status(job.folder)
        if status is not None and status.state == "waiting":
            (job.folder / STATUS_FILE).unlink(missing_ok=True)
            (job.folder / JOB_FILE).unlink(missing_ok=True)


def _hand_over(jobs: Sequence[RunJob], checks: Sequence[RunCheck]) -> dict[str, RunOutcome]:
    """Mark the runs to do ``waiting``; returns the outcomes of those not handed to the executor: the finished ones,
    and those a job of an earlier ``experiment run`` still holds (their status stays theirs)."""
    outcomes = {}
    for job, check in zip(jobs, checks):
        label = job.run.label
        holder = lock_holder(job.folder, RUN_LOCK)
        if check.state == "finished":
            outcomes[label] = RunOutcome(label, "skipped")
        elif holder is not None:
            outcomes[label] = RunOutcome(
                label, "failed", f"in use by process {holder[0]} on {holder[1]}; wait for that job to end"
            )
        else:
            write_status(job.folder, RunStatus("waiting", job.executor))
    return outcomes


def _run_one_after_another(jobs: Sequence[RunJob]) -> list[RunOutcome]:
    outcomes = []
    for position, job in enumerate(jobs, 1):
        log.info("[%d/%d] %s", position, len(jobs), job.run.label)
        outcome = execute_run(job)
        report_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


def _worker(jobs: Sequence[RunJob], device: str, todo: queue.Queue, results: queue.Queue) -> None:
    """One device's loop in its own process: take the next run until none is left."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{device}] %(message)s")
    while True:
        try:
            index = todo.get_nowait()
        except queue.Empty:
            return
        results.put(execute_run(dataclasses.replace(jobs[index], device=device)))


def _run_in_parallel(jobs: Sequence[RunJob], devices: Sequence[str]) -> list[RunOutcome]:
    context = multiprocessing.get_context("spawn")
    todo, results = context.Queue(), context.Queue()
    for index in range(len(jobs)):
        todo.put(index)
    workers = [context.Process(target=_worker, args=(jobs, device, todo, results)) for device in devices]
    for worker in workers:
        worker.start()
    outcomes: list[RunOutcome] = []
    while len(outcomes) < len(jobs):
        try:
            outcome = results.get(timeout=2.0)
        except queue.Empty:
            if any(worker.is_alive() for worker in workers):
                continue
            break  # every worker is gone: what is left was lost with a crashed one
        report_outcome(outcome)
        outcomes.append(outcome)
    for worker in workers:
        worker.join()
    reported = {o.label for o in outcomes}
    exits = ", ".join(f"{d}: {w.exitcode}" for d, w in zip(devices, workers))
    outcomes += [
        RunOutcome(job.run.label, "failed", f"its worker process ended (exit codes {exits})")
        for job in jobs
        if job.run.label not in reported
    ]
    return outcomes
