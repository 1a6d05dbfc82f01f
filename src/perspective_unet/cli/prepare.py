"""``perspective-unet prepare {synapse,acdc,nnunet,demo}``: raw datasets to the prepared layout (see docs/data.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from perspective_unet.cli.choices import DEFAULT_ORIENTATION
from perspective_unet.cli.options import seed_value

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``prepare`` and its four sub-commands to the top-level parser."""
    parser = subparsers.add_parser(
        "prepare",
        help="convert a raw dataset to the prepared layout (train_npz/, test_vol_h5/, dataset.json)",
        description="Convert a raw dataset into the prepared layout. Output is written to a temporary folder and "
        "renamed at the end, so a failure never leaves half a dataset.",
    )
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True

    synapse = kinds.add_parser(
        "synapse",
        help="BTCV abdomen CT (img/img00XX.nii.gz, label/label00XX.nii.gz)",
        description="Synapse with TransUNet's 18/12 split, 8 organs and the HU window [-125, 275].",
    )
    _add_io(synapse, "folder holding img/ and label/")
    synapse.set_defaults(func=_run_synapse)

    acdc = kinds.add_parser(
        "acdc",
        help="ACDC cine MRI (patientXXX folders with Info.cfg)",
        description="ACDC with MT-UNet's 70/10/20 patient split; per-volume percentile normalization.",
    )
    _add_io(acdc, "folder holding the patientXXX folders")
    acdc.set_defaults(func=_run_acdc)

    nnunet = kinds.add_parser(
        "nnunet",
        help="any nnU-Net raw dataset, or a folder with images/ and masks/",
        description="A dataset in the nnU-Net v2 raw layout (dataset.json, imagesTr, "
        "labelsTr, optional imagesTs/labelsTs), or a plain folder of 2D images/ and masks/. Every case of imagesTr "
        "is a training case (cross-validation folds, `train --fold K`, hold cases out), as in nnU-Net; imagesTs with "
        "labelsTs is the test split.",
    )
    _add_io(nnunet, "nnU-Net raw dataset folder (DatasetXXX_Name)")
    nnunet.add_argument(
        "--ct-window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="HU window for CT (default: 0.5/99.5 percentiles of the training foreground)",
    )
    nnunet.add_argument(
        "--percentiles",
        nargs=2,
        type=float,
        default=(0.5, 99.5),
        metavar=("LOW", "HIGH"),
        help="percentiles of the CT rule and of per-volume MR normalization",
    )
    nnunet.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of imagesTr kept out of training as a val split (0: every case trains; cross-validation folds "
        "hold cases out instead)",
    )
    nnunet.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of imagesTr kept as a test split; ignored when imagesTs has labels in labelsTs (the test split)",
    )
    nnunet.add_argument("--seed", type=seed_value, default=1234, help="seed of the case split")
    nnunet.add_argument(
        "--orientation",
        default=DEFAULT_ORIENTATION,
        help="axis codes of the (Z, H, W) slices: 'SPL' (axial), or 'stored' to keep the acquisition's slice axis",
    )
    nnunet.add_argument(
        "--channel",
        type=int,
        metavar="K",
        help="use input channel K only (default: every channel of channel_names, each normalized by its own rule)",
    )
    nnunet.add_argument(
        "--protocol",
        choices=("spacing", "paper"),
        default="spacing",
        help="protocol of the plan written beside the data (see `perspective-unet plan`)",
    )
    nnunet.set_defaults(func=_run_nnunet)

    demo = kinds.add_parser(
        "demo",
        help="a real abdominal CT from the totalsegmentator 2.18.0 sdist on PyPI",
        description="Fetch (cached, SHA-256 checked) the example CT of the TotalSegmentator "
        "sdist (Apache-2.0). Its labels are TotalSegmentator model output, not manual "
        "annotation.",
    )
    demo.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    demo.add_argument(
        "--cache-dir", type=Path, help="download cache (default: $PERSPECTIVE_UNET_CACHE or ~/.cache/perspective-unet)"
    )
    demo.add_argument("--sdist", type=Path, help="use this local totalsegmentator-2.18.0.tar.gz instead of PyPI")
    demo.add_argument("--gap", type=int, default=2, help="slices dropped on each side of the test block")
    demo.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="HU window (default: the Synapse window -125 275)",
    )
    demo.add_argument(
        "--protocol",
        choices=("spacing", "paper"),
        default="spacing",
        help="protocol of the plan written beside the data",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    demo.set_defaults(func=_run_demo)


def _add_io(parser: argparse.ArgumentParser, input_help: str) -> None:
    parser.add_argument("-i", "--input", required=True, type=Path, help=input_help)
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _report(path: Path) -> int:
    print(f"Prepared dataset written to {path}")
    return 0


def _warn_without_foreground(out: Path, raw: Path) -> None:
    # Synapse and ACDC have fixed label files, so the converters do not track foreground themselves; the fingerprint
    # they wrote has no training foreground exactly when every training label is empty.
    from perspective_unet.data.layouts.raw import warn_if_all_background
    from perspective_unet.fingerprint import FINGERPRINT_FILE, read_fingerprint

    path = out / FINGERPRINT_FILE
    if path.is_file():
        warn_if_all_background(read_fingerprint(path).foreground_stored is not None, raw)


def _run_synapse(args: argparse.Namespace) -> int:
    from perspective_unet.data import prepare_synapse

    out = prepare_synapse(args.input, args.output, overwrite=args.overwrite)
    _warn_without_foreground(out, args.input)
    return _report(out)


def _run_acdc(args: argparse.Namespace) -> int:
    from perspective_unet.data import prepare_acdc

    out = prepare_acdc(args.input, args.output, overwrite=args.overwrite)
    _warn_without_foreground(out, args.input)
    return _report(out)


def _run_nnunet(args: argparse.Namespace) -> int:
    from perspective_unet.data import prepare_nnunet
    from perspective_unet.data.checks import check_ct_window, check_percentiles

    # Checked here too so that the message names the option the user typed.
    percentiles = check_percentiles(args.percentiles, "--percentiles")
    ct_window = check_ct_window(args.ct_window, "--ct-window") if args.ct_window else None
    return _report(
        prepare_nnunet(
            args.input,
            args.output,
            ct_window_hu=ct_window,
            percentiles=percentiles,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            orientation=args.orientation,
            channel=args.channel,
            overwrite=args.overwrite,
            protocol=args.protocol,
        )
    )


def _run_demo(args: argparse.Namespace) -> int:
    from perspective_unet.data import prepare_demo
    from perspective_unet.data.checks import check_ct_window
    from perspective_unet.intensity import SYNAPSE_HU_WINDOW

    window = check_ct_window(args.window, "--window") if args.window else SYNAPSE_HU_WINDOW
    return _report(
        prepare_demo(
            args.output,
            cache_dir=args.cache_dir,
            sdist=args.sdist,
            gap=args.gap,
            overwrite=args.overwrite,
            window=window,
            protocol=args.protocol,
        )
    )
