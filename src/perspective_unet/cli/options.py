"""Options several commands share, defined once so that their names, forms and help agree."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the settings' module imports torch, which --help must not wait for
    from perspective_unet.engine.inference_settings import InferenceSettings

__all__ = ["add_checkpoints", "add_intensity_override", "inference_settings"]


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
    """The :class:`~perspective_unet.engine.inference_settings.InferenceSettings` a command's options give: every
    option whose destination is a settings field (``--img-size`` gives ``patch_size``), the defaults for the rest."""
    from perspective_unet.engine.inference_settings import InferenceSettings

    given = {**vars(args), "patch_size": getattr(args, "img_size", None)}
    names = {item.name for item in dataclasses.fields(InferenceSettings)}
    return InferenceSettings(**{name: value for name, value in given.items() if name in names and value is not None})
