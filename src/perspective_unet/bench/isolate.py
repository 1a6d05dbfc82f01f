"""Running a measurement in its own Python process.

On the CPU a fresh process gives a measurement a peak resident memory of its own (Linux ``VmHWM`` is per process)
and keeps its allocator settings, which glibc reads from the environment at start-up, from leaking into another
path's. The parent sends ``{"function", "kwargs", "threads", "memory_limit_mb"}`` as JSON on the child's standard
input; the child prints its result as one tagged JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

from perspective_unet.bench.fidelity import output_fidelity
from perspective_unet.bench.kernels import measure_attention_point, measure_scsi_point
from perspective_unet.bench.machine import ALLOCATOR_PROFILES
from perspective_unet.bench.measure import measure_inference, measure_train_step, measure_volume
from perspective_unet.bench.profile import profile_path
from perspective_unet.bench.settings import PathSettings

__all__ = ["MEASUREMENTS", "measurement", "run_isolated", "run_measurement"]

# Every measurement a process may be asked to run, by name. The three benchmark modes (MODES) are keys here.
MEASUREMENTS: dict[str, Callable[..., Any]] = {
    "inference": measure_inference,
    "train": measure_train_step,
    "volume": measure_volume,
    "attention": measure_attention_point,
    "scsi": measure_scsi_point,
    "profile": profile_path,
    "fidelity": output_fidelity,
}
# Callers written against the single-module benchmark named the functions themselves.
_BY_FUNCTION_NAME = {function.__name__: name for name, function in MEASUREMENTS.items()}
_RESULT_TAG = "@@BENCHMARK-RESULT@@"
_CHILD_CODE = "from perspective_unet.bench.isolate import child_main; child_main()"


def measurement(name: str) -> tuple[str, Callable[..., Any]]:
    """Look a measurement up by its key in :data:`MEASUREMENTS` or by its function's name.

    Returns:
        The key and the function.

    Raises:
        ValueError: For any other name; the message lists the keys.
    """
    key = _BY_FUNCTION_NAME.get(name, name)
    if key not in MEASUREMENTS:
        raise ValueError(f"unknown measurement {name!r}; choose one of {sorted(MEASUREMENTS)}.")
    return key, MEASUREMENTS[key]


def _as_json_ready(result: Any) -> Any:
    if dataclasses.is_dataclass(result):
        return result.to_dict() if hasattr(result, "to_dict") else dataclasses.asdict(result)
    return result


def run_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    memory_limit_mb: float | None = None,
) -> dict[str, Any]:
    """Run one measurement in a fresh Python process with this process's torch thread count.

    Args:
        function: A key of :data:`MEASUREMENTS` or the measuring function's name.
        kwargs: The function's keyword arguments; JSON-ready (settings as dicts, sizes as lists).
        env: Variables added to this process's environment for the child (an allocator profile).
        timeout: Seconds before the child is killed.
        memory_limit_mb: Caps the child's address space (``RLIMIT_AS``), so a path that needs more memory than the
            machine can spare fails with an error instead of pushing the machine into swap or the OOM killer.

    Returns:
        The result in its JSON form; on failure (including a timeout or running out of memory) a dict with
        ``"error"`` and, where the child wrote any, ``"stderr_tail"``.

    Raises:
        ValueError: For an unknown measurement (before any process starts).
    """
    key, _ = measurement(function)
    payload = json.dumps(
        {"function": key, "kwargs": kwargs, "threads": torch.get_num_threads(), "memory_limit_mb": memory_limit_mb}
    )
    child_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE],
            input=payload,
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout)[-2000:]
    if "DefaultCPUAllocator: can't allocate memory" in tail or "MemoryError" in tail:
        return {"error": f"out of memory (address space capped at {memory_limit_mb} MB)", "stderr_tail": tail[-500:]}
    return {
        "error": f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else ""),
        "stderr_tail": tail,
    }


def child_main() -> None:
    """The child's side of :func:`run_isolated`: read the request from standard input, measure, print the result."""
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
    if request.get("memory_limit_mb"):
        limit = int(request["memory_limit_mb"] * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _, function = measurement(request["function"])
    result = _as_json_ready(function(**request["kwargs"]))
    sys.stdout.write(_RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_measurement(
    function: str,
    kwargs: dict[str, Any],
    settings: PathSettings,
    *,
    isolate: bool,
    device: torch.device,
    memory_limit_mb: float | None = None,
) -> dict[str, Any]:
    """Run a measurement for a path, in this process or (``isolate``) in its own, and return its JSON form.

    Args:
        function: A key of :data:`MEASUREMENTS` or the measuring function's name.
        settings: The path; its allocator profile goes into an isolated CPU measurement's environment.
        memory_limit_mb: Address-space cap of an isolated measurement (see :func:`run_isolated`).
    """
    if not isolate:
        _, fn = measurement(function)
        return _as_json_ready(fn(**kwargs))
    env = dict(ALLOCATOR_PROFILES[settings.allocator]) if settings.allocator and device.type == "cpu" else {}
    return run_isolated(function, kwargs, env=env, memory_limit_mb=memory_limit_mb)
