"""The plan and fingerprint of a dataset folder: read them, fall back for folders without them, apply overrides.

Prepared folders hold ``plan.json`` and ``fingerprint.json`` (see :mod:`perspective_unet.plan`). Folders of the
circulating TransUNet-style files, and folders prepared before plans existed, hold neither: their plan is the
paper protocol at 224 x 224 with the intensity normalization their ``dataset.json`` (or layout) records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.fingerprint import FINGERPRINT_FILE, Fingerprint, read_fingerprint
from perspective_unet.intensity import ImageStats, IntensitySpec, recorded_intensity
from perspective_unet.plan import PLAN_FILE, PROTOCOLS, Plan, check_patch_size, derive_plan, read_plan

__all__ = [
    "case_statistics",
    "dataset_fingerprint",
    "dataset_intensity",
    "dataset_plan",
    "plan_for_training",
]

logger = logging.getLogger(__name__)


def dataset_intensity(info: dict[str, Any]) -> IntensitySpec | None:
    """The stored range a dataset description records (``paper``-style ``symmetric`` scaling), or None if unknown.

    Reads the machine-readable ``intensity`` entry; for older descriptions the CT window written in the
    ``normalization`` text, per-image percentiles for MR, and the type range for 2D pictures.

    Example:
        >>> dataset_intensity({"modality": "MR"}).kind
        'percentile_minmax'
    """
    # Descriptions written before the American spelling say "normalisation" (checkpoints keep them).
    normalization = info.get("normalization", info.get("normalisation"))
    return recorded_intensity(info.get("intensity"), normalization, info.get("modality"))


def dataset_fingerprint(root: str | os.PathLike[str]) -> Fingerprint | None:
    """``fingerprint.json`` of a dataset folder, or None when it has none."""
    path = Path(root) / FINGERPRINT_FILE
    return read_fingerprint(path) if path.is_file() else None


def dataset_plan(root: str | os.PathLike[str], info: dict[str, Any]) -> Plan:
    """``plan.json`` of a dataset folder, or the paper protocol's plan for folders without one.

    Raises:
        InputError: The plan file is invalid (named), or its stored range differs from the data's.
    """
    path = Path(root) / PLAN_FILE
    if path.is_file():
        plan = read_plan(path)
        recorded = dataset_intensity(info)
        if recorded is not None and _stage1(plan.intensity) != _stage1(recorded):
            raise InputError(
                f"{path}: intensity {plan.intensity.to_dict()} does not match the stored data's "
                f"{recorded.to_dict()} (kind, window and percentiles are fixed when the data are prepared; only "
                f"scaling, mean and std may be edited). Fix the file or run `perspective-unet plan -d {root} --reset`."
            )
        return plan
    intensity = dataset_intensity(info) or IntensitySpec("unit")
    return Plan("paper", (224, 224), intensity, batch_size=12)


def _stage1(spec: IntensitySpec) -> tuple[Any, ...]:
    return (spec.kind, spec.window, spec.percentiles if spec.kind == "percentile_minmax" else None)


def case_statistics(root: str | os.PathLike[str]) -> dict[str, ImageStats]:
    """Per-case mean and std of the stored images (from the fingerprint), for per-image z-scoring.

    Raises:
        InputError: The folder has no fingerprint.
    """
    fingerprint = dataset_fingerprint(root)
    if fingerprint is None:
        raise InputError(
            f"{root} has no {FINGERPRINT_FILE}: per-image z-scoring needs each case's statistics. "
            "Prepare the dataset again with `perspective-unet prepare`, or use 'symmetric' scaling."
        )
    return {c.case: ImageStats(c.stored.mean, c.stored.std) for c in fingerprint.cases}


def plan_for_training(
    root: str | os.PathLike[str],
    info: dict[str, Any],
    *,
    protocol: str | None = None,
    patch_size: Sequence[int] | None = None,
    batch_size: int | None = None,
    context_slices: int | None = None,
) -> Plan:
    """The dataset's plan with a run's overrides; another protocol than the file's is derived from the fingerprint.

    Raises:
        InputError: Another protocol is asked of a folder without a fingerprint, or the spacing protocol of files
            without spacing, or a patch larger than every slice.
    """
    plan = dataset_plan(root, info)
    try:
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        if protocol is not None and protocol != plan.protocol:
            fingerprint = dataset_fingerprint(root)
            if fingerprint is None:
                raise ValueError(
                    f"the {protocol} protocol needs the dataset's fingerprint, which {root} lacks (files "
                    "in the TransUNet-style layout carry no spacing); prepare the raw data with "
                    "`perspective-unet prepare`."
                )
            plan = derive_plan(
                fingerprint, protocol, patch_size=patch_size, batch_size=batch_size, context_slices=plan.context_slices
            )
        changes: dict[str, Any] = {}
        if patch_size is not None:
            changes["patch_size"] = tuple(int(s) for s in patch_size)
            _check_patch(root, plan, changes["patch_size"])
        if batch_size is not None:
            changes["batch_size"] = int(batch_size)
        if context_slices is not None:
            changes["context_slices"] = int(context_slices)
        return plan.replace(**changes) if changes else plan
    except ValueError as exc:
        raise InputError(f"{root}: {exc}") from None


def _check_patch(root: str | os.PathLike[str], plan: Plan, patch: tuple[int, int]) -> None:
    if plan.protocol != "spacing":
        return
    fingerprint = dataset_fingerprint(root)
    if fingerprint is not None:
        check_patch_size(fingerprint, plan.spacing, patch)
