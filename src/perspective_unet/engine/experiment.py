"""``perspective-unet experiment run``: every run of an experiment's grid, trained and evaluated, resumable.

Layout of an experiment folder::

    DIR/
      experiment.yaml                          the experiment as run (its checked, complete form)
      <configuration>/seed_<S>[/fold_<K>]/     one run: train's files (last.pt, best.pt, config.json, ...)
        run.json                               the training settings the experiment asked for
        evaluation/                            evaluate's reports on the experiment's split (per_case.csv, ...)

A run with ``evaluation/summary.json`` is finished and skipped; a run with a ``last.pt`` but no evaluation was
interrupted and resumes from it (a finished training resumes to its end at once, then is evaluated); a run folder
without ``last.pt`` starts again. A run whose ``run.json`` differs from what the experiment now asks for is refused:
its results belong to other settings.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from perspective_unet.config.experiment import ExperimentConfig, ExperimentRun
from perspective_unet.errors import InputError
from perspective_unet.outputs import atomic_write, read_json
from perspective_unet.runs import RunFolder

__all__ = ["RunOutcome", "run_experiment", "run_status"]

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"
RUN_REQUEST = "run.json"


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run: ``skipped`` (finished before), ``done`` or ``failed`` (with the error's line)."""

    label: str
    status: str
    message: str = ""


def _request(run: ExperimentRun) -> dict:
    return run.config.to_dict()


def run_status(folder: Path) -> str:
    """``finished``, ``interrupted`` (a ``last.pt`` without evaluation), ``started`` (no checkpoint) or ``new``."""
    run = RunFolder(folder)
    if (run.evaluation / "summary.json").is_file():
        return "finished"
    if run.last.is_file():
        return "interrupted"
    return "started" if folder.exists() else "new"


def _check_request(run: ExperimentRun, folder: Path) -> None:
    path = folder / RUN_REQUEST
    if not path.is_file():
        return
    saved = read_json(
        path, "restore it from the experiment file's settings, or move the run folder away to run it again."
    )
    if not isinstance(saved, dict):
        raise InputError(
            f"{path} must hold the run's settings as a JSON object; move the run folder away to run it again."
        )
    asked = _request(run)
    differing = sorted(k for k in set(saved) | set(asked) if saved.get(k) != asked.get(k) and k != "output")
    if differing:
        raise InputError(
            f"{folder} was run with other settings ({', '.join(differing)} differ from the experiment "
            "file); restore the file, or move the folder away to run it again."
        )


def _execute(run: ExperimentRun, root: Path, device: str | None, split: str, tta: bool) -> str:
    """Train (or resume) and evaluate one run; returns ``skipped`` or ``done``."""
    from perspective_unet.engine.evaluate import evaluate
    from perspective_unet.engine.inference_settings import InferenceSettings
    from perspective_unet.engine.train import train
    from perspective_unet.engine.training import TrainingCheckpoint

    folder = root / run.folder
    _check_request(run, folder)
    status = run_status(folder)
    if status == "finished":
        return "skipped"
    config = replace(run.config, output=str(folder), **({"device": device} if device else {}))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / RUN_REQUEST, lambda path: path.write_text(json.dumps(_request(run), indent=2)))
    if status == "interrupted":
        log.info("%s: resuming from its last.pt", run.label)
        resume = TrainingCheckpoint.read(RunFolder(folder).last)
        train(resume.config({"device": device} if device else {}), resume=resume)
    else:
        # A folder without last.pt holds no result (a run killed before its first checkpoint): start it again.
        train(config, overwrite=status == "started")
    checkpoint = RunFolder(folder).checkpoint()  # best.pt (selected on validation cases), else last.pt
    evaluate(
        checkpoint,  # type: ignore[arg-type]
        config.data,
        RunFolder(folder).evaluation,
        InferenceSettings(tta=tta, device=config.device),
        split=split,
        progress=False,
        overwrite=True,
    )
    return "done"


def _finished(run: ExperimentRun, root: Path) -> RunOutcome:
    """A finished run is skipped, if it was made with the settings the experiment asks for now."""
    try:
        _check_request(run, root / run.folder)
    except InputError as exc:
        return RunOutcome(run.label, "failed", str(exc))
    return RunOutcome(run.label, "skipped")


