"""Results are never lost: runs are not overwritten by accident, resumes keep their settings, multi-file results are
written whole or not at all, folders are held by one command, failures end in one line, nothing is left behind."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.errors import InputError
from perspective_unet.outputs import LOCK_NAME, output_lock

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = [
    "--model",
    "perspective_unet_tiny",
    "--img-size",
    "32",
    "32",
    "--batch-size",
    "4",
    "--num-workers",
    "0",
    "--val-every",
    "1",
]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "-o", str(out), "--epochs", "1", *TINY_RUN, *extra]


def one_line_error(capsys) -> str:
    """The error line of a failed command (progress bars may share stderr); there must be exactly one."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("perspective-unet")]
    assert len(lines) == 1, lines
    return lines[0]


def scan(path: Path) -> Path:
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32), np.eye(4)), str(path)
    )
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_args(tiny_dataset, out)) == 0
    return out


# Runs are not overwritten by accident -----------------------------------------------------------------------------


def test_training_into_a_folder_that_holds_a_run_is_refused(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_dataset, out)) == 0
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt", "train_log.csv")}
    capsys.readouterr()
    assert main(train_args(tiny_dataset, out)) == 2
    err = one_line_error(capsys)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert main(train_args(tiny_dataset, out, "--overwrite")) == 0
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [row["epoch"] for row in rows] == ["1"]  # the old run's rows are gone, not appended to


def test_resume_alone_restores_the_runs_settings(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "-o", str(out), "--epochs", "2", "--max-iterations", "2", *TINY_RUN]
    assert main(args) == 0
    assert main(["train", "--resume", str(out / "last.pt")]) == 0  # no --model, no --batch-size: the saved ones
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["train_config"]["batch_size"] == 4
    lrs = [float(row["lr"]) for row in csv.DictReader((out / "train_log.csv").open())]
    assert lrs[-1] > 0.0


def test_resume_refuses_a_setting_that_differs_from_the_saved_one(finished_run, capsys):
    assert main(["train", "--resume", str(finished_run / "last.pt"), "--batch-size", "8"]) == 2
    err = one_line_error(capsys)
    assert "batch-size 8 differs from the run's saved 4" in err
    assert main(["train", "--resume", str(finished_run / "last.pt"), "--epochs", "1", "--num-workers", "0"]) == 0


def test_a_higher_epochs_continues_a_finished_run(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = torch.load(run / "last.pt", weights_only=True)
    assert main(["train", "--resume", str(run / "last.pt")]) == 0
    assert "finished after 1 epoch(s)" in capsys.readouterr().out  # nothing left to do, and it says so rightly
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "-o", str(run)]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["train_config"]["epochs"]) == (2, 2)
    assert state["iteration"] > saved["iteration"]


# Whole results, one command per folder -----------------------------------------------------------------------------


def test_evaluate_keeps_earlier_reports_unless_told_and_writes_all_three_or_none(
    finished_run, tiny_dataset, tmp_path, capsys, monkeypatch
):
    import perspective_unet.evaluation as evaluate_module

    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(finished_run / "last.pt"), "--data", str(tiny_dataset), "-o", str(out)]
    assert main(args) == 0
    before = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in one_line_error(capsys)
    assert (out / "summary.json").read_text() == before

    def full_disk(result):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "summary.md"))

    monkeypatch.setattr(evaluate_module, "summary_markdown", full_disk)
    fresh = tmp_path / "eval2"
    assert main([*args[:-1], str(fresh)]) == 2
    assert "disk is full" in one_line_error(capsys)
    assert not fresh.exists() or sorted(p.name for p in fresh.iterdir()) == []


def test_a_label_map_never_appears_without_its_probabilities(finished_run, tmp_path, capsys, monkeypatch):
    import perspective_unet.runtime.predictor as predictor_module

    def full_disk(probabilities, meta, path, class_names):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(predictor_module, "write_probabilities", full_disk)
    source = scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(finished_run / "last.pt"),
                "-i",
                str(source),
                "-o",
                str(out),
                "--save-probabilities",
            ]
        )
        == 2
    )
    assert "disk is full" in one_line_error(capsys)
    assert not out.exists() or list(out.iterdir()) == []


def test_a_folder_in_use_is_refused_and_a_dead_commands_lock_taken_over(finished_run, tmp_path, capsys, caplog):
    source = scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "pred"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from perspective_unet.outputs import "
            "output_lock\nwith output_lock(sys.argv[1]):\n    print('held', flush=True); "
            "time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["predict", "--checkpoint", str(finished_run / "last.pt"), "-i", str(source), "-o", str(out)]
        assert main(args) == 2
        err = one_line_error(capsys)
        assert "in use by process" in err and str(holder.pid) in err
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).exists()  # killed: its lock stays behind
    assert main(args) == 0
    assert "no longer runs" in caplog.text and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_and_an_empty_new_folder_removed_on_failure(tmp_path):
    with pytest.raises(RuntimeError), output_lock(tmp_path / "new"):
        raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()
    with output_lock(tmp_path / "kept") as folder:
        (folder / "result.txt").write_text("done")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["result.txt"]


# Leftovers and file modes ----------------------------------------------------------------------------------------


def test_a_killed_runs_temporary_checkpoints_are_removed_at_the_next_start(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    leftovers = [run / ".last.pt.abc123.tmp", run / ".tmp-1a2b3c4d-last.pt"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run / "last.pt")]) == 0
    assert not any(path.exists() for path in leftovers)


