"""``perspective-unet demo``: the whole pipeline on a real abdominal CT, on a CPU, in about 10 minutes."""

from __future__ import annotations

import argparse

from perspective_unet.cli.choices import MODEL_CHOICES
from perspective_unet.cli.options import seed_value
from perspective_unet.config.checks import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="prepare a real demo CT, train, evaluate and draw, in about 10 minutes on a CPU",
        description="Fetch the example abdominal CT shipped in TotalSegmentator's source distribution on PyPI "
        "(Apache-2.0; its labels are TotalSegmentator's model output, not manual annotation), prepare it with the "
        "Synapse class ids, train a CPU-sized Perspective+ Unet, evaluate it on held-out slices and print the "
        "per-organ table. Writes best.pt, summary.json and overlay.png into the output folder.",
    )
    parser.add_argument("-o", "--output", default="demo_out", help="output folder")
    parser.add_argument("--model", default="perspective_unet_tiny", choices=MODEL_CHOICES, help="model variant")
    parser.add_argument(
        "--protocol",
        choices=("spacing", "paper"),
        default=None,
        help="spacing (default: slices at the CT's 3 mm pixels, patches, sliding-window inference) or "
        "paper (every slice zoomed to one size)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 40)")
    parser.add_argument("--seed", type=seed_value, default=None, help="seed of the run (default: 1234)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run the demo N times (seeds SEED, SEED+1, ...) into OUTPUT/seed_<S> and print each "
        "organ's Dice as mean +- std over the runs",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="patch (spacing) or slice (paper) size; default: the plan's",
    )
    parser.add_argument("--context-slices", type=int, default=None, help="2.5D: neighboring slices on each side")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    parser.add_argument(
        "--domain-generalization",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="switch the appearance augmentation for unseen scanners, contrast phases and modalities on or off "
        "(augmentation.domain_generalization; default: the demo recipe's)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="of training and evaluation; auto: training in float32 on a CPU (as amp says on CUDA), evaluation in "
        "bfloat16 where the processor computes it natively (AMX or AVX-512 BF16), else float32",
    )
    parser.add_argument(
        "--time-limit-minutes",
        type=float,
        default=None,
        help="safety stop for training (default: 11); the summary says when it cut a run short",
    )
    parser.add_argument("--cache-dir", default=None, help="where the downloaded sdist is kept")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in OUTPUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.demo import (
        DemoSettings,
        format_organ_table,
        format_seed_table,
        run_demo,
        run_demo_seeds,
    )

    settings = DemoSettings(model=args.model, device=args.device, augment=args.augment, precision=args.precision)
    for name, value in (
        ("protocol", args.protocol),
        ("epochs", args.epochs),
        ("seed", args.seed),
        ("img_size", args.img_size),
        ("context_slices", args.context_slices),
        ("time_limit_minutes", args.time_limit_minutes),
    ):
        if value is not None:
            setattr(settings, name, tuple(value) if name == "img_size" else value)
    if args.domain_generalization is not None:
        settings.augmentation = {**settings.augmentation, "domain_generalization": args.domain_generalization}
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}.")
    if args.seeds > 1:
        record = run_demo_seeds(args.output, settings, args.seeds, cache_dir=args.cache_dir, overwrite=args.overwrite)
        print(format_seed_table(record))
        print(
            f"\nmean +- sample std over seeds {record['seeds']}; each run in {args.output}/seed_<S>/, the spread in "
            f"{args.output}/seeds.json"
        )
        return 0
    summary = run_demo(args.output, settings, cache_dir=args.cache_dir, overwrite=args.overwrite)
    print(format_organ_table(summary))
    ran = f"{summary['demo_epochs']} of {summary['demo_epochs_planned']} epochs"
    if summary["demo_cut_short"]:
        ran += f" (cut short by the {settings.time_limit_minutes:g}-minute time limit: not the seed's full run)"
    print(
        f"\nmean Dice over the 8 organs on the held-out slices: {summary['foreground_mean']['legacy_Dice']:.3f}; "
        f"{summary['demo_protocol']} protocol, seed {summary['demo_seed']}, {ran}, {summary['demo_minutes']:.1f} "
        f"min; files in {args.output}/: best.pt, summary.json, overlay.png"
    )
    return 0
