"""The training recipe of a run's open fields: the paper's for the paper protocol, one derived from the plan and the
dataset's size for the spacing protocol (one's own data).

A :class:`~perspective_unet.config.TrainConfig` may leave ``model``, ``epochs``, ``iterations_per_epoch``,
``optimizer`` and ``base_lr`` open (None); :func:`resolve_recipe` fills them when the run starts, from the run's
:class:`~perspective_unet.plan.Plan`, its number of training slices and whether it runs on a GPU. The rule, and why
(docs/plans.md, "The training recipe"):

- paper protocol: the paper's Synapse recipe (the 112.7 M network, SGD at 0.05, 600 passes over the slices), which
  ``configs/synapse.yaml`` also holds;
- spacing protocol on a CPU: the demo's measured CPU recipe (``configs/demo.yaml``): ``perspective_unet_tiny``
  without SCSI attention dropout, AdamW at 2e-3, epochs of 50 iterations; as many steps as 40 passes over the training
  slices take (the demo's), at least 500 and at most 250 million patch pixels' worth (about 40 minutes on 2 cores);
- spacing protocol on a GPU: the paper's optimizer (SGD at 0.05, poly) and, from 1000 training slices on, its network
  (``perspective_unet_small`` below), epochs of 250 iterations (nnU-Net's); as many steps as 600 passes over the
  training slices take (the paper's Synapse schedule), bounded to 25 000-250 000 steps (nnU-Net: 1000 x 250).

The batch and patch size are the plan's in every case.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from perspective_unet.config import TrainConfig
from perspective_unet.plan import Plan

__all__ = ["LEARNING_RATES", "PAPER_RECIPE", "RECIPE_FIELDS", "Recipe", "derive_recipe", "resolve_recipe"]

# The fields a recipe fills when a config leaves them open.
RECIPE_FIELDS = ("model", "epochs", "iterations_per_epoch", "optimizer", "base_lr")
# The initial rate of each optimizer when none is given: the paper's for SGD, the demo's (measured on a CPU) for AdamW.
LEARNING_RATES = {"sgd": 0.05, "adamw": 2e-3}

# A CPU: the demo's preset and optimizer; its 40 passes over 93 slices of 112 x 128 at batch 4 (930 steps, 53 M patch
# pixels, about 8 minutes on 2 cores) are the measured point the budget is scaled from.
CPU_MODEL = "perspective_unet_tiny"
CPU_MODEL_OPTIONS: Mapping[str, Any] = {"scsi_dropout": 0.0}  # on a CPU it doubles the tiny model's step cost
CPU_PASSES = 40
CPU_ITERATIONS_PER_EPOCH = 50
CPU_MIN_STEPS = 500
CPU_MAX_PIXELS = 250e6
# A GPU: the paper's optimizer and network (the small variant for fewer slices than Synapse's 2211 or ACDC's ~1300),
# nnU-Net's 250-iteration epochs and its 250 000 steps at most.
GPU_LARGE_FROM_SLICES = 1000
GPU_PASSES = 600
GPU_ITERATIONS_PER_EPOCH = 250
GPU_STEPS = (25_000, 250_000)


@dataclass(frozen=True)
class Recipe:
    """What a run trains with when its config leaves it open.

    Attributes:
        model: Registered variant.
        optimizer: ``sgd`` or ``adamw``.
        base_lr: Initial learning rate of the poly schedule.
        epochs: Epochs of training.
        iterations_per_epoch: Optimizer steps per epoch; 0: one pass over the training slices.
        model_options: ``ModelConfig`` overrides that go with ``model`` (used only when the recipe's model is).
        origin: Where the recipe comes from, in words.
    """

    model: str
    optimizer: str
    base_lr: float
    epochs: int
    iterations_per_epoch: int
    model_options: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""

    def steps_per_epoch(self, training_slices: int, batch_size: int) -> int:
        """Optimizer steps of one epoch (one pass over the slices when ``iterations_per_epoch`` is 0)."""
        return self.iterations_per_epoch or max(1, training_slices // batch_size)


PAPER_RECIPE = Recipe(
    model="perspective_unet",
    optimizer="sgd",
    base_lr=LEARNING_RATES["sgd"],
    epochs=600,
    iterations_per_epoch=0,
    origin="the paper's recipe for the paper protocol",
)


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def derive_recipe(plan: Plan, training_slices: int, *, gpu: bool) -> Recipe:
    """The recipe for a dataset's plan and size (see the module docstring for the rule).

    Args:
        plan: The run's plan (its protocol, patch size and batch size).
        training_slices: Slices the run trains on (a fold's, when it trains one).
        gpu: Whether the run trains on a CUDA device; any other device gets the CPU recipe.
    """
    if plan.protocol == "paper":
        return PAPER_RECIPE
    slices = max(1, training_slices)
    patch_pixels = plan.patch_size[0] * plan.patch_size[1]
    where = f"from the plan and {slices} training slices of {plan.patch_size[0]} x {plan.patch_size[1]}"
    if gpu:
        steps = _clamp(GPU_PASSES * slices / plan.batch_size, GPU_STEPS)
        per_epoch = GPU_ITERATIONS_PER_EPOCH
        return Recipe(
            model="perspective_unet" if slices >= GPU_LARGE_FROM_SLICES else "perspective_unet_small",
            optimizer="sgd",
            base_lr=LEARNING_RATES["sgd"],
            epochs=max(1, round(steps / per_epoch)),
            iterations_per_epoch=per_epoch,
            origin=f"derived {where} for a GPU",
        )
    steps = max(CPU_PASSES * slices / plan.batch_size, CPU_MIN_STEPS)
    steps = min(steps, CPU_MAX_PIXELS / (plan.batch_size * patch_pixels))
    return Recipe(
        model=CPU_MODEL,
        optimizer="adamw",
        base_lr=LEARNING_RATES["adamw"],
        epochs=max(1, round(steps / CPU_ITERATIONS_PER_EPOCH)),
        iterations_per_epoch=CPU_ITERATIONS_PER_EPOCH,
        model_options=dict(CPU_MODEL_OPTIONS),
        origin=f"derived {where} for a CPU",
    )


def resolve_recipe(config: TrainConfig, plan: Plan, training_slices: int, *, gpu: bool) -> tuple[TrainConfig, str]:
    """``config`` with its open recipe fields filled, and one line that says what the run trains with.

    Fields given stay as they are; open ones take the recipe's (:func:`derive_recipe`), with two pairings: a given
    ``epochs`` keeps its meaning of passes over the slices unless ``iterations_per_epoch`` is given too, and an open
    ``base_lr`` takes the rate of the optimizer the run uses (:data:`LEARNING_RATES`). The recipe's model options
    apply with its model only, under the config's own.

    Args:
        config: The run's config, its plan fields (``protocol``, ``img_size``, ``batch_size``) already resolved.
        plan: The run's plan.
        training_slices: Slices the run trains on.
        gpu: Whether the run trains on a CUDA device.
    """
    recipe = derive_recipe(plan, training_slices, gpu=gpu)
    given = [name for name in RECIPE_FIELDS if getattr(config, name) is not None]
    changes: dict[str, Any] = {}
    if config.model is None:
        changes["model"] = recipe.model
        changes["model_options"] = {**recipe.model_options, **config.model_options}
    optimizer = config.optimizer or recipe.optimizer
    changes["optimizer"] = optimizer
    changes["base_lr"] = config.base_lr if config.base_lr is not None else LEARNING_RATES[optimizer]
    if config.epochs is not None:
        changes["iterations_per_epoch"] = config.iterations_per_epoch or 0
    elif config.iterations_per_epoch is not None:
        # The recipe's number of steps, in epochs of the given length.
        steps = recipe.epochs * recipe.steps_per_epoch(training_slices, plan.batch_size)
        per_epoch = config.iterations_per_epoch or max(1, training_slices // plan.batch_size)
        changes["epochs"] = max(1, math.ceil(steps / per_epoch))
    else:
        changes["epochs"], changes["iterations_per_epoch"] = recipe.epochs, recipe.iterations_per_epoch
    resolved = dataclasses.replace(config, **changes)
    return resolved, _describe(resolved, plan, recipe, given)


def _describe(config: TrainConfig, plan: Plan, recipe: Recipe, given: list[str]) -> str:
    options = ", ".join(f"{key} {value}" for key, value in config.model_options.items())
    per_epoch = config.iterations_per_epoch
    epochs = f"{config.epochs} epochs of " + (f"{per_epoch} iterations" if per_epoch else "one pass over the slices")
    batch = f"batches of {plan.batch_size} x {plan.patch_size[0]} x {plan.patch_size[1]}"
    words = f"{config.model}{f' ({options})' if options else ''}, {config.optimizer} at lr {config.base_lr:g}, "
    # A field given decides its partner too (epochs: the epoch's length; the optimizer: its rate).
    taken = [name for name in ("model", "optimizer", "epochs") if name not in given]
    if not taken:
        return f"training recipe: {words}{epochs}, {batch} (as given)"
    source = f"{', '.join(taken)}: {recipe.origin}" + (f"; given: {', '.join(given)}" if given else "")
    return f"training recipe: {words}{epochs}, {batch} ({source}; rule in docs/plans.md)"