def test_checkpoints_get_the_mode_the_umask_gives(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_model(create_model("perspective_unet_tiny"), tmp_path / "model.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_sigterm_stops_training_like_ctrl_c_and_leaves_no_lock(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "perspective_unet", *train_args(tiny_dataset, out)]
    command[command.index("--epochs") + 1] = "500"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err
    assert not (out / LOCK_NAME).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    torch.load(out / "last.pt", weights_only=True)  # the last checkpoint is whole


# Checkpoints ------------------------------------------------------------------------------------------------------


def checkpoint_args(checkpoint: Path, tmp_path: Path) -> list[str]:
    return [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "-i",
        str(scan(tmp_path / "scan.nii.gz")),
        "-o",
        str(tmp_path / "out"),
    ]


def test_an_empty_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert main(checkpoint_args(tmp_path / "empty.pt", tmp_path)) == 2
    assert "empty.pt is empty (0 bytes)" in one_line_error(capsys)


def test_a_checkpoint_holding_code_is_refused_without_advice_to_unlock_it(tmp_path, capsys):
    class Hostile:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "hostile.pt", "wb") as handle:
        pickle.dump({"model": Hostile()}, handle)
    assert main(checkpoint_args(tmp_path / "hostile.pt", tmp_path)) == 2
    err = one_line_error(capsys)
    assert "refused and nothing of it was run" in err and "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["missing", "misshaped", "nan", "huge_config"])
def test_checkpoints_whose_weights_do_not_fit_their_config_are_refused(tmp_path, capsys, damage):
    model = create_model("perspective_unet_tiny", num_classes=3)
    path = save_model(model, tmp_path / "model.pt")
    data = torch.load(path, weights_only=True)
    key = "head.weight"
    if damage == "missing":
        del data["model"][key]
    elif damage == "misshaped":
        data["model"][key] = data["model"][key][:, :1]
    elif damage == "nan":
        data["model"][key][0, 0, 0, 0] = float("nan")
    else:
        data["model_config"]["widths"] = [200_000] * 5  # would allocate terabytes before any check
    torch.save(data, path)
    started = time.monotonic()
    assert main(checkpoint_args(path, tmp_path)) == 2
    err = one_line_error(capsys)
    assert "model.pt" in err
    assert {
        "missing": "1 missing: head.weight",
        "misshaped": "1 mis-shaped: head.weight",
        "nan": "NaN or infinite",
        "huge_config": "do not match its model config",
    }[damage] in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


# Sizes, outputs that are not numbers, disks ------------------------------------------------------------------------


def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(finished_run, tmp_path, capsys):
    args = [*checkpoint_args(finished_run / "last.pt", tmp_path), "--img-size", "65536", "65536"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "GB of memory" in err and "--img-size" in err
    assert not (tmp_path / "out").exists()


def test_a_model_whose_outputs_are_not_finite_stops_prediction(tmp_path):
    from perspective_unet.engine.predict import predict_path
    from perspective_unet.models.inference_info import InferenceInfo
    from perspective_unet.runs import LoadedModel

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2, *x.shape[-2:]), float("nan"))

    with pytest.raises(InputError, match="NaN or infinite outputs"):
        predict_path(
            LoadedModel(Broken(), InferenceInfo(img_size=(32, 32))),
            scan(tmp_path / "scan.nii.gz"),
            tmp_path / "out",
            progress=False,
        )
    assert not (tmp_path / "out").exists()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "64k", read_only: bool = False):
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        # A plain umount fails while a file in it is open; that is the bug to report, not to leave mounted.
        busy = subprocess.run(["umount", str(path)], capture_output=True).returncode != 0
        if busy:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
    assert not busy, f"a command left a file open on {path}"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small or read-only tmpfs needs root")
@pytest.mark.parametrize("disk", ["full", "read_only"])
def test_full_and_read_only_disks_end_in_one_line_with_nothing_half_written(
    finished_run, tiny_dataset, tmp_path, capsys, disk
):
    with small_tmpfs(tmp_path / "disk", "16k", read_only=disk == "read_only") as mount:
        for args in (
            ["train", "--resume", str(finished_run / "last.pt"), "-o", str(mount / "run"), "--epochs", "2"],
            [
                "evaluate",
                "--checkpoint",
                str(finished_run / "last.pt"),
                "--data",
                str(tiny_dataset),
                "-o",
                str(mount / "eval"),
            ],
            [
                "predict",
                "--checkpoint",
                str(finished_run / "last.pt"),
                "-i",
                str(scan(tmp_path / "s.nii.gz")),
                "-o",
                str(mount / "pred"),
                "--save-probabilities",
            ],
        ):
            assert main(args) == 2, args[0]
            err = one_line_error(capsys)
            assert ("disk is full" if disk == "full" else "read-only") in err, err
        files = [p for p in mount.rglob("*") if p.is_file()]
        assert not [p.name for p in files if "tmp" in p.name or p.name.endswith((".pt", ".csv", ".nii.gz", ".md"))]
        for path in files:  # what a command did write (a run's config.json) is whole
            if path.suffix == ".json":
                json.loads(path.read_text())


def test_predict_asks_which_series_of_a_dicom_folder_and_reads_the_chosen_one(finished_run, tmp_path, capsys):
    from tests.data.test_input_checks import _write_series

    folder = tmp_path / "dicom"
    _write_series(folder, [0.0, 2.0, 4.0, 6.0], "1.2.3.4.1", "a", description="axial 2mm")
    _write_series(folder, [0.0, 3.0, 6.0], "1.2.3.4.2", "b")
    base = ["predict", "--checkpoint", str(finished_run / "last.pt"), "-i", str(folder), "-o", str(tmp_path / "out")]
    assert main(base) == 2
    err = one_line_error(capsys)
    assert "1.2.3.4.1" in err and "1.2.3.4.2" in err and "--series" in err
    assert not (tmp_path / "out").exists()
    assert main([*base, "--series", "1.2.3.4.2"]) == 0
    assert nib.load(str(tmp_path / "out" / "dicom.nii.gz")).shape == (5, 6, 3)
