"""``perspective-unet plan -d PREPARED``: print a dataset's fingerprint and plan, and rewrite the plan."""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING

from perspective_unet.cli.choices import DEFAULT_MAX_PATCH_PIXELS
from perspective_unet.config.checks import PROTOCOLS

if TYPE_CHECKING:
    from perspective_unet.fingerprint import Fingerprint
    from perspective_unet.plan import Plan

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show or change how models see a prepared dataset (protocol, spacing, patch size, ...)",
        description="Print what kind of folder the dataset is (circulating TransUNet-style files read as they are, "
        "or a folder written by `prepare`, with the intensity normalization its images carry), its fingerprint "
        "(cases, spacings, shapes, foreground intensities; circulating files have none) and its plan "
        "(plan.json beside the data): the protocol ('paper': every slice zoomed to one size; 'spacing': slices "
        "resampled to a fixed pixel spacing, random patches in training, a sliding window in inference), the "
        "in-plane spacing, the patch size, the intensity normalization, the batch size and the context slices (2.5D). "
        "With options, the plan is changed and written again: a new protocol, spacing or pixel budget derives the "
        "patch and batch sizes anew unless they are given too; --reset derives the whole plan from the fingerprint. "
        "plan.json may also be edited by hand; plan -d and training check it. A folder written by `prepare` whose "
        "plan.json was deleted is refused until --reset derives it again.",
    )
    parser.add_argument("-d", "--data", required=True, help="prepared dataset folder")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="paper or spacing")
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="training patch / inference window (spacing) or slice size (paper), multiples of 16",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=2,
        metavar=("ROW", "COLUMN"),
        help="in-plane pixel spacing in mm (spacing protocol; default: the training cases' median)",
    )
    parser.add_argument("--batch-size", type=int, help="patches or slices per optimizer step")
    parser.add_argument("--context-slices", type=int, help="slices above and below fed as extra channels (2.5D)")
    parser.add_argument(
        "--max-patch-pixels",
        type=int,
        default=None,
        help=f"largest patch a derived plan proposes, in pixels (default: {DEFAULT_MAX_PATCH_PIXELS})",
    )
    parser.add_argument("--reset", action="store_true", help="derive the plan anew from the fingerprint")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.data.layouts.detect import open_dataset
    from perspective_unet.errors import InputError
    from perspective_unet.outputs import write_json_atomic
    from perspective_unet.plan import MAX_PATCH_PIXELS, PLAN_FILE, check_patch_multiple, check_patch_size, derive_plan

    if args.patch_size is not None:
        try:
            check_patch_multiple(args.patch_size)
        except ValueError as exc:
            raise InputError(f"--patch-size: {exc}") from None
    layout = open_dataset(args.data)
    print(f"data: {layout.describe()}")
    fingerprint = layout.fingerprint()
    changes = {
        name: getattr(args, name)
        for name in ("protocol", "patch_size", "spacing", "batch_size", "context_slices", "max_patch_pixels")
    }
    if fingerprint is None:
        if args.reset or any(value is not None for value in changes.values()):
            raise InputError(
                f"{args.data} has no fingerprint.json (TransUNet-style files, or prepared by an "
                "older version): prepare the raw data with `perspective-unet prepare` to plan it."
            )
        print(f"\nno fingerprint; training uses this plan:\n{_describe_plan(layout.plan())}")
        return 0
    current = None if args.reset else layout.plan()
    if current is not None and all(value is None for value in changes.values()):
        print(_describe_fingerprint(fingerprint))
        print(f"\nplan ({args.data}/{PLAN_FILE}):\n{_describe_plan(current)}")
        return 0
    try:
        protocol = args.protocol or (current.protocol if current else "spacing")
        context = args.context_slices if args.context_slices is not None else (current.context_slices if current else 0)
        rederive = (
            current is None
            or protocol != current.protocol
            or args.spacing is not None
            or (args.max_patch_pixels is not None)
        )
        if rederive:
            plan = derive_plan(
                fingerprint,
                protocol,
                patch_size=args.patch_size,
                spacing=args.spacing,
                batch_size=args.batch_size,
                context_slices=context,
                max_patch_pixels=args.max_patch_pixels or MAX_PATCH_PIXELS,
            )
        else:
            assert current is not None
            plan = current.replace(context_slices=context)
            if args.patch_size is not None:
                check_patch_size(fingerprint, plan.spacing if plan.protocol == "spacing" else None, args.patch_size)
                plan = plan.replace(patch_size=tuple(args.patch_size))
            if args.batch_size is not None:
                plan = plan.replace(batch_size=args.batch_size)
    except ValueError as exc:
        raise InputError(f"{args.data}: {exc}") from None
    path = write_json_atomic(plan.to_dict(), f"{args.data}/{PLAN_FILE}")
    print(_describe_fingerprint(fingerprint))
    print(f"\nplan written to {path}:\n{_describe_plan(plan)}")
    return 0


def _describe_fingerprint(fingerprint: Fingerprint) -> str:
    cases = fingerprint.cases
    training = fingerprint.training_cases
    counts = {split: sum(c.split == split for c in cases) for split in ("train", "val", "test")}
    lines = [
        f"fingerprint: {fingerprint.modality}, {counts['train']} training / {counts['val']} validation / "
        f"{counts['test']} test cases"
    ]
    spaced = [c for c in training if c.spacing is not None]
    if spaced:
        for axis, name in ((1, "row"), (2, "column"), (0, "slice")):
            values = [c.spacing[axis] for c in spaced]
            lines.append(
                f"  {name + ' spacing':15} median {statistics.median(values):.4g} mm "
                f"(range {min(values):.4g} - {max(values):.4g})"
            )
    heights, widths = [c.shape[1] for c in training], [c.shape[2] for c in training]
    if training:
        lines.append(
            f"  slice shape     median {statistics.median(heights):g} x {statistics.median(widths):g} pixels, "
            f"{sum(c.shape[0] for c in training)} training slices"
        )
    raw = fingerprint.foreground_raw
    if raw is not None:
        lines.append(
            f"  foreground      raw intensities mean {raw.mean:.4g}, std {raw.std:.4g}, 0.5 / 99.5 "
            f"percentiles {raw.low:.4g} / {raw.high:.4g}"
        )
    return "\n".join(lines)


def _describe_plan(plan: Plan) -> str:
    lines = [f"protocol        {plan.protocol}"]
    if plan.protocol == "spacing":
        row, column = plan.spacing  # type: ignore[misc]
        lines.append(f"spacing         {row:.4g} x {column:.4g} mm (row x column)")
        lines.append(
            f"patch size      {plan.patch_size[0]} x {plan.patch_size[1]} (training patch, inference "
            f"window, overlap {plan.overlap:g})"
        )
        lines.append(f"foreground      {plan.foreground_fraction:.3g} of the patches centered on a labeled pixel")
    else:
        lines.append(f"slice size      {plan.patch_size[0]} x {plan.patch_size[1]} (every slice zoomed to it)")
    lines.append(f"batch size      {plan.batch_size}")
    lines.append(f"context slices  {plan.context_slices} above and below ({plan.in_channels} input channels)")
    lines.append(f"intensity       {plan.intensity.describe()}")
    for channel, spec in enumerate(plan.other_channels, start=1):
        lines.append(f"  channel {channel:<6d}{spec.describe()}")
    return "\n".join(lines)
