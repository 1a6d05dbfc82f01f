"""Experiments beyond one process: the SLURM executor through submitit's local executor (the same pickles, job folders,
signals and requeueing as on a cluster; no SLURM here), the Ray executor on a real local Ray instance with two
workers, a job killed mid-run and resubmitted, and each report equal to the local executor's on the same grid."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from perspective_unet.cli import main
from perspective_unet.config.experiment import ExecutorSettings
from perspective_unet.engine.experiment import run_experiment
from perspective_unet.engine.experiment_folder import read_status
from perspective_unet.engine.experiment_report import report_experiment
from perspective_unet.engine.experiment_status import experiment_status
from perspective_unet.errors import InputError
from tests.engine.test_experiment import TRAIN, _experiment

LABELS = ("full/seed_1", "full/seed_2", "no_scsi/seed_1", "no_scsi/seed_2")
# One CPU thread per run, in this process and in every job or task, so that every executor computes the same numbers.
ONE_CPU = {"gpus_per_run": 0, "cpus_per_run": 1}


def _grid(data: Path, **changes):
    """The 2 x 2 grid of the experiment tests, with three epochs so that a run can be stopped between two."""
    return _experiment(data, train={"data": str(data), **TRAIN, "epochs": 3}, **changes)


def _reports_equal(root: Path, reference: Path) -> None:
    report_experiment(root)
    for name in ("report.md", "report.csv", "report.tex"):
        assert (root / "report" / name).read_text() == (reference / "report" / name).read_text(), name


def _when_checkpointed(folder: Path, then, timeout: float = 600.0) -> threading.Thread:
    """Call ``then(status)`` from a thread as soon as the run in ``folder`` has written its first ``last.pt``."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not (folder / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        then(read_status(folder))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> Path:
    """The grid run by the local executor in this process, and its report."""
    root = tmp_path_factory.mktemp("reference") / "experiment"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert {o.status for o in run_experiment(_grid(tiny_dataset), root)} == {"done"}
    finally:
        torch.set_num_threads(threads)
    report_experiment(root)
    return root


@pytest.fixture
def one_thread_jobs(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
@pytest.mark.distributed
def test_slurm_executor_through_submitit_requeues_a_preempted_job_and_reports_as_the_local_one(
    tiny_dataset, tmp_path, reference, one_thread_jobs
):
    root = tmp_path / "experiment"
    preempted, seen = root / "full/seed_2", {}

    def preempt(status) -> None:
        seen["status"] = {line.label: line for line in experiment_status(root)}
        os.kill(status.pid, signal.SIGUSR2)  # what SLURM sends (through submitit's --signal) before preempting a job

    watcher = _when_checkpointed(preempted, preempt)
    settings = ExecutorSettings(name="slurm", slurm_cluster="local", time_limit_minutes=30, **ONE_CPU)
    outcomes = run_experiment(_grid(tiny_dataset), root, executor=settings)
    watcher.join(1)
    assert [(o.label, o.status) for o in outcomes] == [(label, "done") for label in LABELS]
    running, job = seen["status"]["full/seed_2"], read_status(preempted).job
    assert running.state == "running" and running.where.startswith(f"{job}, ") and "/3, since" in running.detail
    log = (preempted / "logs" / f"{job}.log").read_text()
    assert "Requeued job" in log and "resumed from" in log, log[-2000:]
    assert torch.load(preempted / "last.pt", weights_only=True)["epoch"] == 3
    for label in LABELS:
        assert [p.name.startswith("slurm-") for p in (root / label / "logs").iterdir()] == [True], label
    assert {line.state for line in experiment_status(root)} == {"finished"}
    assert yaml.safe_load((root / "experiment.yaml").read_text())["executor"]["name"] == "slurm"
    _reports_equal(root, reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_executor_on_a_local_ray_instance_with_two_workers_reports_as_the_local_one(
    tiny_dataset, tmp_path, reference
):
    import ray

    root = tmp_path / "experiment"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        outcomes = run_experiment(_grid(tiny_dataset), root, executor=ExecutorSettings(name="ray", **ONE_CPU))
    finally:
        ray.shutdown()
    assert [(o.label, o.status) for o in outcomes] == [(label, "done") for label in LABELS]
    statuses = [read_status(root / label) for label in LABELS]
    assert len({s.pid for s in statuses}) == 2, "two workers took the four tasks"
    for label, status in zip(LABELS, statuses):
        assert status.job.startswith("ray-") and (root / label / "logs" / f"{status.job}.log").is_file(), label
    _reports_equal(root, reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_job_killed_mid_run_and_resubmitted_resumes(tiny_dataset, tmp_path, reference, one_thread_jobs, capsys):
    root, path = tmp_path / "experiment", tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tiny_dataset, configurations={"full": {}}, seeds=[2]).to_dict()))
    run = root / "full/seed_2"
    _when_checkpointed(run, lambda status: os.kill(status.pid, signal.SIGKILL))
    command = ["experiment", "run", str(path), "-o", str(root), "--executor", "slurm", "--slurm-cluster", "local"]
    command += ["--gpus-per-run", "0", "--cpus-per-run", "1"]
    assert main(command) == 1
    assert "ended without a result" in capsys.readouterr().out
    [line] = experiment_status(root)
    assert line.state == "failed" and "ended without a result" in line.detail
    assert main(command) == 0
    assert "1 runs: 1 done now" in capsys.readouterr().out
    logs = "".join(p.read_text() for p in (run / "logs").iterdir())
    assert "resuming from its last.pt" in logs and "resumed from" in logs
    expected = (reference / "full/seed_2/evaluation/per_case.csv").read_text()
    assert (run / "evaluation/per_case.csv").read_text() == expected, "the resumed run ends as the uninterrupted one"
    assert main(["experiment", "status", str(root)]) == 0
    assert "1 runs: 1 finished" in capsys.readouterr().out


