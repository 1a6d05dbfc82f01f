"""The benchmark package on the smallest inputs: timing statistics, the measurement table, one measurement per
mode, the isolated subprocess, the reports and the command line. No speed is asserted: machines differ."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from perspective_unet import bench
from perspective_unet.bench import suite
from perspective_unet.bench.suite import memory_env
from perspective_unet.cli import main

TINY = "perspective_unet_tiny"
SMALL = {"model_name": TINY, "img_size": [32, 32], "runs": 1, "warmup": 0}
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------------------ timing


def test_time_function_times_only_the_timed_runs_on_a_fake_clock():
    calls = []
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # start and end of each timed run: 3 s, 1 s, 2 s
    timing = bench.time_function(lambda: calls.append(1), runs=3, warmup=2, clock=lambda: next(ticks))
    assert len(calls) == 5  # two warm-up calls, untimed
    assert timing.runs_s == [3.0, 1.0, 2.0]
    assert (timing.median_s, timing.min_s, timing.max_s) == (2.0, 1.0, 3.0)


def test_timing_statistics_and_their_errors():
    assert bench.Timing.from_runs([4.0, 1.0]).median_s == 2.5
    assert len(bench.time_function(lambda: None, runs=3, warmup=0).runs_s) == 3
    with pytest.raises(ValueError, match="no timed runs"):
        bench.Timing.from_runs([])
    for runs, warmup in ((0, 0), (1, -1)):
        with pytest.raises(ValueError, match="runs must be >= 1"):
            bench.time_function(lambda: None, runs=runs, warmup=warmup)


# ----------------------------------------------------------------------------------------------- measurement table


def test_every_mode_and_kernel_maps_to_a_measurement():
    assert set(bench.MODES) <= set(bench.MEASUREMENTS)
    assert bench.MEASUREMENTS["inference"] is bench.measure_inference
    assert bench.MEASUREMENTS["attention"] is bench.measure_attention_point
    assert all(callable(function) for function in bench.MEASUREMENTS.values())
    # Callers of the single-module benchmark named the functions themselves.
    assert bench.measurement("measure_train_step") == ("train", bench.measure_train_step)


def test_an_unknown_measurement_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown measurement 'globals'.*'inference'"):
        bench.measurement("globals")
    with pytest.raises(ValueError, match="unknown measurement"):
        bench.run_isolated("time_function", {})  # refused before a process starts


def test_paths_and_their_settings():
    assert [p.name for p in bench.select_paths("both")] == ["baseline", "optimized"]
    assert [p.name for p in bench.select_paths("optimized", allocator=None)] == ["optimized"]
    assert bench.optimized_settings("cuda").allocator is None  # allocator profiles act on CPU memory only
    assert bench.train_settings().compile and bench.train_settings().activation_memory_budget == 0.4
    with pytest.raises(ValueError, match="paths must be one of"):
        bench.select_paths("fastest")
    with pytest.raises(ValueError, match="allocator"):
        bench.PathSettings(allocator="jemalloc")
    with pytest.raises(ValueError, match="profile must be one of"):
        bench.tune_glibc_malloc("jemalloc")


# ---------------------------------------------------------------------------------------- one measurement per mode


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("inference", {"batch_size": 1}),
        ("train", {"batch_size": 1}),
        ("volume", {"batch_size": 2, "volume_shape": [2, 32, 32]}),
    ],
)
def test_each_mode_measures_the_tiny_model(mode: str, kwargs: dict[str, Any]):
    settings = bench.optimized_settings(allocator=None)
    result = bench.run_measurement(mode, {**SMALL, **kwargs, "settings": settings}, settings, isolate=False, device=CPU)
    assert result["mode"] == mode and result["path"] == "optimized" and result["memory_kind"] == "cpu_rss"
    assert result["timing"]["median_s"] > 0 and result["peak_memory_mb"] > 0 and result["parameters"] > 0
    assert bench.BenchmarkResult.from_dict(result).to_dict() == result
    if mode == "volume":
        assert result["items"] == 2 and result["extra"]["resampler"] == "torch"
        assert sum(result["extra"]["label_counts"]) == 2 * 32 * 32
    else:
        assert result["items"] == 1 and result["flops_per_call"] > 0
    if mode == "train":
        assert np.isfinite(result["extra"]["losses"]).all()


def test_prepare_gives_every_path_the_same_weights_and_input():
    first = bench.prepare(model_name=TINY, img_size=(32, 32), draw_input=True)
    second = bench.prepare(model_name=TINY, img_size=(32, 32), draw_input=True)
    assert torch.equal(first.x, second.x) and first.x.shape == (1, 1, 32, 32)
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    bare = bench.prepare(seed=0)
    assert bare.model is None and bare.x is None and bare.settings.name == "baseline"


def test_fidelity_of_the_tiny_model():
    fidelity = bench.output_fidelity(TINY, img_size=(32, 32))
    assert fidelity["relative"] < 1e-4 and fidelity["label_agreement"] > 0.99
    assert {"bi-path CNN encoder", "decoder", "head"} <= set(fidelity["parts"])
    assert all(0 <= value < 1e-4 for value in fidelity["parts"].values())


def test_profile_of_the_tiny_model_is_eager_per_part():
    profile = bench.profile_path(TINY, img_size=(32, 32), settings=bench.train_settings())
    assert profile["path"] == "optimized (compiled)" and profile["mode"] == "inference"
    assert {r["name"] for r in profile["parts"]} >= {"bi-path CNN encoder", "decoder", "other"}
    assert profile["operators"] and profile["total_ms"] > 0


def test_kernel_points_and_the_matmul_rate():
    for kernel in ("enlsa", "exact"):
        point = bench.measure_attention_point(kernel, 64, dim=8, runs=1, warmup=0)
        assert (point.kernel, point.tokens, point.dim) == (kernel, 64, 8) and point.timing.median_s > 0
    with pytest.raises(ValueError, match="kernel must be"):
        bench.measure_attention_point("flash", 64)
    scsi = bench.benchmark_scsi_memory((32,), baseline_sizes=(32,), isolate=False)["points"]
    assert [(p["train"], p["fast_dropout"]) for p in scsi] == [(False, True), (True, True), (True, False)]
    assert all(p["tokens"] == 8 * 8 + 4 * 4 + 2 * 2 for p in scsi)
    assert "SDPA dropout" in bench.scsi_table(scsi)
    assert bench.matmul_gflops(size=64, runs=1) > 0


# ---------------------------------------------------------------------------------------------------------- isolation


def test_isolated_measurement_runs_in_its_own_process():
    kwargs = {"kernel": "enlsa", "tokens": 64, "dim": 8, "runs": 1, "warmup": 0}
    point = bench.run_isolated("attention", kwargs, env=memory_env(CPU))
    assert point["kernel"] == "enlsa" and point["memory_kind"] == "cpu_rss" and point["timing"]["median_s"] > 0


def test_isolated_failures_come_back_as_errors():
    failed = bench.run_isolated("attention", {"kernel": "flash", "tokens": 64})
    assert failed["error"] == "exit status 1" and "kernel must be" in failed["stderr_tail"]
    assert bench.run_isolated("attention", {"kernel": "enlsa", "tokens": 64}, timeout=0.01) == {
        "error": "timed out after 0.01 s"
    }


# ------------------------------------------------------------------------------------------------------------ report


def _result(mode: str, path: str, median_s: float, peak_mb: float, flops: int, **extra: Any) -> dict[str, Any]:
    timing = {"median_s": median_s, "min_s": median_s, "max_s": median_s, "runs_s": [median_s]}
    return {"mode": mode, "path": path, "batch_size": 1, "items": 1, "timing": timing, "flops_per_call": flops,
            "peak_memory_mb": peak_mb, **extra}  # fmt: skip


def _report() -> dict[str, Any]:
    machine = {"cpu_model": "test CPU", "cores": 2, "threads": 1, "device": "cpu", "torch_version": "2",
               "python_version": "3", "platform": "Linux", "date": "today"}  # fmt: skip
    config = {"model": TINY, "img_size": [32, 32], "batch_size": 1, "train_batch_size": 2, "volume_batch_size": 4,
              "volume_shape": [2, 32, 32], "runs": 1, "warmup": 0, "rounds": 1, "model_overrides": {}}  # fmt: skip
    return {
        "machine": machine,
        "config": config,
        "matmul_gflops": 100.0,
        "results": [
            _result("inference", "baseline", 2.0, 400.0, 10**11),
            _result("inference", "optimized (compiled)", 1.0, 200.0, 0),
            {"mode": "train", "path": "baseline", "error": "out of memory (address space capped at 10 MB)"},
        ],
        "fidelity": {"optimized (compiled)": {"max_abs_diff": 1e-9, "relative": 1e-7, "label_agreement": 1.0}},
        "profiles": [],
        "points": [
            {"kernel": "enlsa", "tokens": 4096, "timing": {"median_s": 0.01}, "peak_memory_mb": 5.0},
            {"kernel": "enlsa", "tokens": 65536, "timing": {"median_s": 0.17}, "peak_memory_mb": 80.0},
        ],
        "enlsa_64k_over_16x_4k": 0.17 / 0.16,
    }


def test_comparison_table_reports_ratios_against_the_baseline():
    table = bench.comparison_table(_report())
    compiled = next(line for line in table.splitlines() if "compiled" in line).split()
    assert "2.00" in compiled and "0.50" in compiled  # speed-up and memory ratio
    assert "100" in compiled  # the compiled path runs the baseline's FLOPs: 100 GFLOP/s, 100% of the matmul rate
    assert "failed" in table and "out of memory" in table


def test_reports_state_measurements_without_targets(tmp_path):
    report = _report()
    summary = bench.model_summary(report)
    assert "dense matmul rate: 100 GFLOP/s" in summary and "within 1.0e-07" in summary
    attention = bench.attention_summary(report)
    assert "ENLSA 64k / (16 x 4k) = 1.06" in attention and "17.00 (x16 tokens)" in attention
    markdown = bench.report_markdown(report)
    assert "| mode" in markdown and "| kernel" in markdown and "labels agree on 100.000%" in markdown
    written = bench.write_report(report, json_path=tmp_path / "a" / "r.json", markdown_path=tmp_path / "r.md")
    assert written == [tmp_path / "a" / "r.json", tmp_path / "r.md"]
    assert json.loads(written[0].read_text()) == report
    for text in (summary, attention, markdown, written[0].read_text()):
        assert "target" not in text.lower()


# ------------------------------------------------------------------------------------------------------ command line


def test_cli_measures_the_model_end_to_end(tmp_path, capsys, monkeypatch):
    # The matmul rate at its full size would take longer than the rest of the command; its own test is above.
    monkeypatch.setattr(suite, "matmul_gflops", lambda device: 100.0)
    out = tmp_path / "report.json"
    args = ["benchmark", "--model", TINY, "--img-size", "32", "32", "--mode", "inference", "--runs", "1",
            "--warmup", "0", "--in-process", "--no-fidelity", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dense matmul rate: 100 GFLOP/s" in printed and "speed-up" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert [r["path"] for r in report["results"]] == ["baseline", "optimized"]
    assert {r["mode"] for r in report["results"]} == {"inference"}
    assert set(report) == {"machine", "config", "results", "fidelity", "profiles", "matmul_gflops"}


def test_cli_measures_attention_and_refuses_bad_options(tmp_path, capsys):
    md = tmp_path / "attention.md"
    args = ["benchmark", "attention", "--tokens", "64", "256", "--dim", "8", "--runs", "1", "--warmup", "0",
            "--in-process", "--scsi-sizes", "--markdown", str(md)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "enlsa" in printed and "exact" in printed and "target" not in printed.lower()
    assert "| kernel" in md.read_text()
    assert main(["benchmark", "--activation-memory-budget", "0.4"]) == 2
    assert "add --compile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert "target" not in capsys.readouterr().out.lower()
