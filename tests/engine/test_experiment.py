"""Folds in training, and experiments: a 2 x 2 grid on tiny data end to end, resumed, reported, checked by hand."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats as scipy_stats

from perspective_unet.cli import main
from perspective_unet.config import TrainConfig
from perspective_unet.config.experiment import ExperimentConfig
from perspective_unet.engine import experiment as experiment_module
from perspective_unet.engine.experiment import run_experiment
from perspective_unet.engine.experiment_report import report_experiment
from perspective_unet.engine.experiment_status import experiment_status
from perspective_unet.engine.train import train
from perspective_unet.errors import InputError
from tests.engine.test_train import TINY_RUN

TRAIN = {
    "model": "perspective_unet_tiny",
    "img_size": [32, 32],
    "epochs": 1,
    "batch_size": 4,
    "num_workers": 0,
    "val_every": 1,
    "base_lr": 0.01,
}


@pytest.fixture
def poisoned(tiny_dataset, tmp_path):
    """The tiny dataset with its test volumes replaced by bytes no reader accepts: touching one fails."""
    root = tmp_path / "poisoned"
    shutil.copytree(tiny_dataset, root)
    for path in (root / "test_vol_h5").iterdir():
        path.write_bytes(b"poison: test cases are for evaluate only")
    return root


def test_fold_training_selects_checkpoints_without_reading_a_test_case(poisoned, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "--data", str(poisoned), "-o", str(out), "--fold", "1", "--num-folds", "3", "--epochs", "2"]
    assert main([*args, "--val-every", "1", *TINY_RUN]) == 0
    run = out / "fold_1"
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    folds = json.loads((poisoned / "splits.json").read_text())
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["train_config"]["fold"] == 1
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert all(0 <= float(r["val_mean_dice"]) <= 1 for r in rows), "validated on fold 1's held-out case"
    assert all("case0004" not in f["train"] + f["val"] and "case0005" not in f["train"] + f["val"] for f in folds)
    # The same run without folds validates on the val split; asking for the test split is refused before any work.
    with pytest.raises(ValueError, match="val_split must not be 'test'"):
        TrainConfig(data=str(poisoned), val_split="test")


def test_fold_all_trains_on_every_development_case_without_validation(poisoned, tmp_path):
    result = train(TrainConfig(data=str(poisoned), output=str(tmp_path / "all"), fold="all", num_folds=3, **TRAIN))
    assert result.best_checkpoint is None and result.last_checkpoint.is_file()


def _experiment(data: Path, **changes) -> ExperimentConfig:
    fields = {
        "name": "grid",
        "train": {"data": str(data), **TRAIN},
        "configurations": {"full": {}, "no_scsi": {"model_options": {"use_scsi": False}}},
        "seeds": [1, 2],
        "statistics": {"unit": "case_class", "bootstrap_resamples": 500, "bootstrap_seed": 3},
    }
    fields.update(changes)
    return ExperimentConfig.from_dict(fields)


def _per_case(folder: Path) -> dict[tuple[str, str], float]:
    with (folder / "evaluation" / "per_case.csv").open() as handle:
        return {(r["case"], r["class_name"]): float(r["legacy_Dice"]) for r in csv.DictReader(handle)}


def test_a_two_by_two_experiment_runs_resumes_and_reports_hand_computed_statistics(tiny_dataset, tmp_path, monkeypatch):
    experiment = _experiment(tiny_dataset)
    root = tmp_path / "experiment"
    original = experiment_module.execute_run
    calls = []

    def killed_on_the_third(job, *args):
        calls.append(job.run.label)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or a scheduler's kill in the middle of the third run
        return original(job, *args)

    monkeypatch.setattr(experiment_module, "execute_run", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment, root)
    monkeypatch.setattr(experiment_module, "execute_run", original)
    # The runs the interrupt kept from starting are not left "waiting" for a command that has ended.
    assert [line.state for line in experiment_status(root)] == ["finished", "finished", "waiting", "waiting"]
    assert [line.detail for line in experiment_status(root)][2:] == ["not started", "not started"]
    finished = (root / "full/seed_1/last.pt").stat().st_mtime_ns
    outcomes = run_experiment(experiment, root)
    assert [(o.label, o.status) for o in outcomes] == [
        ("full/seed_1", "skipped"),
        ("full/seed_2", "skipped"),
        ("no_scsi/seed_1", "done"),
        ("no_scsi/seed_2", "done"),
    ]
    assert (root / "full/seed_1/last.pt").stat().st_mtime_ns == finished, "a finished run is not trained again"
    saved = yaml.safe_load((root / "experiment.yaml").read_text())
    assert saved["train"]["data"] == str(tiny_dataset) and saved["base"] is None

    report = report_experiment(root)
    scores = {
        label: _per_case(root / label) for label in ("full/seed_1", "full/seed_2", "no_scsi/seed_1", "no_scsi/seed_2")
    }
    units = sorted(scores["full/seed_1"])
    by_config = {}
    for name in ("full", "no_scsi"):
        runs = [scores[f"{name}/seed_{s}"] for s in (1, 2)]
        run_means = [
            np.mean([np.mean([r[(c, k)] for c, kk in units if kk == k]) for k in ("square", "disc")]) for r in runs
        ]
        summary = next(s for s in report.configurations if s.name == name)
        assert summary.dice.mean == pytest.approx(np.mean(run_means))
        assert summary.dice.std == pytest.approx(np.std(run_means, ddof=1))
        unit_values = np.array([np.mean([r[u] for r in runs]) for u in units])
        assert [summary.units[f"{c}/{k}"] for c, k in units] == pytest.approx(list(unit_values))
        rng = np.random.default_rng(3)
        means = unit_values[rng.integers(0, len(unit_values), (500, len(unit_values)))].mean(axis=1)
        if np.ptp(unit_values) > 0:
            assert summary.interval == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
        by_config[name] = unit_values
    comparison = next(s for s in report.configurations if s.name == "no_scsi").comparison
    difference = by_config["no_scsi"] - by_config["full"]
    assert comparison.mean_difference == pytest.approx(difference.mean())
    if np.any(difference != 0):
        expected = scipy_stats.wilcoxon(by_config["no_scsi"], by_config["full"]).pvalue
        assert comparison.p_value == pytest.approx(expected) and comparison.p_holm == pytest.approx(expected)
    for name in ("report.md", "report.csv", "report.tex", "report.json", "boxplots.png"):
        assert (root / "report" / name).stat().st_size > 0, name
    markdown = (root / "report" / "report.md").read_text()
    assert "| full " in markdown and "Holm" in markdown and "±" in markdown
    with pytest.raises(FileExistsError, match="--overwrite"):
        report_experiment(root)


def test_a_finished_run_with_other_settings_is_refused_not_reused(tiny_dataset, tmp_path):
    root = tmp_path / "experiment"
    small = _experiment(tiny_dataset, configurations={"full": {}}, seeds=[1])
    assert [o.status for o in run_experiment(small, root)] == ["done"]
    changed = _experiment(tiny_dataset, configurations={"full": {"base_lr": 0.02}}, seeds=[1])
    with pytest.raises(InputError, match="full/seed_1 was trained with other settings \\(base_lr differ"):
        run_experiment(changed, root)


def test_experiment_files_are_checked_before_any_run(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="configurations.bad: .*epochs"):
        _experiment(tiny_dataset, configurations={"bad": {"epochs": 0}})
    with pytest.raises(ValueError, match="seed is set by the experiment"):
        _experiment(tiny_dataset, configurations={"a": {"seed": 3}})
    with pytest.raises(ValueError, match="reference 'x'"):
        _experiment(tiny_dataset, reference="x")
    path = tmp_path / "experiment.yaml"
    path.write_text("name: x\nconfigurations: {a: {}}\nseeds: [1]\ntrain: {epochs: 1}\n")
    assert main(["experiment", "run", str(path), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists(), "nothing is written for a bad experiment file"


def test_report_of_a_folder_without_results_is_one_clear_error(tmp_path, capsys):
    assert main(["experiment", "report", str(tmp_path)]) == 2
    assert "holds no experiment.yaml" in capsys.readouterr().err
    with pytest.raises(InputError):
        report_experiment(tmp_path)


def test_cli_runs_and_reports_an_experiment_with_folds(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    path = tmp_path / "folds.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cv",
                "train": {"data": str(data), **TRAIN, "num_folds": 3},
                "configurations": {"full": {}},
                "seeds": [5],
                "folds": [0, 1],
                "evaluate": {"protocol": "corrected"},
            }
        )
    )
    assert main(["experiment", "run", str(path), "-o", str(tmp_path / "cv")]) == 0
    assert "2 runs: 2 done now" in capsys.readouterr().out
    assert (tmp_path / "cv/full/seed_5/fold_1/evaluation/summary.json").is_file()
    assert main(["experiment", "report", str(tmp_path / "cv")]) == 0
    out = capsys.readouterr().out
    assert "Experiment cv" in out and "HD95 in mm" in out
    assert main(["experiment", "report", str(tmp_path / "cv"), "--report", "--overwrite"]) == 0
    page = (tmp_path / "cv" / "report" / "report.html").read_text()
    assert "<title>Experiment cv</title>" in page and 'class="sortable"' in page
    # The fold runs of a seed form an ensemble for evaluate.
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "cv/full/seed_5"),
                "--data",
                str(data),
                "-o",
                str(tmp_path / "ensemble"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "ensemble" / "summary.json").read_text())
    assert len(summary["checkpoint"]) == 2 and not math.isnan(summary["foreground_mean"]["legacy_Dice"])


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[2] / "configs" / "experiments").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_experiment_files_are_valid(path):
    experiment = ExperimentConfig.from_yaml(path)
    runs = experiment.runs()
    assert len(runs) == len(experiment.configurations) * len(experiment.seeds)
    assert experiment.reference in experiment.configurations


@pytest.mark.slow
@pytest.mark.distributed
def test_runs_shared_between_two_worker_processes(tiny_dataset, tmp_path):
    experiment = _experiment(tiny_dataset, configurations={"full": {}}, seeds=[1, 2, 3])
    outcomes = run_experiment(experiment, tmp_path / "parallel", devices=["cpu", "cpu"])
    assert [o.status for o in outcomes] == ["done"] * 3
    assert all((tmp_path / "parallel" / f"full/seed_{s}/evaluation/summary.json").is_file() for s in (1, 2, 3))
