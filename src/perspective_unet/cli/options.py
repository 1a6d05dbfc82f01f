"""Options several commands share, defined once so that their names, forms and help agree, and the parser class
every command's parser is built with."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from perspective_unet.version import __version__

if TYPE_CHECKING:  # the settings' module imports the plan and NumPy, which --help must not wait for
    from perspective_unet.runtime.inference_settings import InferenceSettings

__all__ = [
    "CommandParser",
    "DefaultsHelpFormatter",
    "add_checkpoints",
    "add_intensity_override",
    "inference_settings",
    "seed_value",
    "shown_default",
]


def shown_default(action: argparse.Action) -> str | None:
    """How ``--help`` shows an option's default, or None when there is none worth showing.

    None, an empty list and the booleans of flags (``--tta`` is off unless given) are not shown; a sequence is shown
    as it is typed (``224 224``).
    """
    default = action.default
    if default is None or default is argparse.SUPPRESS or isinstance(default, bool):
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(value) for value in default) or None
    return str(default)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with ``(default: ...)`` where :func:`shown_default` gives one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        shown = shown_default(action)
        if not text or shown is None or "%(default)" in text:
            return text
        # The help text is %-formatted next, so a literal percent sign in the default must be doubled.
        return f"{text} (default: {shown.replace('%', '%%')})"


class CommandParser(argparse.ArgumentParser):
    """The parser of the command line and of each (sub-)command: help that shows the defaults, and the global
    options (``-v/--verbose``, ``--version``) accepted before or after any sub-command.

    ``add_subparsers`` builds the sub-commands' parsers with this class too, so each level takes the global options.
    Below the top level they default to ``argparse.SUPPRESS``: a sub-command that was not given ``-v`` leaves the
    value set above it alone.
    """

    def __init__(self, *args: Any, top_level: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=False if top_level else argparse.SUPPRESS,
            help="log debug messages",
        )
        self.add_argument("--version", action="version", version=f"perspective-unet {__version__}")


def seed_value(text: str) -> int:
    """The ``type`` of a ``--seed`` option: an integer >= 0 (argparse then names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (seeds are not negative), got {value}")
    return value


def add_checkpoints(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, required: bool = True) -> None:
    """``--checkpoint C [C ...]``: one model, or an ensemble of several (``args.checkpoint`` is a list)."""
    parser.add_argument(
        "--checkpoint",
        required=required,
        nargs="+",
        metavar="CHECKPOINT",
        help="a .pt written by train or convert-official (or a released .pth), a model folder (export --format "
        "folder), an ONNX file, a run folder (its best.pt, else last.pt) or a folder of fold runs (fold_0, fold_1, "
        "...; fold_all when it holds nothing else); several: an ensemble that averages their probabilities (they "
        "must share classes and plan)",
    )


def add_intensity_override(parser: argparse.ArgumentParser, *, window_help: str, mr_help: str) -> None:
    """``--window LOW HIGH`` or ``--mr-normalize`` (alias ``--mr-normalise``): the input's intensity normalization
    instead of the checkpoint's (``args.window``, ``args.mr_normalize``)."""
    intensity = parser.add_mutually_exclusive_group()
    intensity.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), help=window_help)
    intensity.add_argument("--mr-normalize", "--mr-normalise", dest="mr_normalize", action="store_true", help=mr_help)


def inference_settings(args: argparse.Namespace) -> InferenceSettings:
    """The :class:`~perspective_unet.runtime.inference_settings.InferenceSettings` a command's options give: every
    option whose destination is a settings field (``--img-size`` gives ``patch_size``), the defaults for the rest."""
    from perspective_unet.runtime.inference_settings import InferenceSettings

    given = {**vars(args), "patch_size": getattr(args, "img_size", None)}
    names = {item.name for item in dataclasses.fields(InferenceSettings)}
    return InferenceSettings(**{name: value for name, value in given.items() if name in names and value is not None})
