"""The data of a training run: its training slices or patches, the sampler and loader over them, and the volumes
checkpoints are selected on (a fold's held-out cases or the dataset's val split; never a test case)."""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler

from perspective_unet.config import TrainConfig
from perspective_unet.config.augmentation import SpacingAugmentationConfig
from perspective_unet.data import AugmentationConfig, SliceDataset, VolumeDataset, seed_worker
from perspective_unet.data.folds import Fold
from perspective_unet.data.layouts.base import DatasetLayout
from perspective_unet.data.patches import PatchDataset
from perspective_unet.engine.runtime import DistributedContext, require_memory
from perspective_unet.errors import InputError
from perspective_unet.intensity import foreground_mask
from perspective_unet.plan import Plan, largest_slice_at

__all__ = ["check_resampled_slices", "foreground_weights", "make_loader", "training_set", "validation_set"]

log = logging.getLogger("perspective_unet.engine.training")


def training_set(
    config: TrainConfig, plan: Plan, fold: Fold | None, layout: DatasetLayout
) -> SliceDataset | PatchDataset:
    """The training slices (paper protocol) or patches (spacing protocol) of the split or fold of the run's data
    (``layout``), augmented as the config says."""
    cases = list(fold.train) if fold is not None else None
    try:
        if plan.protocol == "paper":
            paper = AugmentationConfig.from_dict(config.augmentation) if config.augment else None
            return SliceDataset(
                layout,
                split="train",
                img_size=plan.patch_size,
                augmentation=paper,
                seed=config.seed,
                context_slices=plan.context_slices,
                intensity=plan.intensity,
                other_channels=plan.other_channels,
                cases=cases,
            )
        spacing = SpacingAugmentationConfig.from_dict(config.augmentation) if config.augment else None
    except ValueError as exc:
        raise InputError(f"training config, augmentation: {exc}") from None
    return PatchDataset(layout, plan, spacing, seed=config.seed, cases=cases)


def check_resampled_slices(
    layout: DatasetLayout, plan: Plan, num_workers: int, plan_source: str | os.PathLike[str]
) -> None:
    """Raise ``InputError`` before training when the largest training slice, resampled to a spacing-protocol plan's
    spacing, cannot be held in memory by every data loader process at once (a mistyped or hostile ``plan.json``).

    Args:
        layout: The run's data (its fingerprint gives the slices' shapes and spacings).
        plan: The run's plan; other protocols than ``spacing`` and folders without a fingerprint pass.
        num_workers: Data loader worker processes, each resampling one slice at a time.
        plan_source: Where the plan came from, named in the message.
    """
    fingerprint = layout.fingerprint()
    if plan.protocol != "spacing" or fingerprint is None or not fingerprint.training_cases:
        return
    height, width = (round(side) for side in largest_slice_at(fingerprint, plan.spacing))
    # Per pixel: the resampled image's channels (float32), its label (float32 while resampled and drawn from, uint8
    # kept) and the foreground mask a patch center is drawn from.
    need = max(1, num_workers) * height * width * (4 * plan.in_channels + 10)
    require_memory(
        need,
        torch.device("cpu"),
        what=f"resampling the training slices to the spacing of {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm "  # type: ignore[index]
        f"in {plan_source} (the largest becomes {height} x {width} pixels)",
        fix=f"check the spacing in {plan_source}, or derive the plan again with `perspective-unet plan -d "
        f"{layout.root} --reset`",
    )


def foreground_weights(
    dataset: SliceDataset | PatchDataset, weight: float, ignore_label: int | None = None
) -> torch.Tensor | None:
    """Sampling weight per slice: ``weight`` for slices holding any foreground (voxels of ``ignore_label``, without
    annotation, are none), 1 otherwise (None when uniform)."""
    if weight == 1.0:
        return None
    has_foreground = [bool(foreground_mask(dataset.load_slice(i)[1], ignore_label).any()) for i in range(len(dataset))]
    return torch.tensor([weight if f else 1.0 for f in has_foreground], dtype=torch.float64)


def make_loader(
    dataset: SliceDataset | PatchDataset,
    config: TrainConfig,
    ctx: DistributedContext,
    epoch: int,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """The batches of one epoch: a pass over the training slices (shared out among the processes), or with
    ``config.iterations_per_epoch`` that many optimizer steps' batches drawn at random (per process)."""
    # A generator seeded per epoch (and process) fixes both the order and the workers' seeds, so a resumed run sees
    # the same batches as an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed + 7919 * epoch + ctx.rank)
    drawn = (
        config.iterations_per_epoch * config.grad_accum_steps * config.batch_size if config.iterations_per_epoch else 0
    )
    if weights is not None:
        count = drawn or len(dataset) // ctx.world_size
        sampler = WeightedRandomSampler(weights, count, replacement=True, generator=generator)
    elif drawn:
        # Each process draws its own batches (its generator is seeded with its rank).
        sampler = RandomSampler(dataset, num_samples=drawn, generator=generator)
    elif ctx.enabled:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        drop_last=config.drop_last_batch and len(dataset) >= config.batch_size * ctx.world_size,
        persistent_workers=False,
    )


def validation_set(
    config: TrainConfig, ctx: DistributedContext, fold: Fold | None, layout: DatasetLayout
) -> VolumeDataset | None:
    """The volumes of the run's data (``layout``) checkpoints are selected on: the fold's held-out cases, or the
    dataset's val split; never a test case."""
    if config.val_every == 0:
        return None
    if fold is not None:
        val_set = VolumeDataset(layout, cases=list(fold.val)) if fold.val else None
        what = f"{fold.name} has no held-out cases"
    else:
        try:
            val_set = VolumeDataset(layout, split=config.val_split)
        except (FileNotFoundError, InputError):
            val_set = None
        what = f"no {config.val_split!r} volumes in {config.data}"
    if val_set is not None and len(val_set) == 0:
        val_set = None
    if val_set is None and ctx.is_main:
        log.info(
            "%s: training on every training case without validation (best.pt is not written; last.pt is the model)%s",
            what,
            "" if fold is not None else "; --fold K holds a fold's cases out for cross-validation",
        )
    return val_set
