"""The SLURM executor of ``experiment run``: each run a job of one SLURM job array, submitted through submitit.

A job runs :func:`~perspective_unet.engine.experiment_run.execute_run` for its run. When SLURM preempts it or its
time limit nears, submitit signals it; the run stops where it is (its ``last.pt`` holds the last whole epoch) and
submitit's checkpoint hook requeues the same job, which resumes from that ``last.pt``. submitit keeps its pickles
and its own lines in ``DIR/.submitit/<job id>/``; the job's output goes to the run folder's ``logs/``.

With ``slurm_cluster: local`` the same jobs (pickles, job folders, signals, requeueing) run through submitit's local
executor on this machine, which is how the tests run this path: no SLURM cluster is needed to try it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import submitit

from perspective_unet.config.experiment import ExecutorSettings
from perspective_unet.engine.experiment_folder import LOGS_DIR, RunStatus, release_lock_of, write_job, write_status
from perspective_unet.engine.experiment_run import RunJob, RunJobs, RunOutcome, execute_run, report_outcome
from perspective_unet.errors import InputError

__all__ = ["SUBMITIT_DIR", "SlurmRun", "run_on_slurm", "slurm_executor", "slurm_session"]

log = logging.getLogger(__name__)

SUBMITIT_DIR = ".submitit"


class SlurmRun(submitit.helpers.Checkpointable):
    """One run as a submitit job. Being ``Checkpointable``, a preempted or timed-out job is requeued with this same
    callable, and :func:`execute_run` then finds the run's ``last.pt`` and resumes from it."""

    def __init__(self, job: RunJob) -> None:
        self.job = job

    def __call__(self) -> RunOutcome:
        return execute_run(self.job, f"slurm-{submitit.JobEnvironment().job_id}")


def _check_sbatch(settings: ExecutorSettings) -> None:
    if settings.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
        raise InputError(
            "--executor slurm submits with sbatch, which is not on this machine's PATH; run the command on the "
            "cluster's login node, or pass --slurm-cluster local to try the jobs on this machine."
        )


@contextlib.contextmanager
def slurm_session(settings: ExecutorSettings, root: Path, name: str) -> Iterator[RunJobs]:
    """Checks that jobs can be submitted from here, then yields the function that runs a list of jobs."""
    _check_sbatch(settings)
    yield lambda jobs: run_on_slurm(jobs, settings, root, name)


def slurm_executor(settings: ExecutorSettings, root: Path, name: str) -> submitit.AutoExecutor:
    """A submitit executor with the experiment's job settings (one task on one node per run).

    Raises:
        InputError: SLURM was asked for but this machine cannot submit jobs (no ``sbatch``).
    """
    _check_sbatch(settings)
    cluster = settings.slurm_cluster
    executor = submitit.AutoExecutor(
        folder=root / SUBMITIT_DIR / "%j", cluster=cluster, **{f"{cluster}_max_num_timeout": settings.max_requeues}
    )
    parameters = {
        "name": f"perspective-unet-{name}",
        "timeout_min": settings.time_limit_minutes,
        "gpus_per_node": settings.gpus_per_run,
        "cpus_per_task": settings.cpus_per_run,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if cluster == "slurm":
        parameters.update(
            slurm_partition=settings.partition,
            slurm_array_parallelism=settings.array_parallelism,
            slurm_additional_parameters=dict(settings.slurm_options) or None,
            slurm_setup=list(settings.setup) or None,
        )
    executor.update_parameters(**parameters)
    return executor


def run_on_slurm(jobs: Sequence[RunJob], settings: ExecutorSettings, root: Path, name: str) -> list[RunOutcome]:
    """Submit one job per run as a job array and wait for them; returns their outcomes as they end.

    Interrupting the wait (Ctrl-C) leaves the jobs running: ``experiment status`` follows them, and the same
    ``experiment run`` later skips what they finished.
    """
    if not jobs:
        return []
    executor = slurm_executor(settings, root, name)
    submitted = executor.submit_array([SlurmRun(job) for job in jobs])
    by_id = {}
    for job, handle in zip(jobs, submitted):
        write_job(job.folder, "slurm", f"slurm-{handle.job_id}")
        by_id[handle.job_id] = job
    log.info("submitted %d job(s): %s", len(submitted), ", ".join(h.job_id for h in submitted))
    outcomes = []
    try:
        poll = 1.0 if settings.slurm_cluster == "local" else 15.0
        for handle in submitit.helpers.as_completed(submitted, poll_frequency=poll):
            outcome = _outcome(handle, by_id[handle.job_id])
            report_outcome(outcome)
            outcomes.append(outcome)
    except KeyboardInterrupt:
        log.warning("stopped waiting; the jobs go on: `perspective-unet experiment status %s` follows them", root)
        raise
    return outcomes


def _outcome(handle: submitit.Job, job: RunJob) -> RunOutcome:
    try:
        return handle.result()
    except Exception as exc:  # the job ended without a result: killed, out of memory, a node lost, requeues spent
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        job_id = f"slurm-{handle.job_id}"
        message = f"job {handle.job_id} ended without a result ({first}); see {job.folder / LOGS_DIR / job_id}.log"
        release_lock_of(job.folder, job_id)  # it ended: a lock it left on another machine is stale
        write_status(job.folder, RunStatus("failed", "slurm", job_id, message=message))
        return RunOutcome(job.run.label, "failed", message)
