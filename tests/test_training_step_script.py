"""benchmarks/training_step.py: the paths it compares and one short run of it on the tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_step.py"


def _script():
    spec = importlib.util.spec_from_file_location("training_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_released_path_is_the_baseline_and_the_default_is_what_training_runs():
    script = _script()
    released, default, route_off = script.paths(extras=False)
    assert released.name == "released"
    assert not (released.fast_dropout or released.lean_concatenation or released.onednn_linear)
    assert default.fast_dropout and default.lean_concatenation and not default.channels_last
    assert default.allocator is None and not default.compile and not default.gradient_checkpointing
    assert route_off.onednn_linear is False and route_off.fast_dropout
    assert [p.name for p in script.paths(extras=True)][3:] == ["default + channels-last", "default + reuse allocator"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--rounds", "0"], "--rounds must be at least 1"), (["--model", "unet9"], "'unet9' is not a registered model")],
)
def test_bad_arguments_get_one_line_and_exit_status_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script().main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_existing_result_is_kept_without_overwrite(tmp_path, capsys):
    out = tmp_path / "steps.json"
    out.write_text("earlier")
    with pytest.raises(SystemExit) as exit_info:
        _script().main(["--json", str(out)])
    assert exit_info.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier"


@pytest.mark.slow
def test_a_short_run_writes_every_path(tmp_path, capsys):
    out = tmp_path / "steps.json"
    args = ["--rounds", "1", "--steps", "1", "--model", "perspective_unet_tiny", "--json", str(out)]
    assert _script().main(args) == 0
    result = json.loads(out.read_text())
    assert [row["path"] for row in result["rows"]] == ["released", "default", "default, oneDNN route off"]
    assert result["rows"][0]["speedup"] == 1.0
    assert all(row["step_s"] > 0 and row["peak_mb"] > 0 for row in result["rows"])
    assert "| default |" in capsys.readouterr().out
