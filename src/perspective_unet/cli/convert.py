"""``perspective-unet convert-official``: a released checkpoint to this project's format."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-official",
        help="convert a checkpoint saved by the authors' released code",
        description="Load a .pth saved by the authors' released Perspective+ Unet code (weights_only) and write "
        "this project's checkpoint (weights plus model config), which `evaluate` and `predict` accept.",
    )
    parser.add_argument("source", help="released .pth file (e.g. epoch_599.pth)")
    parser.add_argument("destination", help="output .pt file")
    parser.add_argument("--num-classes", type=int, default=None, help="default: read from the head's weight")
    parser.add_argument(
        "--no-bipath", action="store_true", help="the checkpoint was trained without the dilated path (ablation)"
    )
    parser.add_argument("--no-enltb", action="store_true", help="the checkpoint was trained without ENLTB (ablation)")
    parser.add_argument("--no-scsi", action="store_true", help="the checkpoint was trained without SCSI (ablation)")
    parser.add_argument(
        "--scsi-attention",
        choices=("official", "released"),
        default="official",
        help="official: the release at batch size 1, per sample; released: attention "
        "across the batch, as the release trains",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.models.official import convert_official_checkpoint
    from perspective_unet.outputs import refuse_own_source

    refuse_own_source([args.destination], [args.source], "write the conversion to another file")
    if Path(args.destination).exists() and not args.overwrite:
        raise FileExistsError(f"{args.destination} exists; pass --overwrite to replace it.")
    path = convert_official_checkpoint(
        args.source,
        args.destination,
        num_classes=args.num_classes,
        use_bipath=not args.no_bipath,
        use_enltb=not args.no_enltb,
        use_scsi=not args.no_scsi,
        scsi_attention=args.scsi_attention,
    )
    print(f"wrote {path}")
    return 0
