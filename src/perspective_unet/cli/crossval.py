"""``perspective-unet crossval RUN_DIR``: the folds' out-of-fold predictions gathered into one cross-validation
summary."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crossval",
        help="gather the folds' out-of-fold predictions into one cross-validation summary",
        description="Each fold run (train --fold K -o RUN_DIR) ends by predicting its held-out cases into "
        "RUN_DIR/fold_K/validation/. This pools every fold's per-case scores (both metric protocols) into "
        "RUN_DIR/crossval/summary.json, per_case.csv and summary.md: per case, per class, the mean and the "
        "foreground mean over all cases (with --report also report.html, a page to open in a browser). A fold without "
        "out-of-fold predictions is refused unless --allow-missing.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder of fold runs (fold_0, fold_1, ...)")
    parser.add_argument(
        "--allow-missing", action="store_true", help="summarize the finished folds when some are missing"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write RUN_DIR/crossval/report.html: tables, box plots and every case's out-of-fold prediction "
        "over its image (see `perspective-unet report`)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier cross-validation summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.crossval import crossval
    from perspective_unet.runs import RunFolder

    gathered, summary = crossval(args.run_dir, allow_missing=args.allow_missing, overwrite=args.overwrite)
    output = RunFolder(args.run_dir).crossval
    with open(output / "summary.md") as handle:
        print(handle.read())
    folds = ", ".join(fold.run.path.name for fold in gathered.folds)
    missing = f"; missing: {', '.join(gathered.missing)}" if gathered.missing else ""
    print(f"{summary['num_cases']} cases from {folds}{missing}; written to {output}")
    if args.report:
        from perspective_unet.engine.report import report_evaluation

        print(f"wrote {report_evaluation(output, overwrite=True)}")
    print(json.dumps({"cases": summary["num_cases"], "foreground_mean": summary["foreground_mean"]}))
    return 0
