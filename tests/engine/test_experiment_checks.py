"""Experiments that cannot report a stale or wrong number: each way a run folder can disagree with its experiment file,
and what the runner, the report and the status then do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from perspective_unet.cli import main
from perspective_unet.engine import train as train_module
from perspective_unet.engine.experiment import run_experiment
from perspective_unet.engine.experiment_report import report_experiment
from perspective_unet.engine.experiment_status import experiment_status
from perspective_unet.errors import InputError
from tests.engine.test_experiment import TRAIN, _experiment

LABELS = ("full/seed_1", "full/seed_2")


def _grid(data: Path, **changes):
    """One configuration, two seeds; ``changes`` to the experiment or (``train_changes``) to its train block."""
    train = {"data": str(data), **TRAIN, **changes.pop("train_changes", {})}
    return _experiment(data, **{"configurations": {"full": {}}, "seeds": [1, 2], "train": train, **changes})


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory) -> Path:
    """An experiment folder whose two runs trained and were evaluated (test split, no TTA)."""
    root = tmp_path_factory.mktemp("finished") / "experiment"
    assert [o.status for o in run_experiment(_grid(tiny_dataset), root)] == ["done", "done"]
    return root


@pytest.fixture
def root(finished, tmp_path) -> Path:
    """A copy of the finished experiment folder for one test to change."""
    return Path(shutil.copytree(finished, tmp_path / "experiment"))


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


def _summary(run: Path) -> dict:
    return json.loads((run / "evaluation" / "summary.json").read_text())


@pytest.mark.parametrize(("evaluate", "kept"), [({"tta": True}, "test-tta-off"), ({"split": "val"}, "test-tta-off")])
def test_changed_evaluation_settings_evaluate_again_and_keep_the_old_evaluation_aside(
    root, tiny_dataset, evaluate, kept
):
    checkpoints = {label: (root / label / "last.pt").stat().st_mtime_ns for label in LABELS}
    outcomes = run_experiment(_grid(tiny_dataset, evaluate=evaluate), root)
    assert [o.status for o in outcomes] == ["done", "done"], "an evaluation of other settings is never reused"
    assert all("evaluated again" in o.message and f"evaluation.{kept}" in o.message for o in outcomes)
    for label in LABELS:
        summary = _summary(root / label)
        assert summary["tta"] is evaluate.get("tta", False) and summary["split"] == evaluate.get("split", "test")
        old = json.loads((root / label / f"evaluation.{kept}" / "summary.json").read_text())
        assert old["tta"] is False and old["split"] == "test"
        assert (root / label / "last.pt").stat().st_mtime_ns == checkpoints[label], "evaluated again, not retrained"
    report = report_experiment(root)
    assert report.configurations[0].runs == list(LABELS) and not report.left_out


def test_a_changed_protocol_reads_the_scores_the_evaluation_already_holds(root, tiny_dataset):
    # evaluate scores both protocols; the report takes the one the experiment names, so nothing is evaluated again.
    outcomes = run_experiment(_grid(tiny_dataset, evaluate={"protocol": "corrected"}), root)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    report = report_experiment(root)
    assert report.protocol == "corrected"
    corrected = [_summary(root / label)["foreground_mean"]["Dice"] for label in LABELS]
    assert report.configurations[0].dice.mean == pytest.approx(sum(corrected) / 2)


def test_a_refused_run_leaves_the_folder_and_its_experiment_yaml_untouched(root, tiny_dataset):
    before = _snapshot(root)
    refused = r"full/seed_1 was trained with other settings \(base_lr differ.*\(1 more run folder\(s\) refused"
    with pytest.raises(InputError, match=refused):
        run_experiment(_grid(tiny_dataset, train_changes={"base_lr": 0.02}), root)
    assert _snapshot(root) == before, "experiment.yaml is written only after every run's check passed"


def test_a_run_whose_record_was_deleted_is_refused(root, tiny_dataset):
    (root / "full/seed_1/run.json").unlink()
    before = _snapshot(root)
    with pytest.raises(InputError, match=r"full/seed_1 holds a run \(last.pt, best.pt, evaluation/\) but no run.json"):
        run_experiment(_grid(tiny_dataset), root)
    assert _snapshot(root) == before


def test_a_run_without_record_and_evaluation_never_comes_to_claim_new_settings(root, tiny_dataset):
    run = root / "full/seed_1"
    (run / "run.json").unlink()
    shutil.rmtree(run / "evaluation")
    before = _snapshot(root)
    for changes in ({}, {"base_lr": 0.02}):
        with pytest.raises(InputError, match="full/seed_1 holds a run .* but no run.json"):
            run_experiment(_grid(tiny_dataset, train_changes=changes), root)
    assert not (run / "run.json").exists() and _snapshot(root) == before


def test_a_corrupt_record_is_one_line_naming_the_file_with_exit_status_2_and_changes_nothing(
    root, tiny_dataset, tmp_path, capsys
):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tiny_dataset).to_dict()))
    record = root / "full/seed_2/run.json"
    record.write_text('{"model": "perspective_unet_tiny", "epo')
    before = _snapshot(root)
    assert main(["experiment", "run", str(path), "-o", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{record} is not valid JSON" in err and "settings" in err, err
    assert _snapshot(root) == before


def test_the_report_counts_only_complete_evaluations_and_names_those_it_left_out(root, capsys):
    (root / "full/seed_2/evaluation/summary.json").unlink()
    report = report_experiment(root)
    assert report.configurations[0].runs == ["full/seed_1"]
    assert report.left_out == {"full/seed_2": "evaluation/summary.json is missing"}
    assert "full/seed_2 (evaluation/summary.json is missing)" in (root / "report" / "report.md").read_text()
    assert main(["experiment", "report", str(root), "-o", str(root / "again")]) == 0
    assert "full/seed_2: evaluation/summary.json is missing" in capsys.readouterr().out
    status = {line.label: line for line in experiment_status(root)}
    assert status["full/seed_1"].state == "finished" and status["full/seed_2"].state == "waiting"


def test_the_record_is_written_with_the_first_checkpoint_and_never_rewritten(tiny_dataset, tmp_path, monkeypatch):
    root = tmp_path / "experiment"
    grid = _grid(tiny_dataset, seeds=[1], train_changes={"epochs": 2})
    run = root / "full/seed_1"
    # Stopped before its first checkpoint: no record, and the status says why.
    setup_run = train_module.setup_run

    def fails_before_training(*args):
        raise RuntimeError("no memory for the model")

    monkeypatch.setattr(train_module, "setup_run", fails_before_training)
    outcome = run_experiment(grid, root)[0]
    assert outcome.status == "failed" and "no memory for the model" in outcome.message
    assert not (run / "run.json").exists() and not (run / "last.pt").exists()
    assert [(s.state, s.detail) for s in experiment_status(root)] == [("failed", outcome.message)]
    # Stopped after its first checkpoint: the record was there before the checkpoint.
    monkeypatch.setattr(train_module, "setup_run", setup_run)
    save, saved = train_module._save, []

    def interrupted_on_the_second_epoch(training_run, *args):
        saved.append((run / "run.json").exists())
        if len(saved) == 2:
            raise KeyboardInterrupt
        return save(training_run, *args)

    monkeypatch.setattr(train_module, "_save", interrupted_on_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(grid, root)
    assert saved == [True, True] and (run / "last.pt").is_file()
    record = (run / "run.json").read_bytes(), (run / "run.json").stat().st_mtime_ns
    assert json.loads(record[0])["epochs"] == 2
    assert experiment_status(root)[0].state == "interrupted"
    # Resumed: the record stays the one it trained with.
    monkeypatch.setattr(train_module, "_save", save)
    assert run_experiment(grid, root)[0].status == "done"
    assert ((run / "run.json").read_bytes(), (run / "run.json").stat().st_mtime_ns) == record
    assert "resuming from its last.pt" in next((run / "logs").iterdir()).read_text()


def test_a_record_without_a_checkpoint_claims_nothing_and_is_replaced(tiny_dataset, tmp_path):
    root = tmp_path / "experiment"
    run = root / "full/seed_1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_lr": 0.5}))  # left just before a first checkpoint that never came
    assert run_experiment(_grid(tiny_dataset, seeds=[1]), root)[0].status == "done"
    assert json.loads((run / "run.json").read_text())["base_lr"] == TRAIN["base_lr"]
