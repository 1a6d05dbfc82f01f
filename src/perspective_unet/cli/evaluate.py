"""``perspective-unet evaluate``: per-class Dice and HD95 of a checkpoint on prepared test volumes."""

from __future__ import annotations

import argparse
import json

from perspective_unet.cli.choices import METRIC_PROTOCOL_CHOICES, RESAMPLER_CHOICES
from perspective_unet.cli.options import add_checkpoints, inference_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on prepared test volumes (legacy and corrected protocols)",
        description="Predict every volume of a split slice by slice as the checkpoint's plan says (paper or "
        "spacing protocol), bring the labels back to the volume's grid and score each foreground class: 'legacy' "
        "(the papers' rules, HD95 in voxels) and 'corrected' (HD95 in mm from the voxel spacing, undefined cases "
        "kept apart). Writes per_case.csv, "
        "summary.json and summary.md (with --report also report.html, a page to open in a browser).",
    )
    add_checkpoints(parser)
    parser.add_argument("--data", required=True, help="prepared dataset folder (or TransUNet-style Synapse/ACDC files)")
    parser.add_argument("-o", "--output", required=True, help="folder for the reports")
    parser.add_argument("--split", default="test", help="which volumes")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--tta", action="store_true", help="average over flips")
    parser.add_argument(
        "--resampler",
        choices=RESAMPLER_CHOICES,
        default="torch",
        help="torch: batched on the device; scipy: TransUNet's exact slice loop",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="slice size (paper protocol) or sliding window (spacing protocol); default: the plan's",
    )
    parser.add_argument("--protocol", choices=METRIC_PROTOCOL_CHOICES, action="append", help="default: both")
    parser.add_argument(
        "--save-predictions",
        action="store_true",
        help="keep each case's predicted labels as OUTPUT/predictions/<case>.nii.gz (the prepared volume's grid)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write OUTPUT/report.html (tables, box plots, slice overlays; see `perspective-unet report`); "
        "keeps the predictions for its overlays",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace reports the output folder already holds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.evaluate import evaluate
    from perspective_unet.metrics import PROTOCOLS

    summary = evaluate(
        args.checkpoint,
        args.data,
        args.output,
        inference_settings(args),
        split=args.split,
        protocols=args.protocol or PROTOCOLS,
        overwrite=args.overwrite,
        save_predictions=args.save_predictions,
        report=args.report,
    )
    with open(f"{args.output}/summary.md") as handle:
        print(handle.read())
    print(json.dumps({"mean_dice": summary["mean_dice"], "mean_hd95": summary["mean_hd95"]}))
    return 0
