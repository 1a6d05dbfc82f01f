"""Speed and memory of the network and its attention kernels: latency, throughput, achieved FLOP rate, peak memory.

Every network measurement compares *paths* of the same network with the same weights (:mod:`.settings`): the
plain float32 ``baseline`` against an ``optimized`` path that changes no eval-mode output beyond float rounding.
Achieved FLOP rates are set against this machine's dense float32 matrix-product rate, measured in the same run.

Modules: :mod:`.machine` (machine facts, allocator profiles, memory counters), :mod:`.timing` (timing a call),
:mod:`.settings` (the paths), :mod:`.measure` (inference, training step, whole volume; the shared set-up
:func:`prepare`), :mod:`.fidelity` (outputs against plain float32), :mod:`.kernels` (matmul rate, attention and
SCSI points), :mod:`.profile` (``torch.profiler`` per part), :mod:`.isolate` (a measurement in its own process,
:data:`MEASUREMENTS`), :mod:`.suite` (series of measurements as one report) and :mod:`.report` (tables, Markdown,
JSON).
"""

from __future__ import annotations

from perspective_unet.bench.fidelity import output_fidelity
from perspective_unet.bench.isolate import MEASUREMENTS, measurement, run_isolated, run_measurement
from perspective_unet.bench.kernels import (
    AttentionPoint,
    ScsiPoint,
    matmul_gflops,
    measure_attention_point,
    measure_scsi_point,
)
from perspective_unet.bench.machine import ALLOCATOR_PROFILES, MachineInfo, machine_info, tune_glibc_malloc
from perspective_unet.bench.measure import (
    MODES,
    BenchmarkResult,
    Prepared,
    measure_inference,
    measure_train_step,
    measure_volume,
    prepare,
    synthetic_ct_volume,
)
from perspective_unet.bench.profile import profile_parts, profile_path
from perspective_unet.bench.report import (
    attention_summary,
    attention_table,
    comparison_table,
    machine_markdown,
    model_summary,
    report_markdown,
    scsi_table,
    write_report,
)
from perspective_unet.bench.settings import (
    PATH_CHOICES,
    PathSettings,
    baseline_settings,
    optimized_settings,
    select_paths,
    train_settings,
)
from perspective_unet.bench.suite import benchmark_attention, benchmark_model, benchmark_scsi_memory
from perspective_unet.bench.timing import Timing, time_function

__all__ = [
    "ALLOCATOR_PROFILES",
    "MEASUREMENTS",
    "MODES",
    "PATH_CHOICES",
    "AttentionPoint",
    "BenchmarkResult",
    "MachineInfo",
    "PathSettings",
    "Prepared",
    "ScsiPoint",
    "Timing",
    "attention_summary",
    "attention_table",
    "baseline_settings",
    "benchmark_attention",
    "benchmark_model",
    "benchmark_scsi_memory",
    "comparison_table",
    "machine_info",
    "machine_markdown",
    "matmul_gflops",
    "measure_attention_point",
    "measure_inference",
    "measure_scsi_point",
    "measure_train_step",
    "measure_volume",
    "measurement",
    "model_summary",
    "optimized_settings",
    "output_fidelity",
    "prepare",
    "profile_parts",
    "profile_path",
    "report_markdown",
    "run_isolated",
    "run_measurement",
    "scsi_table",
    "select_paths",
    "synthetic_ct_volume",
    "time_function",
    "train_settings",
    "tune_glibc_malloc",
    "write_report",
]