def _attempt(run: ExperimentRun, root: Path, device: str | None, split: str, tta: bool) -> RunOutcome:
    try:
        return RunOutcome(run.label, _execute(run, root, device, split, tta))
    except (InputError, ValueError, FileExistsError, OSError, RuntimeError) as exc:
        log.debug("%s failed:\n%s", run.label, traceback.format_exc())
        return RunOutcome(run.label, "failed", f"{type(exc).__name__}: {exc}")


def _worker(
    runs: Sequence[ExperimentRun],
    root: Path,
    device: str,
    split: str,
    tta: bool,
    todo: queue.Queue,
    results: queue.Queue,
) -> None:
    """One device's loop in its own process: take the next run until none is left."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{device}] %(message)s")
    while True:
        try:
            index = todo.get_nowait()
        except queue.Empty:
            return
        results.put(_attempt(runs[index], root, device, split, tta))


def _run_in_parallel(
    runs: Sequence[ExperimentRun], pending: Sequence[int], root: Path, devices: Sequence[str], split: str, tta: bool
) -> list[RunOutcome]:
    context = multiprocessing.get_context("spawn")
    todo, results = context.Queue(), context.Queue()
    for index in pending:
        todo.put(index)
    workers = [
        context.Process(target=_worker, args=(runs, root, device, split, tta, todo, results)) for device in devices
    ]
    for worker in workers:
        worker.start()
    outcomes: list[RunOutcome] = []
    while len(outcomes) < len(pending):
        try:
            outcome = results.get(timeout=2.0)
        except queue.Empty:
            if any(worker.is_alive() for worker in workers):
                continue
            break  # every worker is gone: what is left was lost with a crashed one
        log.info("%s: %s%s", outcome.label, outcome.status, f" ({outcome.message})" if outcome.message else "")
        outcomes.append(outcome)
    for worker in workers:
        worker.join()
    reported = {o.label for o in outcomes}
    exits = ", ".join(f"{d}: {w.exitcode}" for d, w in zip(devices, workers))
    outcomes += [
        RunOutcome(runs[i].label, "failed", f"its worker process ended (exit codes {exits})")
        for i in pending
        if runs[i].label not in reported
    ]
    return outcomes


def _write_experiment(experiment: ExperimentConfig, root: Path) -> None:
    text = yaml.safe_dump(experiment.self_contained().to_dict(), sort_keys=False)
    atomic_write(root / EXPERIMENT_FILE, lambda path: path.write_text(text))


def run_experiment(
    experiment: ExperimentConfig | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    devices: Sequence[str] | None = None,
) -> list[RunOutcome]:
    """Run every run of the grid that is not finished yet, then return what happened to each.

    Args:
        experiment: The experiment, or its YAML file.
        output: The experiment folder (see the module docstring); created if needed.
        devices: One worker per device (``cuda:0 cuda:1``, ``cpu``), each taking the next unfinished run; None or
            one device: the runs one after another in this process (on the runs' own ``device`` setting when None).

    Returns:
        One :class:`RunOutcome` per run, in grid order. A failed run does not stop the others; the caller reports it.
    """
    if not isinstance(experiment, ExperimentConfig):
        experiment = ExperimentConfig.from_yaml(experiment)
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    runs = experiment.runs()
    _write_experiment(experiment, root)
    split, tta = experiment.evaluate.split, experiment.evaluate.tta
    pending = [i for i, run in enumerate(runs) if run_status(root / run.folder) != "finished"]
    log.info("experiment %s: %d runs, %d to do", experiment.name, len(runs), len(pending))
    outcomes: dict[str, RunOutcome] = {}
    for index, run in enumerate(runs):
        if index not in pending:
            outcomes[run.label] = _finished(run, root)
    if devices is None or len(devices) <= 1:
        device = devices[0] if devices else None
        for position, index in enumerate(pending, 1):
            log.info("[%d/%d] %s", position, len(pending), runs[index].label)
            outcome = _attempt(runs[index], root, device, split, tta)
            if outcome.status == "failed":
                log.error("%s failed: %s", outcome.label, outcome.message)
            outcomes[outcome.label] = outcome
    else:
        outcomes.update({o.label: o for o in _run_in_parallel(runs, pending, root, devices, split, tta)})
    return [outcomes[run.label] for run in runs]
