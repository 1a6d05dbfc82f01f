"""``perspective-unet demo``: the whole pipeline on a real abdominal CT, on a CPU, in about 15 minutes."""

from __future__ import annotations

import argparse

from perspective_unet.models.registry import list_models


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="prepare a real demo CT, train, evaluate and draw, in about 15 minutes on a CPU",
        description="Fetch the example abdominal CT shipped in TotalSegmentator's source distribution on PyPI "
        "(Apache-2.0; its labels are TotalSegmentator's model output, not manual annotation), prepare it with the "
        "Synapse class ids, train a CPU-sized Perspective+ Unet, evaluate it on held-out slices and print the "
        "per-organ table. Writes best.pt, summary.json and overlay.png into the output folder.",
    )
    parser.add_argument("-o", "--output", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--model", default="perspective_unet_tiny", choices=list_models())
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's setting)")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-limit-minutes", type=float, default=None, help="training budget")
    parser.add_argument("--cache-dir", default=None, help="where the downloaded sdist is kept")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.demo import DemoSettings, format_organ_table, run_demo

    settings = DemoSettings(model=args.model, device=args.device)
    for name, value in (("epochs", args.epochs), ("img_size", args.img_size),
                        ("time_limit_minutes", args.time_limit_minutes)):
        if value is not None:
            setattr(settings, name, tuple(value) if name == "img_size" else value)
    summary = run_demo(args.output, settings, cache_dir=args.cache_dir)
    print(format_organ_table(summary))
    print(f"\nmean Dice over the 8 organs on the held-out slices: {summary['mean_dice']:.3f} "
          f"({summary['demo_epochs']} epochs, {summary['demo_minutes']:.1f} min); files in {args.output}/: "
          "best.pt, summary.json, overlay.png")
    return 0
