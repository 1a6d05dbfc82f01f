"""The ``perspective-unet`` command line. Each sub-command lives in its own module, parses, and calls the library.

Building the parser imports only the standard library and light project modules (config, errors, the parsers'
choices in :mod:`perspective_unet.cli.choices`): each command imports PyTorch, MONAI and the pipeline when it runs,
so ``--help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from perspective_unet.cli.options import CommandParser

__all__ = ["build_parser", "describe_os_error", "is_out_of_memory", "main", "sigterm_as_interrupt"]

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
# parsed namespace and returning an exit status.
_COMMAND_MODULES = (
    "info",
    "prepare",
    "plan",
    "convert",
    "train",
    "evaluate",
    "crossval",
    "find_best",
    "report",
    "experiment",
    "demo",
    "predict",
    "export",
    "visualize",
    "benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = CommandParser(
        prog="perspective-unet",
        description="Perspective+ Unet for 2D medical image segmentation: prepare data, train, evaluate, predict. "
        "The options -v/--verbose and --version may also follow a command.",
        top_level=True,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"perspective_unet.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        with sigterm_as_interrupt():
            status = args.func(args)
    # InputError is a ValueError; other ValueErrors come from argument checks (sizes, options) and read the same.
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        return _fail(args.command, str(exc))
    except OSError as exc:
        return _fail(args.command, describe_os_error(exc))
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        return _fail(
            args.command,
            "out of memory; use a smaller --img-size or --batch-size, or a machine with more "
            "memory (nothing was written).",
        )
    except KeyboardInterrupt:
        print(f"perspective-unet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an error is Python's ``MemoryError`` or PyTorch's ``OutOfMemoryError`` (a ``RuntimeError``).

    PyTorch is not imported for the check: an error PyTorch raised means it is loaded already.
    """
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def _fail(command: str, message: str) -> int:
    print(f"perspective-unet {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


_OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted; free space or write elsewhere",
    errno.EROFS: "the file system is read-only; write the output elsewhere",
    errno.EACCES: "permission denied; choose a folder you may write to, or fix its permissions",
    errno.EPERM: "permission denied; choose a folder you may write to, or fix its permissions",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: the file, what happened and what to do."""
    where = exc.filename or "a file"
    advice = _OS_ADVICE.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return f"{where}: {advice} (nothing half-written was left behind)."


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only; elsewhere a no-op).

    A terminated command (``kill``, a job scheduler's time limit, ``docker stop``) then unwinds like Ctrl-C: writers
    delete their temporary files and folders instead of dying with them in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        # None: a handler installed outside Python, which cannot be reinstalled from here; the default is closest.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
