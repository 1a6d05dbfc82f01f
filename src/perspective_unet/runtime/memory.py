"""Memory checks before allocating, without PyTorch: the host's available memory and the one refusal message.

The PyTorch side (:func:`perspective_unet.engine.runtime.require_memory`) asks a device for its free memory and
refuses through :func:`refuse_beyond`, so both paths say the same thing.
"""

from __future__ import annotations

from perspective_unet.errors import InputError

__all__ = ["host_available_memory", "refuse_beyond"]


def host_available_memory() -> int | None:
    """The system's available memory in bytes (``MemAvailable`` of ``/proc/meminfo``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def refuse_beyond(need: int, have: int | None, where: str, *, what: str, fix: str) -> None:
    """Raise ``InputError`` when ``need`` bytes exceed the ``have`` available on ``where`` (None: unknown, passes).

    Args:
        need: Bytes about to be allocated.
        have: Bytes available, or None.
        where: The device or host, named in the message.
        what: What needs them (e.g. "predict with 16 slices of 8192 x 8192").
        fix: What the user should do (e.g. "use a smaller --batch-size").
    """
    if have is None or need <= have:
        return
    raise InputError(
        f"{what} needs about {need / 2**30:.1f} GB of memory but {have / 2**30:.1f} GB are available "
        f"on {where}; {fix} (nothing was written)."
    )
