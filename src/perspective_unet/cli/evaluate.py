"""``perspective-unet evaluate``: score a checkpoint on prepared volumes, or a folder of label maps against references;
both write summary.json in nnU-Net's layout (see docs/metrics.md)."""

from __future__ import annotations

import argparse
import json

from perspective_unet.cli.choices import (
    DEFAULT_AFFINE_TOLERANCE_MM,
    DEFAULT_NSD_TOLERANCE_MM,
    METRIC_PROTOCOL_CHOICES,
    RESAMPLER_CHOICES,
)
from perspective_unet.cli.options import add_checkpoints, inference_settings
from perspective_unet.config.checks import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on prepared volumes, or a folder of predictions against references",
        description="Two modes, one report. --checkpoint: predict every volume of a split as the checkpoint's plan "
        "says and score it (--split val of a cross-validation fold run scores that fold's held-out cases). "
        "--pred/--ref: score any tool's label maps (NIfTI, .mha, .nrrd, PNG), paired by case name, against "
        "reference label maps on the same grid. Every foreground class gets nnU-Net's Dice, IoU and voxel counts, "
        "the corrected HD95 in mm and the normalized surface Dice, and the papers' Dice and HD95 in voxels. Writes "
        "summary.json (nnU-Net's layout), per_case.csv and summary.md (with --report also report.html, a page to open "
        "in a browser).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    add_checkpoints(source, required=False)
    source.add_argument("--pred", metavar="DIR", help="a folder of predicted label maps (any tool's)")
    parser.add_argument("--data", help="with --checkpoint: prepared dataset folder (or TransUNet-style files)")
    parser.add_argument("--ref", metavar="DIR", help="with --pred: the folder of reference label maps")
    parser.add_argument(
        "--labels",
        metavar="DATASET_JSON",
        help="with --pred: dataset.json naming the classes (nnU-Net's or a prepared one); default: classes up to "
        "the largest label found",
    )
    parser.add_argument("-o", "--output", required=True, help="folder for the reports")
    parser.add_argument("--split", default="test", help="with --checkpoint: which volumes")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bfloat16 where the processor computes it natively (AMX or AVX-512 BF16; a GPU with "
        "bfloat16), else float32; bf16 and fp32 force one (docs/performance.md gives the check of labels and Dice)",
    )
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
        "--nsd-tolerance",
        type=float,
        nargs="+",
        default=[DEFAULT_NSD_TOLERANCE_MM],
        metavar="MM",
        help="normalized surface Dice tolerance in mm: one for every class, or one per foreground class",
    )
    parser.add_argument(
        "--affine-tolerance",
        type=float,
        default=DEFAULT_AFFINE_TOLERANCE_MM,
        metavar="MM",
        help="with --pred: largest difference of a prediction's affine from its reference's",
    )
    parser.add_argument(
        "--save-predictions",
        action="store_true",
        help="with --checkpoint: keep each case's predicted labels as OUTPUT/predictions/<case>.nii.gz (the prepared "
        "volume's grid)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write OUTPUT/report.html (tables, box plots, slice overlays; see `perspective-unet report`); "
        "with --checkpoint it keeps the predictions for its overlays",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace reports the output folder already holds")
    parser.set_defaults(func=run)


def _check_mode(args: argparse.Namespace) -> None:
    if args.checkpoint:
        if not args.data:
            raise ValueError("--checkpoint needs --data, the prepared dataset to score it on.")
        stray = [name for name, value in (("--ref", args.ref), ("--labels", args.labels)) if value]
        if stray:
            raise ValueError(f"{', '.join(stray)} go with --pred; --checkpoint takes --data.")
    else:
        if not args.ref:
            raise ValueError("--pred needs --ref, the folder of reference label maps.")
        if args.data:
            raise ValueError("--data goes with --checkpoint; --pred takes --ref (and --labels).")


def run(args: argparse.Namespace) -> int:
    from perspective_unet.metrics import PROTOCOLS

    _check_mode(args)
    protocols = args.protocol or PROTOCOLS
    tolerance = args.nsd_tolerance
    if args.checkpoint:
        from perspective_unet.engine.evaluate import evaluate

        summary = evaluate(
            args.checkpoint,
            args.data,
            args.output,
            inference_settings(args),
            split=args.split,
            protocols=protocols,
            nsd_tolerance=tolerance,
            overwrite=args.overwrite,
            save_predictions=args.save_predictions,
            report=args.report,
        )
    else:
        from perspective_unet.engine.evaluate_folder import evaluate_folder

        summary = evaluate_folder(
            args.pred,
            args.ref,
            args.output,
            labels=args.labels,
            protocols=protocols,
            nsd_tolerance=tolerance,
            affine_tolerance=args.affine_tolerance,
            overwrite=args.overwrite,
        )
    with open(f"{args.output}/summary.md") as handle:
        print(handle.read())
    print(json.dumps({"cases": summary["num_cases"], "foreground_mean": summary["foreground_mean"]}))
    return 0
