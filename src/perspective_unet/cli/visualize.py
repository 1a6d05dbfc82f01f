"""``perspective-unet visualize``: the qualitative overlay figure and heat maps of intermediate features."""

from __future__ import annotations

import argparse
from pathlib import Path

from perspective_unet.cli.options import add_intensity_override, inference_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="draw overlay figures of labels/predictions, or heat maps of BPRB/ENLTB/SCSI features",
        description="Draw figures like the paper's: 'overlay' (rows = slices; columns = image, label overlay, "
        "prediction overlay; fixed organ colors and a legend) and 'features' (heat maps of the bi-path CNN stages, "
        "the ENLTB stages or the SCSI outputs over a slice).",
    )
    commands = parser.add_subparsers(dest="figure", metavar="FIGURE")
    commands.required = True

    overlay = commands.add_parser(
        "overlay",
        help="image, label and prediction overlays of a few slices",
        description="Inputs may be NIfTI/DICOM/PNG files (brought to the canonical orientation) or a prepared "
        "test_vol_h5/*.npy.h5 volume (its label is used unless --label is given). Without --slices the slices with "
        "the most foreground are shown.",
    )
    overlay.add_argument("--image", required=True, help="image file, DICOM folder or prepared .npy.h5 volume")
    overlay.add_argument("--label", help="ground-truth label map on the image's grid")
    source = overlay.add_mutually_exclusive_group()
    source.add_argument("--prediction", help="predicted label map on the image's grid")
    source.add_argument("--checkpoint", help="predict the shown slices with this checkpoint")
    which = overlay.add_mutually_exclusive_group()
    which.add_argument("--slices", type=int, nargs="+", metavar="K", help="slice indices (canonical Z) to show")
    which.add_argument(
        "--num-slices", type=int, default=3, metavar="N", help="show the N slices with the most foreground"
    )
    overlay.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="names by class id, background first (default: the checkpoint's or the dataset's)",
    )
    overlay.add_argument("--tta", action="store_true", help="flip test-time augmentation for --checkpoint")
    _common(overlay)
    overlay.set_defaults(func=run_overlay)

    features = commands.add_parser(
        "features",
        help="heat maps of an intermediate layer over one slice",
        description="Run one slice through the model with forward hooks and draw the channel-reduced activation "
        "of each stage (bprb: the bi-path CNN stages; enltb: the non-local transformer stages; scsi: the "
        "cross-scale integrator's outputs), upsampled to the image and each scaled to its own range.",
    )
    features.add_argument("--checkpoint", required=True, help="a .pt written by train or convert-official")
    features.add_argument("--image", required=True, help="image file, DICOM folder or prepared .npy.h5 volume")
    features.add_argument(
        "--slice",
        type=int,
        dest="slice_index",
        metavar="K",
        help="slice index (canonical Z); default: the middle slice",
    )
    features.add_argument(
        "--layer",
        choices=("bprb", "enltb", "scsi"),
        default="bprb",
        help="bprb: the bi-path CNN stages; enltb: the non-local transformer stages; scsi: the integrator's outputs",
    )
    features.add_argument(
        "--reduction",
        choices=("mean_abs", "l2"),
        default="mean_abs",
        help="channel reduction: mean of absolute values or L2 norm",
    )
    features.add_argument("--cmap", default="jet", help="matplotlib colormap")
    _common(features)
    features.set_defaults(func=run_features)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="the figure (.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    add_intensity_override(
        parser,
        window_help="CT window in HU (default: the checkpoint's normalization)",
        mr_help="per-volume percentile normalization (MR)",
    )
    parser.add_argument(
        "--orientation", help="canonical orientation code of image files (default: the checkpoint's, else SPL)"
    )
    parser.add_argument("--panel-size", type=int, default=256, help="panel height in pixels")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def _check_output(args: argparse.Namespace) -> None:
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it.")
    if args.panel_size < 16:
        raise ValueError(f"--panel-size must be at least 16 pixels, got {args.panel_size}.")


def run_overlay(args: argparse.Namespace) -> int:
    from perspective_unet.engine.figures import overlay_from_files

    _check_output(args)
    if args.slices is None and args.num_slices < 1:
        raise ValueError(f"--num-slices must be positive, got {args.num_slices}.")
    path = overlay_from_files(
        args.image,
        args.output,
        label=args.label,
        prediction=args.prediction,
        checkpoint=args.checkpoint,
        settings=inference_settings(args),
        slices=args.slices,
        num_slices=args.num_slices,
        class_names=args.class_names,
        panel_size=args.panel_size,
    )
    print(f"wrote {path}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from perspective_unet.engine.figures import feature_figure_from_files

    _check_output(args)
    path = feature_figure_from_files(
        args.checkpoint,
        args.image,
        args.output,
        inference_settings(args),
        layer=args.layer,
        slice_index=args.slice_index,
        reduction=args.reduction,
        cmap=args.cmap,
        panel_size=args.panel_size,
    )
    print(f"wrote {path}")
    return 0
