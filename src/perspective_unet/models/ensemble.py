"""Ensembles: several checkpoints predicting as one model, by the mean of their class probabilities.

:class:`ProbabilityEnsemble` returns the logarithm of the members' mean softmax, so anything that takes a softmax of
a model's output (prediction, evaluation, test-time mirroring) gets the mean probabilities exactly. Checkpoints join
an ensemble only when they predict the same classes with the same plan (protocol, spacing, patch size, intensity,
context slices): their probabilities then describe the same pixels in the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perspective_unet.errors import InputError
from perspective_unet.models.checkpoint import load_for_inference
from perspective_unet.models.pretrained import is_model_folder, load_pretrained_for_inference

__all__ = ["ProbabilityEnsemble", "load_ensemble_for_inference", "load_source_for_inference", "resolve_checkpoints"]

CheckpointSource = str | os.PathLike[str]


class ProbabilityEnsemble(nn.Module):
    """Models whose output is ``log(mean_i softmax(model_i(x)))``: its softmax is the members' mean probability.

    Members run one after another, so the ensemble needs the memory of one member's activations. ``config`` is the
    first member's (all share classes and input channels); ``batch_dependent`` is true when any member's outputs
    depend on the other samples of its batch.

    Example:
        >>> from perspective_unet import create_model
        >>> members = [create_model("perspective_unet_tiny", num_classes=3).eval() for _ in range(2)]
        >>> ensemble = ProbabilityEnsemble(members).eval()
        >>> x = torch.randn(1, 1, 32, 32)
        >>> mean = (members[0](x).softmax(1) + members[1](x).softmax(1)) / 2
        >>> torch.allclose(ensemble(x).softmax(1), mean, atol=1e-6)
        True
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model.")
        self.members = nn.ModuleList(members)
        self.config = getattr(members[0], "config", None)
        self.batch_dependent = any(getattr(m, "batch_dependent", False) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            probabilities = torch.softmax(member(x).float(), dim=1)
            total = probabilities if total is None else total + probabilities
        mean = total / len(self.members)
        # Clamped so that an underflowed probability gives a very negative logit rather than -inf.
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))


def _checkpoint_of_run(folder: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_checkpoints(sources: CheckpointSource | Sequence[CheckpointSource]) -> list[Path]:
    """The checkpoint files that ``sources`` name.

    A file stands for itself, and so does a model folder (``perspective-unet export --format folder``). A run folder
    stands for its ``best.pt`` (its ``last.pt`` when it has no validation and
    so no ``best.pt``). A folder of cross-validation runs (``fold_0``, ``fold_1``, ... as ``train --fold`` writes
    them) stands for the checkpoint of each fold run, ``fold_all`` excepted (it saw every fold's cases).

    Raises:
        InputError: A path does not exist, or a folder holds no checkpoint.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise InputError("no checkpoint given.")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise InputError(
                f"{path} does not exist; give a checkpoint (.pt), a model folder, a run folder or a "
                "folder of fold runs."
            )
        if is_model_folder(path):
            found.append(path)
            continue
        own = _checkpoint_of_run(path)
        folds = sorted(p for p in path.glob("fold_*") if p.is_dir() and p.name != "fold_all")
        if own is not None:
            found.append(own)
        elif folds:
            missing = [p.name for p in folds if _checkpoint_of_run(p) is None]
            if missing:
                raise InputError(
                    f"{path}: fold runs {missing} have no best.pt or last.pt; finish them or give the "
                    "checkpoints one by one."
                )
            found += [_checkpoint_of_run(p) for p in folds]  # type: ignore[misc]
        else:
            raise InputError(f"{path} holds no best.pt, last.pt or fold_* runs; give a checkpoint file.")
    return found


def load_source_for_inference(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """One model and its inference info from a checkpoint file or a model folder (what one resolved source is)."""
    if is_model_folder(path):
        return load_pretrained_for_inference(path, device)
    return load_for_inference(path, device)


def _agreement(info: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """What members of an ensemble must share."""
    plan = info.get("plan")
    return {
        "classes": int(model.config.num_classes),
        "class names": list((info.get("dataset") or {}).get("class_names") or []),
        "plan": plan.to_dict() if plan is not None else {"img_size": list(info.get("img_size") or [])},
        "input channels": int(model.config.in_channels),
    }


def load_ensemble_for_inference(
    sources: CheckpointSource | Sequence[CheckpointSource], device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """One checkpoint's model, or an ensemble of several, in eval mode, with the first one's inference info.

    Args:
        sources: Checkpoints, run folders or folders of fold runs (see :func:`resolve_checkpoints`).
        device: Where to load the weights.

    Returns:
        ``(model, info)`` as :func:`~perspective_unet.models.checkpoint.load_for_inference` returns them, with
        ``info["checkpoints"]`` listing the files used.

    Raises:
        InputError: A checkpoint is unreadable, or two disagree in classes, class names, plan or input channels.
    """
    paths = resolve_checkpoints(sources)
    models, infos = [], []
    for path in paths:
        model, info = load_source_for_inference(path, device)
        if models:
            first, this = _agreement(infos[0], models[0]), _agreement(info, model)
            for key in first:
                if first[key] != this[key]:
                    raise InputError(
                        f"{path} differs from {paths[0]} in its {key} ({this[key]} vs {first[key]}); "
                        "an ensemble averages the probabilities of models that share classes and plan."
                    )
        models.append(model)
        infos.append(info)
    info = {**infos[0], "checkpoints": [str(p) for p in paths]}
    if len(models) == 1:
        return models[0], info
    return ProbabilityEnsemble(models).eval(), info
