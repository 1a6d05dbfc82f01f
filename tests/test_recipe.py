"""The training recipe of a run's open fields: the paper's, or the rule of docs/plans.md for the spacing protocol."""

from __future__ import annotations

import pytest

from perspective_unet.config import TrainConfig
from perspective_unet.intensity import IntensitySpec
from perspective_unet.plan import Plan
from perspective_unet.recipe import PAPER_RECIPE, derive_recipe, resolve_recipe

CT = IntensitySpec("ct_window", window=(-125.0, 275.0), scaling="zscore", mean=0.5, std=0.2)


def spacing_plan(patch: tuple[int, int], batch: int) -> Plan:
    return Plan("spacing", patch, CT, spacing=(1.0, 1.0), batch_size=batch)


def test_the_paper_protocol_takes_the_papers_recipe():
    paper = Plan("paper", (224, 224), CT.replace(scaling="symmetric", mean=None, std=None), batch_size=12)
    assert derive_recipe(paper, 2211, gpu=False) == derive_recipe(paper, 10, gpu=True) == PAPER_RECIPE
    config, line = resolve_recipe(TrainConfig(), paper, 2211, gpu=False)
    recipe = (config.model, config.optimizer, config.base_lr, config.epochs, config.iterations_per_epoch)
    assert recipe == ("perspective_unet", "sgd", 0.05, 600, 0)
    assert config.model_options == {} and "the paper's recipe" in line


def test_a_cpu_gets_the_demos_recipe_for_the_demos_data():
    # The demo: 93 training slices, patches of 112 x 128 at batch 4; 40 passes of 23 steps were its measured run.
    recipe = derive_recipe(spacing_plan((112, 128), 4), 93, gpu=False)
    assert (recipe.model, recipe.optimizer, recipe.base_lr) == ("perspective_unet_tiny", "adamw", 2e-3)
    assert dict(recipe.model_options) == {"scsi_dropout": 0.0}
    assert (recipe.epochs, recipe.iterations_per_epoch) == (round(40 * 93 / 4 / 50), 50)


@pytest.mark.parametrize(
    ("slices", "patch", "batch", "steps"),
    [
        (12, (32, 32), 2, 500),  # the floor: a model needs some hundreds of steps
        (60, (32, 32), 3, 800),  # 40 passes
        (93, (112, 128), 4, 930),
        (5000, (256, 256), 9, 250e6 / (9 * 256 * 256)),  # the ceiling: 250 M patch pixels
    ],
)
def test_cpu_steps_follow_the_dataset_size_within_their_bounds(slices, patch, batch, steps):
    recipe = derive_recipe(spacing_plan(patch, batch), slices, gpu=False)
    assert recipe.epochs == max(1, round(steps / 50))


def test_a_gpu_gets_the_papers_optimizer_and_nnunets_epochs():
    synapse = derive_recipe(spacing_plan((224, 224), 12), 2211, gpu=True)
    assert (synapse.model, synapse.optimizer, synapse.base_lr) == ("perspective_unet", "sgd", 0.05)
    assert (synapse.epochs, synapse.iterations_per_epoch) == (round(600 * 2211 / 12 / 250), 250)
    small = derive_recipe(spacing_plan((224, 224), 12), 300, gpu=True)
    assert (small.model, small.epochs) == ("perspective_unet_small", 100)  # 25 000 steps at least
    huge = derive_recipe(spacing_plan((224, 224), 12), 100_000, gpu=True)
    assert huge.epochs == 1000  # nnU-Net's 1000 x 250 at most


def test_given_fields_stay_and_their_partners_follow_them():
    plan = spacing_plan((112, 128), 4)
    config, line = resolve_recipe(TrainConfig(epochs=7), plan, 93, gpu=False)
    assert (config.epochs, config.iterations_per_epoch, config.model) == (7, 0, "perspective_unet_tiny")
    assert "(model, optimizer: derived from the plan and 93 training slices" in line and "given: epochs" in line
    assert "7 epochs of one pass over the slices" in line
    config, _ = resolve_recipe(TrainConfig(iterations_per_epoch=10), plan, 93, gpu=False)
    assert config.epochs == 95  # the recipe's 19 x 50 steps, in epochs of 10
    config, _ = resolve_recipe(TrainConfig(optimizer="sgd"), plan, 93, gpu=False)
    assert (config.optimizer, config.base_lr) == ("sgd", 0.05)
    config, _ = resolve_recipe(TrainConfig(base_lr=1e-4, model="perspective_unet_small"), plan, 93, gpu=False)
    assert (config.optimizer, config.base_lr, config.model_options) == ("adamw", 1e-4, {})
    config, _ = resolve_recipe(TrainConfig(model_options={"scsi_dropout": 0.2}), plan, 93, gpu=False)
    assert config.model_options == {"scsi_dropout": 0.2}
    resolved, line = resolve_recipe(config, plan, 93, gpu=True)
    assert resolved == config and line.endswith("(as given)")  # nothing left open


def test_a_frozen_encoder_needs_a_source_and_epochs_after_it():
    with pytest.raises(ValueError, match="needs init_from"):
        TrainConfig(freeze_encoder_epochs=2)
    with pytest.raises(ValueError, match=r"freeze_encoder_epochs \(3\) must be below epochs \(3\)"):
        TrainConfig(init_from="runs/x", freeze_encoder_epochs=3, epochs=3)
    with pytest.raises(ValueError, match="iterations_per_epoch must be an integer >= 0"):
        TrainConfig(iterations_per_epoch=-1)
