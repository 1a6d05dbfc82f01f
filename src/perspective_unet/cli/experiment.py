"""``perspective-unet experiment``: run a grid of trainings (configurations x seeds x folds) and report on it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a grid of trainings (configurations x seeds x folds) and compare them with spread and tests",
        description="'run' trains and evaluates every run of an experiment file (see configs/experiments/), one "
        "after another or one per device; finished runs are skipped and interrupted ones resume, so the same command "
        "continues an experiment. 'report' gathers the runs' per-case scores into the paper's table with mean +- std "
        "over seeds, a bootstrap confidence interval over cases, paired Wilcoxon tests against the reference "
        "configuration (Holm-corrected) and per-class box plots, as Markdown, CSV and LaTeX.",
    )
    commands = parser.add_subparsers(dest="experiment_command", metavar="{run,report}")
    commands.required = True
    run_parser = commands.add_parser("run", help="train and evaluate every unfinished run of an experiment file")
    run_parser.add_argument("experiment", help="experiment YAML file")
    run_parser.add_argument("-o", "--output", required=True, help="experiment folder (runs, evaluations)")
    run_parser.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        help="one worker per device, e.g. cuda:0 cuda:1 (default: the runs one after another on "
        "each run's configured device)",
    )
    run_parser.set_defaults(func=run)
    report_parser = commands.add_parser("report", help="tables, tests and box plots of an experiment folder")
    report_parser.add_argument("folder", help="the experiment folder `experiment run` wrote")
    report_parser.add_argument("-o", "--output", help="report folder (default: FOLDER/report)")
    report_parser.add_argument("--overwrite", action="store_true", help="replace an earlier report")
    report_parser.set_defaults(func=report)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.experiment import run_experiment

    outcomes = run_experiment(args.experiment, args.output, devices=args.devices)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    print(
        f"{len(outcomes)} runs: {counts['done']} done now, {counts['skipped']} finished before, "
        f"{counts['failed']} failed"
    )
    for outcome in failed:
        print(f"  {outcome.label}: {outcome.message}")
    if failed:
        print("Fix the cause and run the same command again: finished runs are kept, interrupted ones resume.")
        return 1
    print(f"report: perspective-unet experiment report {args.output}")
    return 0


def report(args: argparse.Namespace) -> int:
    from perspective_unet.engine.experiment_report import report_experiment

    result = report_experiment(args.folder, args.output, overwrite=args.overwrite)
    folder = args.output or f"{args.folder}/report"
    with open(f"{folder}/report.md", encoding="utf-8") as handle:
        print(handle.read())
    if result.missing:
        print(f"{len(result.missing)} run(s) not evaluated yet were left out.")
    return 0
