"""``perspective-unet find-best DIR_A DIR_B ...``: rank configurations and their ensembles on the out-of-fold
predictions, decide post-processing, and print the predict command to use."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "find-best",
        help="choose among configurations and their ensembles on the out-of-fold predictions; decide post-processing",
        description="Each DIR is a configuration: a folder of fold runs whose folds predicted their held-out cases. "
        "Every configuration and every pair of them (an ensemble averaging their saved probabilities) is scored on "
        "the out-of-fold predictions and ranked by the foreground mean Dice, with its spread over the folds and a "
        "paired Wilcoxon test (the best against the runner-up, the others against the best). Post-processing "
        "(keeping the largest connected component of the foreground, and of each class) is kept only where it "
        "raises the cross-validated Dice, as nnU-Net decides it. Writes postprocessing.json, find_best.json, "
        "find_best.md and inference_instructions.txt (the predict command) into the output folder.",
    )
    parser.add_argument("configurations", nargs="+", metavar="DIR", help="folders of fold runs, one per configuration")
    parser.add_argument("-o", "--output", required=True, help="folder for postprocessing.json and the ranking")
    parser.add_argument("--no-ensembles", action="store_true", help="rank the configurations only")
    parser.add_argument(
        "--data", help="prepared dataset holding the references (default: the one the fold runs recorded)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier choice in the output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.find_best import find_best, markdown

    choice = find_best(
        args.configurations, args.output, ensembles=not args.no_ensembles, data=args.data, overwrite=args.overwrite
    )
    print(markdown(choice))
    return 0
