"""``perspective-unet report``: an evaluation folder as one self-contained HTML page to open in a browser."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an evaluation folder's HTML report (tables, box plots, slice overlays)",
        description="Write one self-contained HTML file (no network, no server: styles, script and pictures inside) "
        "from an evaluation folder's summary.json: the summary table, per-class box plots of Dice and HD95, a "
        "sortable per-case table, and for each case its worst and best slice as image / reference / prediction "
        "overlays with a slider through its slices. Overlays need the predictions (evaluate --save-predictions, "
        "evaluate --pred/--ref, crossval) and, for references without their image, --images.",
    )
    parser.add_argument("evaluation", metavar="EVAL_DIR", help="an evaluation folder (with summary.json)")
    parser.add_argument("-o", "--output", help="the HTML file; default: EVAL_DIR/report.html")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="the cases' images (<case>_0000.nii.gz or <case>.nii.gz, ...) for references that do not hold them",
    )
    parser.add_argument("--max-cases", type=int, default=40, help="cases drawn, lowest mean Dice first")
    parser.add_argument(
        "--slider-cases", type=int, default=10, help="cases (lowest mean Dice first) with a slider through their slices"
    )
    parser.add_argument("--max-frames", type=int, default=24, help="slices a case's slider steps through at most")
    parser.add_argument("--panel-size", type=int, default=160, help="largest side of a slice panel, in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.report import report_evaluation

    for name, least in (("max_cases", 1), ("slider_cases", 0), ("max_frames", 1), ("panel_size", 16)):
        if getattr(args, name) < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}.")
    written = report_evaluation(
        args.evaluation,
        args.output,
        images=args.images,
        max_cases=args.max_cases,
        slider_cases=args.slider_cases,
        max_frames=args.max_frames,
        panel_px=args.panel_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0
