"""The model commands of the command line: info and convert-official."""

from __future__ import annotations

import subprocess
import sys

import torch

from perspective_unet import load_model
from perspective_unet.cli import main


def test_info_prints_a_table_with_parts_flops_and_output_shape(capsys):
    assert main(["info", "--model", "perspective_unet_tiny", "--img-size", "160", "192", "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    assert "output (1, 4, 160, 192)" in out
    for part in ("bi-path CNN encoder", "ENLTB encoder", "SCSI integrator", "fusion", "decoder", "head", "total"):
        assert part in out
    total_line = [line for line in out.splitlines() if line.startswith("total")][0]
    assert float(total_line.split()[-1]) > 0


def test_info_paper_model_reports_the_papers_parameters(capsys):
    assert main(["info"]) == 0
    total_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("total")][0]
    assert total_line.split()[1] == "112.660"


def test_bad_size_exits_non_zero_with_one_clear_line(capsys):
    assert main(["info", "--model", "perspective_unet_tiny", "--img-size", "225", "224"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multiples of 16" in err and "240" in err


def test_convert_official_refuses_to_overwrite(tmp_path, capsys):
    from tests.models.test_official import _released_state_dict

    source = tmp_path / "epoch_599.pth"
    torch.save(_released_state_dict(), source)
    destination = tmp_path / "converted.pt"
    assert main(["convert-official", str(source), str(destination)]) == 0
    assert load_model(destination).config.num_classes == 9
    assert main(["convert-official", str(source), str(destination)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_console_script_module_runs():
    result = subprocess.run([sys.executable, "-m", "perspective_unet", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "info" in result.stdout
