"""``perspective-unet experiment``: run a grid of trainings (configurations x seeds x folds) on this machine, a SLURM
cluster or a Ray cluster, follow it, and report on it."""

from __future__ import annotations

import argparse
import dataclasses

from perspective_unet.config.experiment import EXECUTORS, SLURM_CLUSTERS, ExecutorSettings

# Command-line option -> field of the experiment file's ``executor:`` block.
_EXECUTOR_OPTIONS = {
    "executor": "name",
    "partition": "partition",
    "gpus_per_run": "gpus_per_run",
    "cpus_per_run": "cpus_per_run",
    "time_limit": "time_limit_minutes",
    "array_parallelism": "array_parallelism",
    "slurm_cluster": "slurm_cluster",
    "address": "address",
}
_DEFAULTS = {item.name: item.default for item in dataclasses.fields(ExecutorSettings)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a grid of trainings (configurations x seeds x folds) and compare them with spread and tests",
        description="'run' trains and evaluates every run of an experiment file (see configs/experiments/): on this "
        "machine, one after another or one per device, as SLURM jobs (submitit) or as Ray tasks; finished runs are "
        "skipped and interrupted ones resume, so the same command continues an experiment. 'status' lists where each "
        "run stands. 'report' gathers the runs' per-case scores into the paper's table with mean +- std over seeds, a "
        "bootstrap confidence interval over cases, paired Wilcoxon tests against the reference configuration "
        "(Holm-corrected) and per-class box plots, as Markdown, CSV and LaTeX.",
    )
    commands = parser.add_subparsers(dest="experiment_command", metavar="{run,status,report}")
    commands.required = True
    _register_run(commands)
    status_parser = commands.add_parser(
        "status",
        help="where each run of an experiment folder stands",
        description="Each run as waiting, running (its job, host, process and epoch), finished (its mean Dice), "
        "interrupted or failed (the error's line), read from the run folders, whatever the executor.",
    )
    status_parser.add_argument("folder", help="the experiment folder `experiment run` writes")
    status_parser.set_defaults(func=status)
    report_parser = commands.add_parser("report", help="tables, tests and box plots of an experiment folder")
    report_parser.add_argument("folder", help="the experiment folder `experiment run` wrote")
    report_parser.add_argument("-o", "--output", help="report folder (default: FOLDER/report)")
    report_parser.add_argument("--overwrite", action="store_true", help="replace an earlier report")
    report_parser.add_argument(
        "--report",
        action="store_true",
        help="also write report.html: the tables, box plots and per-unit scores as one self-contained page",
    )
    report_parser.set_defaults(func=report)


def _register_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "run",
        help="train and evaluate every unfinished run of an experiment file",
        description="Every run is checked first: a run folder trained with other settings, or without its run.json, "
        "is refused and nothing runs. Options below override the experiment file's executor block.",
    )
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("-o", "--output", required=True, help="experiment folder (runs, evaluations)")
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where the runs run: local (this machine), slurm (a job per run, through submitit) or ray (a task per "
        "run); default: the file's executor block, else local",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        help="local executor: one worker per device, e.g. cuda:0 cuda:1 (default: the runs one after another on "
        "each run's configured device)",
    )
    cluster = parser.add_argument_group("slurm and ray (default: the file's executor block, else the value shown)")
    cluster.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="N",
        help=f"GPUs each run's job or task asks for ({_DEFAULTS['gpus_per_run']})",
    )
    cluster.add_argument(
        "--cpus-per-run",
        type=int,
        metavar="N",
        help=f"CPU cores each run's job or task asks for ({_DEFAULTS['cpus_per_run']})",
    )
    cluster.add_argument("--partition", help="SLURM partition (the cluster's default)")
    cluster.add_argument(
        "--time-limit",
        type=int,
        metavar="MINUTES",
        help="SLURM time limit of each job; a job that reaches it is requeued and resumes "
        f"({_DEFAULTS['time_limit_minutes']})",
    )
    cluster.add_argument(
        "--array-parallelism", type=int, metavar="N", help="SLURM: how many of the runs' jobs run at once"
    )
    cluster.add_argument(
        "--slurm-cluster",
        choices=SLURM_CLUSTERS,
        help="slurm: submit with sbatch; local: run the same jobs through submitit on this machine, to try a setup "
        f"without a cluster ({_DEFAULTS['slurm_cluster']})",
    )
    cluster.add_argument(
        "--address", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: a local Ray instance)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.config.experiment import ExperimentConfig
    from perspective_unet.engine.experiment import run_experiment

    experiment = ExperimentConfig.from_yaml(args.experiment)
    given = {field: getattr(args, option) for option, field in _EXECUTOR_OPTIONS.items()}
    try:
        settings = dataclasses.replace(experiment.executor, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise ValueError(f"{exc} (from the command line's options over {args.experiment}'s executor block)") from None
    outcomes = run_experiment(experiment, args.output, devices=args.devices, executor=settings)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    print(
        f"{len(outcomes)} runs: {counts['done']} done now, {counts['skipped']} finished before, "
        f"{counts['failed']} failed"
    )
    for outcome in outcomes:
        if outcome.message:
            print(f"  {outcome.label}: {outcome.message}")
    if failed:
        print("Fix the cause and run the same command again: finished runs are kept, interrupted ones resume.")
        return 1
    print(f"report: perspective-unet experiment report {args.output}")
    return 0


def status(args: argparse.Namespace) -> int:
    from perspective_unet.engine.experiment_status import experiment_status, format_status

    print(format_status(args.folder, experiment_status(args.folder)))
    return 0


def report(args: argparse.Namespace) -> int:
    from perspective_unet.engine.experiment_report import report_experiment

    result = report_experiment(args.folder, args.output, overwrite=args.overwrite, html=args.report)
    folder = args.output or f"{args.folder}/report"
    with open(f"{folder}/report.md", encoding="utf-8") as handle:
        print(handle.read())
    if result.left_out:
        print(f"{len(result.left_out)} run(s) left out, without a complete evaluation with the experiment's settings:")
        for label, why in result.left_out.items():
            print(f"  {label}: {why}")
    return 0
