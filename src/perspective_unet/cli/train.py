"""``perspective-unet train``: train a model with a YAML recipe, overridable from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from perspective_unet.cli.choices import MODEL_CHOICES
from perspective_unet.cli.options import seed_value
from perspective_unet.config import OPTIMIZERS, TrainConfig
from perspective_unet.config.checks import PRECISIONS, PROTOCOLS

# The recipe's defaults, shown in --help; an option left out takes the --config file's value, else this one.
_RECIPE_DEFAULTS = {item.name: item.default for item in dataclasses.fields(TrainConfig)}
# What an open recipe field (None) becomes: perspective_unet.recipe, docs/plans.md.
_FROM_RECIPE = {
    "model": "the recipe's: perspective_unet for the paper protocol; for the spacing protocol "
    "perspective_unet_tiny on a CPU, perspective_unet_small or perspective_unet on a GPU; with --init-from the "
    "source's",
    "epochs": "the recipe's: 600 for the paper protocol, derived from the plan and the number of training slices "
    "for the spacing protocol",
    "iterations_per_epoch": "the recipe's: one pass over the slices for the paper protocol or with --epochs, 50 on "
    "a CPU and 250 on a GPU for the spacing protocol",
    "optimizer": "the recipe's: sgd for the paper protocol and on a GPU, adamw on a CPU for the spacing protocol",
    "base_lr": "the optimizer's: 0.05 for sgd, 0.002 for adamw",
}


def _recipe(field: str, text: str) -> str:
    """``text`` ending with the default of the ``TrainConfig`` field an option sets."""
    value = _RECIPE_DEFAULTS[field]
    shown = _FROM_RECIPE[field] if value is None else ("on" if value else "off") if isinstance(value, bool) else value
    return f"{text} (default: {shown})"


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    from perspective_unet.errors import InputError
    from perspective_unet.outputs import parse_yaml

    key, value = text.split("=", 1)
    try:
        return key.strip(), parse_yaml(value, f"--model-option {key.strip()}", "give a YAML value, e.g. true or 0.1.")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fold(text: str) -> int | str:
    if text == "all" or (text.isdigit() and int(text) >= 0):
        return text if text == "all" else int(text)
    raise argparse.ArgumentTypeError(f"expected a fold number (0, 1, ...) or 'all', got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a prepared dataset",
        description="Train Perspective+ Unet on a prepared dataset, from random weights or from a trained model "
        "(--init-from). Without --config the recipe follows the data: the paper's Synapse recipe for the paper "
        "protocol, one derived from the plan and the number of training slices for the spacing protocol (one's own "
        "data; the rule is in docs/plans.md); it is printed at the start and written into config.json. Writes "
        "last.pt and best.pt (weights, optimizer, RNG states, config, plan), config.json, train_log.csv, "
        "training_log.txt (everything logged), progress.png (the curves, redrawn each epoch) and TensorBoard events "
        "into the output folder. Under torchrun it trains with DistributedDataParallel. An option left out takes "
        "the --config file's value, else the default shown (with --resume: the run's saved value).",
    )
    parser.add_argument(
        "--config",
        help="YAML recipe (configs/synapse.yaml: the paper's; configs/demo.yaml: the demo's CPU recipe; a run's "
        "config.json: its resolved recipe); default: the recipe for the data (see above)",
    )
    parser.add_argument("--data", help="prepared dataset folder (perspective-unet prepare ...)")
    parser.add_argument("-o", "--output", help=_recipe("output", "run folder"))
    parser.add_argument("--model", choices=MODEL_CHOICES, help=_recipe("model", "model variant"))
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="paper: every slice zoomed to --img-size; spacing: slices resampled to the plan's pixel "
        "spacing, random patches of --img-size (default: the dataset plan's, see `perspective-unet "
        "plan`)",
    )
    parser.add_argument("--epochs", type=int, help=_recipe("epochs", "epochs of training"))
    parser.add_argument(
        "--iterations-per-epoch",
        type=int,
        metavar="N",
        help=_recipe(
            "iterations_per_epoch",
            "optimizer steps per epoch, batches drawn at random (0: one pass over the training slices)",
        ),
    )
    parser.add_argument("--batch-size", type=int, help="slices or patches per optimizer step; default: the plan's")
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="slice size (paper) or patch size (spacing); default: the plan's",
    )
    parser.add_argument(
        "--context-slices",
        type=int,
        help="slices above and below fed as extra input channels (2.5D); default: the plan's",
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=_recipe("optimizer", "optimizer"))
    parser.add_argument("--lr", dest="base_lr", type=float, help=_recipe("base_lr", "initial learning rate"))
    parser.add_argument("--seed", type=seed_value, help=_recipe("seed", "seed of every random number generator"))
    parser.add_argument("--device", help=_recipe("device", "auto, cpu, cuda, cuda:N or mps"))
    parser.add_argument("--num-workers", type=int, help=_recipe("num_workers", "data loader worker processes"))
    parser.add_argument("--grad-accum-steps", type=int, help=_recipe("grad_accum_steps", "batches per optimizer step"))
    parser.add_argument("--val-every", type=int, help=_recipe("val_every", "validate every N epochs (0: never)"))
    parser.add_argument(
        "--fold",
        type=_fold,
        help="cross-validation fold K (0..N-1) or 'all': trains on the other folds' cases, selects "
        "best.pt on fold K's, ends by predicting fold K's cases into OUTPUT/fold_K/validation/, and writes the run "
        "to OUTPUT/fold_K; folds come from --splits, else the data folder's splits_final.json, else its "
        "splits.json (drawn from its train and val cases on first use, never from its test cases)",
    )
    parser.add_argument("--num-folds", type=int, help=_recipe("num_folds", "folds of splits.json"))
    parser.add_argument(
        "--splits",
        metavar="FILE",
        help="with --fold: a splits file of your own (nnU-Net's splits_final.json layout: a list of "
        '{"train": [...], "val": [...]}) instead of the data folder\'s splits_final.json or splits.json',
    )
    parser.add_argument("--max-iterations", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--time-limit-minutes", type=float, help="stop after the epoch that passes this budget")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help=_recipe("amp", "mixed precision on CUDA")
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=_recipe(
            "precision",
            "auto: as --amp says on CUDA, float32 on a CPU; bf16: bfloat16 autocast on any device (fast where the "
            "processor has AMX or AVX-512 BF16); fp32: no autocast",
        ),
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help=_recipe("compile", "torch.compile")
    )
    parser.add_argument(
        "--activation-memory-budget",
        type=float,
        metavar="FRACTION",
        help="with --compile: share (0, 1] of the activations kept for backward; the compiler recomputes the rest "
        "(0.4: about 0.6x the memory of the plain path, and faster)",
    )
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=_recipe("augment", "augmentation of the protocol (the paper's, or nnU-Net's for the spacing protocol)"),
    )
    parser.add_argument(
        "--model-option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. use_scsi=false or widths=[16,32,64,128,256] (repeatable)",
    )
    parser.add_argument(
        "--init-from",
        metavar="SOURCE",
        help="fine-tune: start from a trained model (a checkpoint, run folder, model folder or released checkpoint): "
        "weights loaded where names and shapes match, the first convolution adapted to other input channels, the "
        "head's rows kept for the classes of the same name and drawn anew for the others; the table of what was "
        "loaded, adapted and left new is printed and written to initialization.csv; the run builds the source's "
        "architecture and keeps its own data's plan",
    )
    parser.add_argument(
        "--freeze-encoder-epochs",
        type=int,
        metavar="N",
        help=_recipe(
            "freeze_encoder_epochs",
            "with --init-from: keep the encoder's weights as loaded for the first "
            "N epochs while the decoder and head adapt",
        ),
    )
    parser.add_argument(
        "--resume",
        metavar="LAST_PT",
        help="continue the run of this last.pt with its saved settings (a given setting must equal the "
        "saved one, except the data and output paths, device, workers, time limit and a higher "
        "--epochs, which continues a finished run)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run the output folder holds (its checkpoints, log and events)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from perspective_unet.engine.train import train
    from perspective_unet.engine.training import TrainingCheckpoint
    from perspective_unet.runs import RunFolder

    # Every option whose destination is a TrainConfig field overrides that field (None: not given).
    nested = ("model_options", "augmentation")
    fields = [item.name for item in dataclasses.fields(TrainConfig) if item.name not in nested]
    overrides = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    if args.model_option:
        overrides["model_options"] = dict(args.model_option)
    resume = None
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it; choose one.")
        given = _read_yaml(args.config) if args.config else {}
        given.update({k: v for k, v in overrides.items() if v is not None})
        resume = TrainingCheckpoint.read(args.resume)  # read once: its config, plan and state
        config = resume.config(given)
    elif args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    if not config.data:
        raise ValueError("no dataset given: pass --data or set `data:` in the --config file.")
    fold_run = RunFolder(config.output).fold(config.fold) if config.fold is not None else None
    if fold_run is not None and not args.resume and Path(config.output).name != fold_run.path.name:
        config = dataclasses.replace(config, output=str(fold_run.path))
    result = train(config, resume=resume, overwrite=args.overwrite)
    print(
        f"finished after {result.epochs_completed} epoch(s), {result.iterations} iterations; last checkpoint "
        f"{result.last_checkpoint}"
        + (f", best {result.best_checkpoint}" if result.best_checkpoint else "")
        + (f"; out-of-fold predictions in {result.validation}" if result.validation else "")
    )
    return 0


def _read_yaml(path: str) -> dict:
    """The fields a YAML config file sets (its mapping), for comparing with a resumed run's saved settings."""
    TrainConfig.from_yaml(path)  # the file's own checks and messages first
    return TrainConfig.read_fields(path)
