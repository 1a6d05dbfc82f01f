"""Facts about the machine a benchmark runs on, the allocator settings it can run under, and its memory counters.

Memory on the CPU is resident memory: the current value from ``/proc/self/statm``, the peak from ``VmHWM`` (which
:func:`reset_cpu_peak` resets, so a measurement's peak is its own), falling back to ``ru_maxrss`` (the whole
process) where ``/proc`` is missing. On CUDA it is the caching allocator's allocated memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import dataclass

import torch

from perspective_unet.models.ops.config import get_onednn_linear
from perspective_unet.models.ops.precision import cpu_capabilities, inference_dtype

__all__ = [
    "ALLOCATOR_PROFILES",
    "MachineInfo",
    "RssSampler",
    "current_rss_mb",
    "machine_info",
    "memory_now",
    "memory_peak",
    "memory_start",
    "peak_rss_mb",
    "release_free_memory",
    "reset_cpu_peak",
    "synchronize",
    "tune_glibc_malloc",
]

# Allocator profiles of the optimized CPU path, set in its process's environment before Python starts.
# "reuse": glibc keeps every freed block for reuse (mmap and trim thresholds at their maximum), so large tensors are
#   not unmapped and faulted back in at every step: fastest, but the heap fragments and resident memory grows well
#   past what the live tensors use.
# "release": glibc maps every block of 128 KiB or more on its own and unmaps it when freed (a fixed threshold; by
#   default it rises to 32 MiB), and PyTorch aligns blocks of 2 MiB or more to 2 MiB and asks for transparent huge
#   pages, so each fresh mapping costs few page faults. Resident memory follows the live tensors; the kernel still
#   zeroes every fresh page, which costs time.
ALLOCATOR_PROFILES: dict[str, dict[str, str]] = {
    "reuse": {"MALLOC_MMAP_THRESHOLD_": str(2**31 - 1), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "release": {"MALLOC_MMAP_THRESHOLD_": "131072", "THP_MEM_ALLOC_ENABLE": "1"},
}


@dataclass
class MachineInfo:
    """Where a benchmark ran.

    Attributes:
        cpu_model: The processor's name as ``/proc/cpuinfo`` (or ``platform.processor``) gives it.
        cores: Logical CPUs the operating system reports.
        threads: Torch's intra-op threads at the time of the call.
        device: ``"cpu"`` or the CUDA device's name.
        date: Local time with its offset, ISO 8601, to the second.
        cpu_capabilities: The processor's instructions that decide the backend paths (``AVX2``, ``AVX-512``,
            ``AVX512-BF16``, ``AMX``, ``VNNI``), as :class:`~perspective_unet.models.ops.precision.CpuCapabilities`
            names them.
        torch_cpu_capability: What PyTorch's own CPU kernels were dispatched to (``AVX2``, ``AVX512``, ...).
        onednn_route: The oneDNN route's mode here (:func:`~perspective_unet.models.ops.get_onednn_linear`).
        inference_precision: What ``--precision auto`` runs inference in on the measured device (``bf16``/``fp32``).
    """

    cpu_model: str
    cores: int
    threads: int
    device: str
    torch_version: str
    python_version: str
    date: str
    platform: str
    cpu_capabilities: tuple[str, ...] = ()
    torch_cpu_capability: str = ""
    onednn_route: str = ""
    inference_precision: str = ""


def machine_info(device: torch.device | str = "cpu") -> MachineInfo:
    """Describe this machine: CPU model and capabilities, cores, torch threads, the accelerator's name, versions, the
    date, and what the capability-dependent defaults choose here.

    Args:
        device: The device the benchmark measures; a CUDA device is reported by name.
    """
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    caps = cpu_capabilities()
    return MachineInfo(
        cpu_model=caps.model_name,
        cores=os.cpu_count() or 0,
        threads=torch.get_num_threads(),
        device=name,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        platform=platform.platform(),
        cpu_capabilities=caps.names,
        torch_cpu_capability=caps.torch_capability,
        onednn_route=get_onednn_linear(),
        inference_precision="bf16" if inference_dtype("auto", device) is not None else "fp32",
    )


def tune_glibc_malloc(profile: str = "reuse") -> bool:
    """Apply the glibc part of an allocator profile to this process through ``mallopt``.

    ``"reuse"`` raises the mmap and trim thresholds to their maximum; ``"release"`` fixes the mmap threshold at
    128 KiB. Only allocations made afterwards are affected. The huge-page half of ``"release"``
    (``THP_MEM_ALLOC_ENABLE=1``) must be in the environment before Python starts, as must, ideally, the whole
    profile: :data:`ALLOCATOR_PROFILES` holds the environment variables.

    Args:
        profile: A key of :data:`ALLOCATOR_PROFILES`.

    Returns:
        Whether glibc accepted every setting (``False`` where there is no glibc).

    Raises:
        ValueError: For an unknown profile.
    """
    if profile not in ALLOCATOR_PROFILES:
        raise ValueError(f"profile must be one of {sorted(ALLOCATOR_PROFILES)}, got {profile!r}.")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold = -1, -3
    if profile == "release":
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))
    return bool(libc.mallopt(m_mmap_threshold, 2**31 - 1)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (its peak where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's resident high-water mark in MiB: since :func:`reset_cpu_peak` on Linux, since start elsewhere."""
    # VmHWM can be reset (see reset_cpu_peak); ru_maxrss, the fallback, covers the whole process.
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status", encoding="utf-8") as handle:
        return int(handle.read().split("VmHWM:")[1].split()[0]) / 2**10
    # Linux reports kilobytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_cpu_peak() -> None:
    """Reset the resident high-water mark to the current resident memory (Linux; elsewhere nothing happens)."""
    # Writing 5 to clear_refs resets this process's VmHWM to its current RSS.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")


class RssSampler:
    """Samples this process's resident memory on a thread while the ``with`` block runs.

    Args:
        interval_s: Seconds between samples; a rise shorter than that can be missed.

    Attributes:
        peak_mb: The largest sample, in MiB, including one taken on entry and one on exit.
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peak_mb = current_rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap memory back to the system, so a later rise shows as growth."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_start(device: torch.device) -> None:
    """Start a peak-memory window: reset CUDA's peak statistics or the CPU's resident high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_cpu_peak()


def memory_now(device: torch.device) -> float:
    """Memory in use now, in MiB: CUDA memory allocated, or resident memory on the CPU."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else current_rss_mb()


def memory_peak(device: torch.device) -> tuple[float, str]:
    """Peak memory since :func:`memory_start`, in MiB, and its kind: ``"cuda_max_allocated"`` or ``"cpu_rss"``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return peak_rss_mb(), "cpu_rss"
