"""Run folders and model sources: the layout of a training run, and the one loader of every kind of saved model.

A run folder, as ``perspective-unet train`` writes it (:class:`RunFolder` names each path)::

    RUN/
      last.pt            the latest checkpoint: weights, optimizer, RNG states, config, plan (resuming reads it)
      best.pt            the checkpoint of the best validation mean Dice (runs with validation only)
      config.json        the run's training config, every field resolved, and its plan
      train_log.csv      one row per epoch (validation Dice per class among its columns)
      tensorboard/       TensorBoard events
      validation/        a fold run's out-of-fold predictions of its held-out cases on their own grids
                         (<case>.nii.gz, <case>_probabilities.npz), with their summary.json
      training_log.txt   everything the run logged, as text
      progress.png       the log's curves, redrawn after every epoch
      initialization.csv a fine-tuning run's start: what became of each tensor of the source (loaded, adapted, new)
      evaluation/        an evaluation's reports (summary.json, per_case.csv, summary.md), when one was run

A folder of fold runs (``train --fold K -o OUT`` for each K): ``OUT/fold_0`` ... ``OUT/fold_K``, one run per
cross-validation fold, ``OUT/fold_all``, a run on every development case, and ``OUT/crossval/``, the summary of the
folds' out-of-fold predictions (``perspective-unet crossval OUT``).

:func:`load` takes any model source and returns a :class:`LoadedModel`: the model in eval mode and its
:class:`~perspective_unet.models.inference_info.InferenceInfo`. A source is a checkpoint of this project, a released
checkpoint of the authors' code, a model folder (``export --format folder``), an ONNX file (``export --format onnx``,
run by ONNX Runtime: TensorRT or CUDA where installed, else the CPU), a run folder (its ``best.pt``, else
``last.pt``), a folder of fold runs (the ensemble of its ``fold_K`` runs, ``fold_all`` left out as it saw every fold's
cases; ``fold_all`` alone when it is all the folder holds), or several of these (an ensemble averaging their
probabilities). Each file is read once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from perspective_unet.errors import InputError
from perspective_unet.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file, model_from_checkpoint
from perspective_unet.models.ensemble import ProbabilityEnsemble
from perspective_unet.models.inference_info import LABELS_FILE, InferenceInfo, read_inference_info
from perspective_unet.models.official import is_official_state_dict, load_official_checkpoint
from perspective_unet.models.onnx_runtime import OnnxRuntimeModel
from perspective_unet.models.onnx_session import OnnxSession
from perspective_unet.models.pretrained import from_pretrained, is_model_folder

__all__ = ["FOLD_ALL", "STALE_PATTERNS", "LoadedModel", "ModelSource", "RunFolder", "load", "model_sources"]

log = logging.getLogger(__name__)

ModelSource = str | os.PathLike[str]

LAST = "last.pt"
BEST = "best.pt"
FOLD_ALL = "fold_all"
_FOLD = re.compile(r"fold_(\d+)")
# Temporary files a killed run leaves: this version's names, and the checkpoint temporaries of earlier versions.
STALE_PATTERNS = (".tmp-*", f".{LAST}.*.tmp", f".{BEST}.*.tmp")


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run, or of a folder of fold runs (see the module docstring).

    Example:
        >>> run = RunFolder("runs/synapse")
        >>> run.last.as_posix(), run.fold(2).best.as_posix(), run.fold_all.path.name
        ('runs/synapse/last.pt', 'runs/synapse/fold_2/best.pt', 'fold_all')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def last(self) -> Path:
        """The latest checkpoint (what resuming reads)."""
        return self.path / LAST

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation mean Dice."""
        return self.path / BEST

    @property
    def config(self) -> Path:
        """The run's training config, resolved, with its plan."""
        return self.path / "config.json"

    @property
    def train_log(self) -> Path:
        """One row per epoch."""
        return self.path / "train_log.csv"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard events."""
        return self.path / "tensorboard"

    @property
    def validation(self) -> Path:
        """The fold's out-of-fold predictions of its validation cases."""
        return self.path / "validation"

    @property
    def validation_summary(self) -> Path:
        """The scores of the out-of-fold predictions."""
        return self.validation / "summary.json"

    def validation_labels(self, case: str) -> Path:
        """A held-out case's out-of-fold label map, on the case's own grid."""
        return self.validation / f"{case}.nii.gz"

    def validation_probabilities(self, case: str) -> Path:
        """A held-out case's out-of-fold class probabilities: float16 ``probabilities`` (classes first, then the
        label map's shape) and ``class_names``."""
        return self.validation / f"{case}_probabilities.npz"

    @property
    def crossval(self) -> Path:
        """The cross-validation summary of a folder of fold runs (summary.json, per_case.csv, summary.md)."""
        return self.path / "crossval"

    @property
    def training_log(self) -> Path:
        """Everything the run logged, as text."""
        return self.path / "training_log.txt"

    @property
    def progress(self) -> Path:
        """The log's curves."""
        return self.path / "progress.png"

    @property
    def initialization(self) -> Path:
        """A fine-tuning run's table of the tensors it loaded, adapted and left new."""
        return self.path / "initialization.csv"

    @property
    def evaluation(self) -> Path:
        """An evaluation's reports."""
        return self.path / "evaluation"

    def results(self) -> list[Path]:
        """The files that make the folder a run (checkpoints and log) present now."""
        return [path for path in (self.last, self.best, self.train_log) if path.exists()]

    def records(self) -> list[Path]:
        """Everything a run writes that ``train --overwrite`` replaces: its results, config, events, logs and
        out-of-fold predictions."""
        written = (
            self.config,
            self.tensorboard,
            self.validation,
            self.training_log,
            self.progress,
            self.initialization,
        )
        return [*self.results(), *(p for p in written if p.exists())]

    def checkpoint(self) -> Path | None:
        """``best.pt`` (chosen on validation cases), else ``last.pt`` (runs without validation), else None."""
        return next((path for path in (self.best, self.last) if path.is_file()), None)

    def fold(self, fold: int | str) -> RunFolder:
        """The run of fold ``fold`` (an index, or ``"all"``) in this folder of fold runs."""
        return RunFolder(self.path / f"fold_{fold}")

    @property
    def fold_all(self) -> RunFolder:
        """The run on every development case."""
        return RunFolder(self.path / FOLD_ALL)

    def fold_runs(self) -> list[RunFolder]:
        """The ``fold_K`` runs in this folder, by K (``fold_all`` is not among them)."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if p.is_dir() and (m := _FOLD.fullmatch(p.name))]
        return [RunFolder(p) for _, p in sorted(found)]


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode and what inference needs to know about it.

    Attributes:
        model: The model: a :class:`~perspective_unet.models.perspective_unet.PerspectiveUNet`, an ONNX Runtime
            session as a module, or a :class:`~perspective_unet.models.ensemble.ProbabilityEnsemble` of several.
        info: The first source's inference info; ``info.sources`` lists every file used.
    """

    model: nn.Module
    info: InferenceInfo = field(default_factory=InferenceInfo)

    @property
    def sources(self) -> list[Path]:
        """The files the model was loaded from."""
        return list(self.info.sources)


