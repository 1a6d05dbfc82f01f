"""``perspective-unet prepare``: success, and bad input as one message naming the file with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from perspective_unet.cli import main
from tests.data.conftest import leftovers, save_nifti, write_acdc_raw, write_nnunet_raw, write_synapse_raw


def test_prepare_synapse_and_acdc(tmp_path: Path, capsys) -> None:
    write_synapse_raw(tmp_path / "syn", cases=(5, 1), shape=(8, 8, 3))
    assert main(["prepare", "synapse", "-i", str(tmp_path / "syn"), "-o", str(tmp_path / "syn_out")]) == 0
    assert "Prepared dataset written to" in capsys.readouterr().out
    write_acdc_raw(tmp_path / "acdc")
    assert main(["prepare", "acdc", "-i", str(tmp_path / "acdc"), "-o", str(tmp_path / "acdc_out")]) == 0
    assert json.loads((tmp_path / "acdc_out" / "dataset.json").read_text())["name"] == "ACDC"


def test_prepare_nnunet_options_reach_the_library(tmp_path: Path) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=5)
    argv = [
        "prepare",
        "nnunet",
        "-i",
        str(tmp_path / "raw"),
        "-o",
        str(tmp_path / "out"),
        "--ct-window",
        "-50",
        "150",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0.4",
        "--seed",
        "9",
        "--orientation",
        "stored",
    ]
    assert main(argv) == 0
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["intensity"]["window"] == [-50.0, 150.0] and info["orientation"] == "stored"
    assert (len(info["splits"]["train"]), len(info["splits"]["val"]), len(info["splits"]["test"])) == (3, 0, 2)


def test_bad_input_exits_2_naming_the_file_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    arrays = write_synapse_raw(tmp_path / "raw", cases=(5, 1), shape=(8, 8, 3))
    bad = arrays[1][0].astype(np.float32)
    bad[0, 0, 0] = np.inf
    save_nifti(tmp_path / "raw" / "img" / "img0001.nii.gz", bad)
    assert main(["prepare", "synapse", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perspective-unet prepare: error:") and "img0001.nii.gz" in err and "NaN or infinite" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_dataset_json_field_exits_2(tmp_path: Path, capsys) -> None:
    write_nnunet_raw(tmp_path / "raw", num_cases=2)
    path = tmp_path / "raw" / "dataset.json"
    info = json.loads(path.read_text())
    del info["channel_names"]
    path.write_text(json.dumps(info))
    assert main(["prepare", "nnunet", "-i", str(tmp_path / "raw"), "-o", str(tmp_path / "out")]) == 2
    assert "dataset.json lacks the field 'channel_names'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_input_folder_exits_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "acdc", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    assert "empty holds no patientXXX folders" in capsys.readouterr().err