@pytest.mark.parametrize(("executor", "package"), [("slurm", "submitit"), ("ray", "ray")])
def test_a_missing_cluster_package_is_one_line_and_nothing_is_written(
    tiny_dataset, tmp_path, monkeypatch, capsys, executor, package
):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tiny_dataset).to_dict()))
    assert main(["experiment", "run", str(path), "-o", str(tmp_path / "out"), "--executor", executor]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"needs the {package} package" in err
    assert 'pip install "perspective-unet[cluster]"' in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_local_ray_instance_refuses_runs_it_has_no_room_for_before_writing_anything(tiny_dataset, tmp_path):
    import ray

    assert not ray.is_initialized()
    settings = ExecutorSettings(name="ray", gpus_per_run=64, cpus_per_run=1)  # more than any one machine has
    with pytest.raises(InputError, match=r"each run asks for 64 GPU\(s\) \(--gpus-per-run\) but the Ray cluster has"):
        run_experiment(_grid(tiny_dataset), tmp_path / "out", executor=settings)
    assert not (tmp_path / "out").exists() and not ray.is_initialized(), "the instance started for it was stopped"


def test_executor_settings_come_from_the_file_under_the_command_line_and_are_checked(tiny_dataset, tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    grid = _grid(tiny_dataset).to_dict()
    grid["executor"] = {"name": "ray", "cpus_per_run": 2, "gpus_per_run": 0}
    path.write_text(yaml.safe_dump(grid))
    out = str(tmp_path / "out")
    assert main(["experiment", "run", str(path), "-o", out, "--devices", "cpu", "cpu"]) == 2
    assert "--devices is for the local executor; --executor ray" in capsys.readouterr().err
    assert main(["experiment", "run", str(path), "-o", out, "--array-parallelism", "0"]) == 2
    assert "executor.array_parallelism must be a positive integer" in capsys.readouterr().err
    grid["executor"] = {"name": "slurm", "gpus": 1}
    path.write_text(yaml.safe_dump(grid))
    assert main(["experiment", "run", str(path), "-o", out]) == 2
    assert "Unknown executor keys ['gpus']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_slurm_jobs_ask_for_what_the_settings_say(tmp_path):
    from perspective_unet.engine.experiment_slurm import slurm_executor

    settings = ExecutorSettings(
        name="slurm",
        partition="gpu",
        gpus_per_run=2,
        cpus_per_run=8,
        time_limit_minutes=90,
        array_parallelism=4,
        slurm_options={"account": "lab"},
        setup=["module load cuda"],
    )
    no_sbatch = pytest.raises(InputError, match="sbatch, which is not on this machine's PATH.*--slurm-cluster local")
    with mock.patch("shutil.which", return_value=None), no_sbatch:
        slurm_executor(settings, tmp_path, "grid")
    with mock.patch("shutil.which", return_value="/usr/bin/sbatch"):
        executor = slurm_executor(settings, tmp_path, "grid")
    script = executor._executor._make_submission_file_text("python -m job", "id")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=2",
        "--cpus-per-task=8",
        "--time=90",
        "--account=lab",
        "--signal=USR2@90",
        "--job-name=perspective-unet-grid",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert "module load cuda\n" in script
    assert executor._executor.parameters["array_parallelism"] == 4
