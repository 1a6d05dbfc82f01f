"""Every shell command of the README's pipeline section runs as written, on small generated data.

Only what a CPU test cannot afford is changed: the model, the epochs and the sizes of ``train`` (and a CUDA device
becomes the CPU), and the Dice tolerance of the int8 export of that one-epoch model; paths, options and config files
are the README's own. So the README cannot drift from the CLI.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import perspective_unet.data.demo as demo_module
from perspective_unet.cli import main
from tests.data.conftest import (
    write_acdc_raw,
    write_blob_nnunet_raw,
    write_nnunet_raw,
    write_pictures,
    write_synapse_raw,
)
from tests.data.test_splits_demo import _make_fake_sdist
from tests.engine.dicom_series import write_series

ROOT = Path(__file__).resolve().parents[1]
TRAIN_OVERRIDES = [
    "--model",
    "perspective_unet_tiny",
    "--epochs",
    "1",
    "--img-size",
    "32",
    "32",
    "--batch-size",
    "2",
    "--num-workers",
    "0",
    "--max-iterations",
    "3",
]


_LOOP = re.compile(r"for (\w+) in ([^;]+); do (.+); done")


def pipeline_commands() -> list[str]:
    """The command lines of the ``bash`` blocks between "## The pipeline" and "### Python API", comments removed and
    ``for VAR in A B; do COMMAND; done`` loops unrolled."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The pipeline") : text.index("### Python API")]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            loop = _LOOP.fullmatch(line)
            if loop:
                lines += [loop[3].replace(f"${loop[1]}", value) for value in loop[2].split()]
            elif line:
                lines.append(line)
    return lines


def write_inputs(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw datasets, scans and config files the README's commands name, relative to ``cwd``."""
    write_synapse_raw(cwd / "RawData" / "Training")
    write_acdc_raw(cwd / "ACDC" / "database")
    write_nnunet_raw(cwd / "Dataset042_Liver")
    write_blob_nnunet_raw(cwd / "Dataset050_Spleen", num_cases=10, test_cases=2)
    write_pictures(cwd / "my_pngs" / "images", cwd / "my_pngs" / "masks", count=6)
    shutil.copytree(ROOT / "configs", cwd / "configs")
    sdist = _make_fake_sdist(cwd / "fake" / demo_module.DEMO_SDIST_NAME)
    monkeypatch.setattr(demo_module, "DEMO_SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())

    def download(dest: Path) -> Path:
        return Path(shutil.copyfile(sdist, dest / demo_module.DEMO_SDIST_NAME))

    monkeypatch.setattr(demo_module, "_download_sdist", download)
    monkeypatch.setenv("PERSPECTIVE_UNET_CACHE", str(cwd / "cache"))
    slices = np.random.default_rng(1).uniform(-300, 300, (3, 24, 20)).astype(np.int16)
    write_series(cwd / "dicom" / "ct_0042", slices, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    scan = np.random.default_rng(0).uniform(-300, 300, (24, 20, 5)).astype(np.float32)
    (cwd / "scans").mkdir()
    for path in (cwd / "scans" / "case_0000.nii.gz", cwd / "scan.nii.gz"):
        nib.save(nib.Nifti1Image(scan, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


def as_test_run(argv: list[str]) -> list[str]:
    """A ``train`` command with CPU-sized overrides, an int8 export of a model trained for one epoch with any drop of
    its (meaningless) Dice accepted; every other command unchanged."""
    if "--quantize" in argv:
        return [*argv, "--dice-tolerance", "1"]
    if "train" not in argv:
        return argv
    argv = ["cpu" if arg.startswith("cuda") else arg for arg in argv]
    overrides = list(TRAIN_OVERRIDES)
    if "prepared/Liver" in argv or "prepared/Spleen" in argv:  # the generated nnU-Net cases are small slices
        overrides[overrides.index("--img-size") + 1 : overrides.index("--img-size") + 3] = ["16", "16"]
    return argv + overrides


@pytest.mark.slow
def test_every_pipeline_command_of_the_readme_runs(tmp_path, monkeypatch):
    commands = pipeline_commands()
    programs = [shlex.split(c)[0] for c in commands]
    assert programs.count("perspective-unet") >= 15 and "torchrun" in programs, commands
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, monkeypatch)
    for command in commands:
        argv = as_test_run(shlex.split(command))
        if argv[0] == "perspective-unet":
            assert main(argv[1:]) == 0, command
        else:
            assert argv[:3] == ["torchrun", "--nproc_per_node", "4"], command
            launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *argv[3:]]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
            result = subprocess.run(
                launcher, cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600
            )
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    for made in (
        "runs/synapse/last.pt",
        "runs/acdc/last.pt",
        "runs/synapse_released/last.pt",
        "runs/ddp/last.pt",
        "runs/synapse/eval/summary.json",
        "predictions/case.nii.gz",
        "case0001.png",
        "features.png",
        "prepared/Demo/plan.json",
        "prepared/MyPngs/plan.json",
        "prepared/Spleen/splits.json",
        "runs/spleen_2d/fold_4/validation/summary.json",
        "runs/spleen_25d/fold_0/validation/summary.json",
        "runs/spleen_2d/crossval/summary.json",
        "runs/spleen_best/postprocessing.json",
        "runs/spleen_best/inference_instructions.txt",
        "predictions_spleen/test_001.nii.gz",
        "runs/spleen_best/test/summary.json",
        "models/synapse/model.safetensors",
        "models/synapse/model.onnx",
        "predictions_folder/case.nii.gz",
        "predictions_onnx/case.nii.gz",
        "seg/ct_0042.dcm",
        "runs/synapse/eval_report/report.html",
        "synapse_report.html",
        "int8/model.onnx",
        "predictions_int8/case.nii.gz",
    ):
        assert (tmp_path / made).is_file(), made
    validation = tmp_path / "runs/spleen_25d/fold_0/validation"
    assert len(list(validation.glob("*_probabilities.npz"))) == len(list(validation.glob("*.nii.gz"))) == 2
