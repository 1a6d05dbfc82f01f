"""The ``perspective-unet`` command line. Each sub-command lives in its own module, parses, and calls the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from perspective_unet import __version__

__all__ = ["main", "build_parser"]

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
# parsed namespace and returning an exit status.
_COMMAND_MODULES = (
    "info",
    "prepare",
    "plan",
    "convert",
    "train",
    "evaluate",
    "demo",
    "predict",
    "visualize",
    "benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="perspective-unet",
        description="Perspective+ Unet for 2D medical image segmentation: prepare data, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
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
        status = args.func(args)
    # InputError is a ValueError; other ValueErrors come from argument checks (sizes, options) and read the same.
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"perspective-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"perspective-unet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
