"""The demo's plumbing on a tiny prepared dataset (the real demo downloads a CT and trains for minutes)."""

from __future__ import annotations

import json
import shutil

from perspective_unet.engine.demo import DemoSettings, format_organ_table, run_demo


def test_demo_writes_checkpoint_summary_and_figure(tiny_dataset, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")  # an existing prepared dataset is reused, so nothing is fetched
    settings = DemoSettings(img_size=(32, 32), epochs=1, batch_size=4, device="cpu")
    summary = run_demo(out, settings)
    for name in ("best.pt", "summary.json", "overlay.png", "demo.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["mean_dice"] == summary["mean_dice"]
    assert set(saved["per_class"]) == {"square", "disc"}
    table = format_organ_table(saved)
    assert table.splitlines()[0].split()[:2] == ["organ", "Dice"]
    assert table.splitlines()[-1].startswith("mean")


def test_a_second_demo_keeps_the_first_ones_results_unless_told(tiny_dataset, tmp_path):
    import pytest

    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")
    settings = DemoSettings(img_size=(32, 32), epochs=1, batch_size=4, device="cpu")
    run_demo(out, settings)
    before = (out / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(out, settings)
    assert (out / "summary.json").read_text() == before
    run_demo(out, settings, overwrite=True)
    assert (out / "summary.json").is_file()
