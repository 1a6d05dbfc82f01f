"""Reports of the benchmark as text tables, Markdown and JSON. They state measured figures and ratios between
paths (speed-up, memory ratio, growth with size), never a goal those figures are meant to reach."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perspective_unet.table import format_table

__all__ = [
    "attention_summary",
    "attention_table",
    "comparison_table",
    "machine_markdown",
    "model_summary",
    "report_markdown",
    "scsi_table",
    "write_report",
]

_NAN = float("nan")


def _median_results(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    # Per (mode, path), the round with the median latency (the lower middle one for an even count).
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result in report["results"]:
        if "error" not in result:
            groups.setdefault((result["mode"], result["path"]), []).append(result)
    chosen = {}
    for key, results in groups.items():
        results = sorted(results, key=lambda r: r["timing"]["median_s"])
        chosen[key] = results[(len(results) - 1) // 2]
    return chosen


def _comparison_row(r: dict[str, Any], base: dict[str, Any] | None, matmul_gflops: float) -> list[Any]:
    timing = r["timing"]
    speedup = base["timing"]["median_s"] / timing["median_s"] if base else _NAN
    memory_ratio = r["peak_memory_mb"] / base["peak_memory_mb"] if base else _NAN
    flops = r["flops_per_call"]
    if not flops and base and base["batch_size"] == r["batch_size"]:
        flops = base["flops_per_call"]  # a compiled path runs the same maths; the counter cannot see inside it
    gflops = flops / timing["median_s"] / 1e9 if flops else _NAN
    counted = gflops == gflops  # NaN where no FLOPs were counted
    return [
        r["mode"],
        r["path"],
        r["batch_size"],
        f"{timing['median_s']:.3f}",
        f"{timing['min_s']:.3f}-{timing['max_s']:.3f}",
        f"{r['items'] / timing['median_s']:.2f}",
        f"{gflops:.0f}" if counted else "-",
        f"{100 * gflops / matmul_gflops:.0f}" if counted else "-",
        f"{r['peak_memory_mb']:.0f}",
        f"{speedup:.2f}",
        f"{memory_ratio:.2f}",
    ]


def comparison_table(report: dict[str, Any], *, markdown: bool = False) -> str:
    """One row per (mode, path): latency, slices/s, GFLOP/s and its share of the matmul rate, memory, and the
    speed-up and memory ratio against the baseline path; then a row per failed measurement.

    A compiled path's FLOPs are the baseline's (same maths at the same batch): the counter cannot see inside it.

    Args:
        report: What :func:`~.suite.benchmark_model` returns (only ``results`` and ``matmul_gflops`` are read).
        markdown: A Markdown table instead of aligned text.
    """
    chosen = _median_results(report)
    peak = report.get("matmul_gflops") or _NAN
    rows = [_comparison_row(r, chosen.get((mode, "baseline")), peak) for (mode, _), r in chosen.items()]
    for r in report["results"]:
        if "error" in r:
            rows.append([r["mode"], r["path"], "-", "failed", r["error"], "-", "-", "-", "-", "-", "-"])
    header = [
        "mode",
        "path",
        "batch",
        "median s",
        "min-max s",
        "slices/s",
        "GFLOP/s",
        "% matmul",
        "peak MB",
        "speed-up",
        "memory x",
    ]
    return format_table(header, rows, markdown=markdown)


def attention_table(points: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """ENLSA and exact attention, each kernel's points by length, with its time growth from the previous length.

    Args:
        points: The ``points`` of :func:`~.suite.benchmark_attention`.
        markdown: A Markdown table instead of aligned text.
    """
    rows = []
    previous: dict[str, dict[str, Any]] = {}
    for p in sorted(points, key=lambda p: (p.get("kernel", ""), p.get("tokens", 0))):
        if "error" in p:
            rows.append([p.get("kernel", "?"), p.get("tokens", "?"), "failed", "-", "-", "-"])
            continue
        prev = previous.get(p["kernel"])
        growth = "-"
        if prev:
            ratio = p["timing"]["median_s"] / prev["timing"]["median_s"]
            growth = f"{ratio:.2f} (x{p['tokens'] / prev['tokens']:.0f} tokens)"
        rows.append(
            [
                p["kernel"],
                p["tokens"],
                f"{1e3 * p['timing']['median_s']:.1f}",
                f"{1e9 * p['timing']['median_s'] / p['tokens']:.0f}",
                f"{p['peak_memory_mb']:.0f}",
                growth,
            ]
        )
        previous[p["kernel"]] = p
    return format_table(["kernel", "tokens", "ms", "ns/token", "peak MB", "time growth"], rows, markdown=markdown)


def scsi_table(points: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """SCSI memory per input size, with the growth over the first size of its kind next to the growth in tokens.

    Args:
        points: The ``points`` of :func:`~.suite.benchmark_scsi_memory`.
        markdown: A Markdown table instead of aligned text.
    """
    rows = []
    first: dict[tuple[bool, bool], dict[str, Any]] = {}
    for p in points:
        label = ("train" if p.get("train") else "eval") + ("" if p.get("fast_dropout", True) else " (SDPA dropout)")
        if "error" in p:
            rows.append([label, p.get("img_size"), "-", "failed", "-", "-"])
            continue
        ref = first.setdefault((p["train"], p.get("fast_dropout", True)), p)
        growth = p["peak_memory_mb"] / ref["peak_memory_mb"] if ref["peak_memory_mb"] else _NAN
        rows.append(
            [
                label,
                p["img_size"],
                p["tokens"],
                f"{p['timing']['median_s']:.2f}",
                f"{p['peak_memory_mb']:.0f}",
                f"{growth:.2f} (tokens x{p['tokens'] / ref['tokens']:.1f})",
            ]
        )
    return format_table(["SCSI", "input", "tokens", "s", "peak MB", "memory growth"], rows, markdown=markdown)


def machine_markdown(machine: dict[str, Any]) -> str:
    """A one-paragraph description of the machine (the ``machine`` of a report) for a results README: the processor
    and its capabilities, and what the capability-dependent defaults choose on it (reports written before these
    fields existed leave them out)."""
    text = (
        f"CPU: {machine['cpu_model']}, {machine['cores']} cores, {machine['threads']} torch threads; "
        f"device: {machine['device']}; torch {machine['torch_version']}, Python {machine['python_version']}; "
        f"{machine['platform']}; measured {machine['date']}."
    )
    if machine.get("torch_cpu_capability"):
        names = ", ".join(machine.get("cpu_capabilities") or ()) or "none of AVX2/AVX-512/AMX/VNNI"
        text += (
            f"\nCapabilities: {names} (PyTorch's kernels: {machine['torch_cpu_capability']}); oneDNN route: "
            f"{machine.get('onednn_route', '?')}; --precision auto runs inference in "
            f"{machine.get('inference_precision', '?')}."
        )
    return text


def _fidelity_line(name: str, fid: dict[str, Any]) -> str:
    parts = ", ".join(f"{part} {value:.1e}" for part, value in fid.get("parts", {}).items())
    return (
        f"- `{name}` eval logits vs plain float32: max |diff| {fid['max_abs_diff']:.2e} = "
        f"{fid['relative']:.2e} of the largest logit; labels agree on {100 * fid['label_agreement']:.3f}%"
        + (f"; each part's outputs, max |diff| over their largest value: {parts}." if parts else ".")
    )


def _model_markdown(report: dict[str, Any]) -> list[str]:
    config = report["config"]
    lines = [
        f"Model `{config['model']}` at {config['img_size'][0]}x{config['img_size'][1]}, overrides "
        f"{config['model_overrides'] or 'none'}; inference batch {config['batch_size']}, training batch "
        f"{config['train_batch_size']}, volume {'x'.join(map(str, config['volume_shape']))}; median of "
        f"{config['runs']} runs after {config['warmup']} warm-up, {config['rounds']} round(s). Dense matmul "
        f"rate measured in the same run: {report['matmul_gflops']:.0f} GFLOP/s.",
        "",
        comparison_table(report, markdown=True),
        "",
    ]
    lines += [_fidelity_line(name, fid) for name, fid in report.get("fidelity", {}).items() if "error" not in fid]
    return [*lines, ""]


def _profile_markdown(profile: dict[str, Any]) -> list[str]:
    parts = [[r["name"], f"{r['ms']:.0f}", f"{r['percent']:.1f}"] for r in profile["parts"]]
    operators = [[o["name"], f"{o['self_ms']:.0f}", f"{o['percent']:.1f}"] for o in profile["operators"]]
    return [
        f"Profile, {profile['mode']}, {profile['path']} ({profile['total_ms']:.0f} ms):",
        "",
        format_table(["part", "ms", "%"], parts, markdown=True),
        "",
        format_table(["operator", "self ms", "%"], operators, markdown=True),
        "",
    ]


def _enlsa_growth(report: dict[str, Any], *, long: bool) -> str | None:
    # ENLSA's time at 64k tokens over 16 times its time at 4k: 1.00 where time grows linearly with the tokens.
    ratio = report.get("enlsa_64k_over_16x_4k")
    if ratio is None:
        return None
    if long:
        return f"ENLSA time at 64k tokens / (16 x time at 4k) = {ratio:.2f} (1.00: time linear in the tokens)."
    return f"ENLSA 64k / (16 x 4k) = {ratio:.2f} (1.00: time linear in the tokens)"


def report_markdown(report: dict[str, Any]) -> str:
    """A Markdown section for a report of :func:`~.suite.benchmark_model`, :func:`~.suite.benchmark_attention`
    (with its ``scsi`` from :func:`~.suite.benchmark_scsi_memory`) or both."""
    lines = []
    if "machine" in report:
        lines += [machine_markdown(report["machine"]), ""]
    if report.get("results"):
        lines += _model_markdown(report)
    for profile in report.get("profiles", []):
        if "error" not in profile:
            lines += _profile_markdown(profile)
    if report.get("points"):
        lines += [attention_table(report["points"], markdown=True), ""]
        growth = _enlsa_growth(report, long=True)
        if growth:
            lines += [growth, ""]
    if report.get("scsi"):
        lines += [scsi_table(report["scsi"]["points"], markdown=True), ""]
    return "\n".join(lines)


def model_summary(report: dict[str, Any]) -> str:
    """What ``perspective-unet benchmark`` prints for the network: machine, matmul rate, the comparison table and
    each path's output fidelity."""
    lines = [
        machine_markdown(report["machine"]),
        f"dense matmul rate: {report['matmul_gflops']:.0f} GFLOP/s",
        comparison_table(report),
    ]
    for name, fid in report["fidelity"].items():
        if "error" not in fid:
            lines.append(f"{name}: eval logits within {fid['relative']:.1e} of the largest logit of plain float32")
    return "\n".join(lines)


def attention_summary(report: dict[str, Any]) -> str:
    """What ``perspective-unet benchmark attention`` prints for the kernels: their table and ENLSA's growth."""
    growth = _enlsa_growth(report, long=False)
    return attention_table(report["points"]) + (f"\n{growth}" if growth else "")


def write_report(
    report: dict[str, Any], *, json_path: Path | None = None, markdown_path: Path | None = None
) -> list[Path]:
    """Write the full report as JSON and/or its tables as Markdown (:func:`report_markdown`), creating folders.

    Returns:
        The files written, JSON first.
    """
    written = []
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1))
        written.append(json_path)
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(report_markdown(report))
        written.append(markdown_path)
    return written
