"""The Ray executor of ``experiment run``: each run a Ray task with its GPUs and CPUs, on a Ray cluster or on a Ray
instance started on this machine for the experiment.

A task runs :func:`~perspective_unet.engine.experiment_run.execute_run` for its run. Ray places the tasks on nodes
with the resources free; a task whose worker or node dies is retried (``max_requeues`` times) and resumes from the
run's ``last.pt``. The nodes must have this package installed and see the experiment folder and the data at the same
paths (a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import ray

from perspective_unet.config.experiment import ExecutorSettings
from perspective_unet.engine.experiment_folder import LOGS_DIR, RunStatus, release_lock_of, write_job, write_status
from perspective_unet.engine.experiment_run import RunJob, RunJobs, RunOutcome, execute_run, report_outcome
from perspective_unet.errors import InputError

__all__ = ["ray_session", "run_on_ray"]

log = logging.getLogger(__name__)


def _connect(settings: ExecutorSettings) -> bool:
    """Join the cluster at ``settings.address``, or start a local instance; returns whether one was started here.

    A Ray already initialized in this process (by the caller of :func:`run_on_ray`) is used as it is.
    """
    if ray.is_initialized():
        return False
    if settings.address is not None:
        ray.init(address=settings.address)
        return False
    # A local instance serves this machine only: its services listen on the loopback address.
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    return True


def _check_resources(settings: ExecutorSettings, started: bool) -> None:
    """A run must fit on the cluster; an instance started here cannot grow, so there a misfit is an error."""
    have = ray.cluster_resources()
    for key, need, option in (("GPU", settings.gpus_per_run, "gpus"), ("CPU", settings.cpus_per_run, "cpus")):
        if need <= have.get(key, 0):
            continue
        message = f"each run asks for {need} {key}(s) (--{option}-per-run) but the Ray cluster has {have.get(key, 0):g}"
        if started:
            hint = " (--gpus-per-run 0 trains on CPUs)" if key == "GPU" else ""
            raise InputError(f"{message}; ask for fewer{hint}.")
        log.warning("%s; the runs wait until the cluster has them.", message)


@contextlib.contextmanager
def ray_session(settings: ExecutorSettings, root: Path, name: str) -> Iterator[RunJobs]:
    """Joins the Ray cluster (or starts a local instance, stopped at the end) and checks that a run fits on it, then
    yields the function that runs a list of jobs."""
    started = _connect(settings)
    try:
        _check_resources(settings, started)
        yield lambda jobs: run_on_ray(jobs, settings, name)
    finally:
        if started:
            ray.shutdown()


def run_on_ray(jobs: Sequence[RunJob], settings: ExecutorSettings, name: str) -> list[RunOutcome]:
    """Run one Ray task per run on the Ray this process is connected to, and wait for them; returns their outcomes
    as they end.

    Interrupting the wait (Ctrl-C) cancels the tasks: each run stops as on Ctrl-C and resumes on the next
    ``experiment run``.
    """
    if not jobs:
        return []
    resources = {"num_cpus": settings.cpus_per_run, "num_gpus": settings.gpus_per_run}
    task = ray.remote(max_retries=settings.max_requeues, **resources)(execute_run)
    pending, ids = {}, {}
    for job in jobs:
        # Drawn here, so that a retried task keeps its id (and takes over what its earlier attempt left), while Ray's
        # own task ids repeat from one Ray instance to the next.
        job_id = f"ray-{uuid.uuid4().hex[:12]}"
        ref = task.options(name=f"{name}/{job.run.label}").remote(job, job_id)
        pending[ref], ids[ref] = job, job_id
        write_job(job.folder, "ray", job_id)
    log.info("started %d Ray task(s) on %s", len(pending), settings.address or "a local Ray instance")
    return _gather(pending, ids)


def _gather(pending: dict[ray.ObjectRef, RunJob], ids: dict[ray.ObjectRef, str]) -> list[RunOutcome]:
    outcomes = []
    waiting = list(pending)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                outcome = _outcome(ref, pending[ref], ids[ref])
                report_outcome(outcome)
                outcomes.append(outcome)
    except KeyboardInterrupt:
        for ref in waiting:
            ray.cancel(ref)
        raise
    return outcomes


def _outcome(ref: ray.ObjectRef, job: RunJob, job_id: str) -> RunOutcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task ended without a result: its worker or node died, retries spent
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        message = f"task {job_id} ended without a result ({first}); see {job.folder / LOGS_DIR / job_id}.log"
        release_lock_of(job.folder, job_id)
        write_status(job.folder, RunStatus("failed", "ray", job_id, message=message))
        return RunOutcome(job.run.label, "failed", message)