def _sources_of_folder(path: Path) -> list[Path]:
    """The model files a folder stands for (see the module docstring)."""
    if is_model_folder(path):
        return [path]
    run = RunFolder(path)
    own = run.checkpoint()
    if own is not None:
        return [own]
    folds = run.fold_runs()
    if folds:
        missing = [fold.path.name for fold in folds if fold.checkpoint() is None]
        if missing:
            raise InputError(
                f"{path}: fold runs {missing} have no best.pt or last.pt; finish them or give the "
                "checkpoints one by one."
            )
        left_out = f"; {FOLD_ALL} left out (it saw every fold's cases)" if run.fold_all.path.is_dir() else ""
        log.info("%s: the ensemble of its %d fold runs (%s)%s", path, len(folds), _names(folds), left_out)
        return [fold.checkpoint() for fold in folds]  # type: ignore[misc]
    every = run.fold_all.checkpoint()
    if every is not None:
        log.info("%s holds only %s: its checkpoint %s", path, FOLD_ALL, every)
        return [every]
    raise InputError(f"{path} holds no best.pt, last.pt or fold_* runs; give a checkpoint file.")


def _names(folds: Sequence[RunFolder]) -> str:
    names = [fold.path.name for fold in folds]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}"


def model_sources(source: ModelSource | Sequence[ModelSource]) -> list[Path]:
    """The model files (checkpoints, model folders, ONNX files) that ``source`` stands for.

    Raises:
        InputError: Nothing is given, a path does not exist, or a folder holds no model.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise InputError("no checkpoint given.")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += _sources_of_folder(path)
        else:
            raise InputError(
                f"{path} does not exist; give a checkpoint (.pt), a model folder, an ONNX file, a run folder or a "
                "folder of fold runs."
            )
    return found


def _load_checkpoint(path: Path, device: torch.device | str) -> tuple[nn.Module, InferenceInfo]:
    """A checkpoint of this project or of the released code, read once."""
    data = load_checkpoint_file(path, map_location="cpu")
    if data.get("format") != CHECKPOINT_FORMAT and is_official_state_dict(data):
        try:
            model = load_official_checkpoint(data, map_location=device, origin=path)
        except InputError as exc:
            raise InputError(
                f"{exc} A released checkpoint of an ablation loads after `perspective-unet convert-official` with "
                "the switches it was trained with (--no-enltb, --no-scsi, ...)."
            ) from None
        log.info("%s: a released checkpoint, loaded as the released network (3 channels, SCSI 'official')", path)
        return model, InferenceInfo(sources=(path,))
    model = model_from_checkpoint(data, path, map_location=device)
    info = InferenceInfo.from_checkpoint(data, path)
    info.check_model(model.config.in_channels, model.config.repeat_gray_to_rgb, path)
    info.check_classes(model.config.num_classes, path)
    return model, info


def _load_onnx(path: Path) -> tuple[nn.Module, InferenceInfo]:
    """An ONNX graph in ONNX Runtime, with the inference info of its metadata (or of the files beside it)."""
    session = OnnxSession(path, threads=torch.get_num_threads())
    info = session.info()
    model = OnnxRuntimeModel(session, len(info.class_names))
    info.check_model(model.config.in_channels, False, path)
    return model, info


def _load_one(path: Path, device: torch.device | str) -> tuple[nn.Module, InferenceInfo]:
    if path.is_dir():
        model = from_pretrained(path, device)
        info = read_inference_info(path)
        info.check_model(model.config.in_channels, model.config.repeat_gray_to_rgb, path)
        info.check_classes(model.config.num_classes, path / LABELS_FILE)
        return model, info
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    return _load_checkpoint(path, device)


def load(source: ModelSource | Sequence[ModelSource], device: torch.device | str = "cpu") -> LoadedModel:
    """The model a source stands for, in eval mode, with its inference info (see the module docstring).

    Args:
        source: A checkpoint (this project's or a released one), a model folder, an ONNX file, a run folder, a folder
            of fold runs, or several of these: their ensemble, the mean of their probabilities.
        device: Where the weights go (an ONNX model runs on ONNX Runtime's providers: TensorRT or CUDA where
            installed, else the CPU).

    Returns:
        The model (one, or a :class:`ProbabilityEnsemble`) and the first source's info, whose ``sources`` list every
        file used.

    Raises:
        InputError: A source is missing, unreadable or inconsistent, or two members of an ensemble differ in classes,
            class names, plan or input channels (the message names both files).

    Example:
        >>> loaded = load("runs/synapse")  # doctest: +SKIP
        >>> loaded.info.plan.protocol, loaded.sources  # doctest: +SKIP
        ('spacing', [PosixPath('runs/synapse/best.pt')])
    """
    paths = model_sources(source)
    models: list[nn.Module] = []
    first: InferenceInfo | None = None
    for path in paths:
        model, info = _load_one(path, device)
        if first is None:
            first = info
        else:
            expected = first.agreement(models[0].config.num_classes, models[0].config.in_channels)
            this = info.agreement(model.config.num_classes, model.config.in_channels)
            for key, value in expected.items():
                if this[key] != value:
                    raise InputError(
                        f"{path} differs from {paths[0]} in its {key} ({this[key]} vs {value}); "
                        "an ensemble averages the probabilities of models that share classes and plan."
                    )
        models.append(model)
    assert first is not None
    info = first.replace(sources=tuple(paths))
    if len(models) == 1:
        return LoadedModel(models[0], info)
    return LoadedModel(ProbabilityEnsemble(models).eval(), info)
