"""The experiment file: a grid of training runs (configurations x seeds x folds) and how to compare them.

```yaml
name: ablation                     # free text, shown in the report
base: configs/demo.yaml            # optional: a training config file every run starts from (relative to this file)
train:                             # optional: training settings shared by every run (over ``base``)
  data: demo_out/data
  epochs: 40
configurations:                    # name -> settings of that configuration (over ``train``); dicts are merged
  full: {}
  no_scsi: {model_options: {use_scsi: false}}
seeds: [1, 2, 3]
folds: [0, 1, 2, 3, 4]             # optional: cross-validation folds; without it, the dataset's own splits
reference: full                    # the configuration the others are tested against (default: the first)
evaluate: {split: test, tta: false, protocol: legacy}
statistics: {unit: case, bootstrap_resamples: 10000, bootstrap_seed: 0, confidence: 0.95}
executor:                          # optional: where the runs run (the command line's options win)
  name: slurm                      # local (default), slurm or ray
  partition: gpu
  gpus_per_run: 1
  cpus_per_run: 8
  time_limit_minutes: 1440
  array_parallelism: 8
```

Every run's training config is built (and so checked) when the file is read, before any run starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perspective_unet.config.checks import (
    check_bool,
    check_choice,
    check_int,
    check_mapping,
    check_number,
    check_str,
    dataclass_from_dict,
)
from perspective_unet.config.train import TrainConfig
from perspective_unet.outputs import read_yaml

__all__ = [
    "EXECUTORS",
    "SLURM_CLUSTERS",
    "EvaluationSettings",
    "ExecutorSettings",
    "ExperimentConfig",
    "ExperimentRun",
    "StatisticsSettings",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
UNITS = ("case", "case_class")
METRIC_PROTOCOLS = ("legacy", "corrected")
EXECUTORS = ("local", "slurm", "ray")
SLURM_CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class EvaluationSettings:
    """How each finished run is evaluated (``perspective-unet evaluate`` on its checkpoint).

    Attributes:
        split: The volumes scored, ``test`` by default: runs never select checkpoints on them.
        tta: Average over mirrorings.
        protocol: The metric protocol the report compares: ``legacy`` (the papers') or ``corrected``.
    """

    split: str = "test"
    tta: bool = False
    protocol: str = "legacy"

    def __post_init__(self) -> None:
        check_str("evaluate.split", self.split)
        check_bool("evaluate.tta", self.tta)
        check_choice("evaluate.protocol", self.protocol, METRIC_PROTOCOLS)


@dataclass(frozen=True)
class StatisticsSettings:
    """How the report compares configurations.

    Attributes:
        unit: What a paired test pairs and a bootstrap resamples: ``case`` (a case's mean Dice over classes, the
            usual choice) or ``case_class`` (each case and class apart; for data with very few cases, such as the
            demo's single test volume, at the price of treating classes of one case as independent).
        bootstrap_resamples: Resamples of the percentile bootstrap.
        bootstrap_seed: Seed of the bootstrap, so a report is reproducible.
        confidence: Level of the bootstrap interval.
    """

    unit: str = "case"
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        check_choice("statistics.unit", self.unit, UNITS)
        check_int("statistics.bootstrap_resamples", self.bootstrap_resamples, minimum=100)
        check_int("statistics.bootstrap_seed", self.bootstrap_seed)
        check_number("statistics.confidence", self.confidence, low=0, high=1, low_open=True, high_open=True)


@dataclass(frozen=True)
class ExecutorSettings:
    """Where the runs of an experiment run: the ``executor:`` block of the experiment file, under the command line's
    options. Every executor gives each run the same checks, lock, resumption, status file and log.

    Attributes:
        name: ``local`` (this machine: the runs one after another, or one worker per ``--devices`` entry),
            ``slurm`` (each run a SLURM job, submitted through submitit) or ``ray`` (each run a Ray task).
        gpus_per_run: GPUs each run's job or task asks for (slurm, ray).
        cpus_per_run: CPU cores each run's job or task asks for (slurm, ray).
        partition: The SLURM partition; None: the cluster's default.
        time_limit_minutes: A SLURM job's time limit. A job that reaches it, or is preempted, is requeued and resumes
            from its ``last.pt``.
        array_parallelism: How many of the runs' jobs (one SLURM job array) run at once; None: submitit's default.
        max_requeues: How many times a run's job is requeued after a time limit or preemption (slurm), or retried
            after its worker or node died (ray).
        slurm_options: Further ``sbatch`` settings, passed through submitit (e.g. ``{account: lab, qos: high}``).
        setup: Shell lines each SLURM job runs first (``module load ...``, ``source venv/bin/activate``).
        slurm_cluster: ``slurm`` submits with ``sbatch``; ``local`` runs the same jobs (pickles, job folders,
            requeueing) through submitit's local executor on this machine, to try a setup without a cluster.
        address: The Ray cluster to join (``auto``, ``ray://head:10001``); None: a Ray instance started on this
            machine for the experiment, reachable from this machine only.
    """

    name: str = "local"
    gpus_per_run: int = 1
    cpus_per_run: int = 4
    partition: str | None = None
    time_limit_minutes: int = 24 * 60
    array_parallelism: int | None = None
    max_requeues: int = 3
    slurm_options: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    slurm_cluster: str = "slurm"
    address: str | None = None

    def __post_init__(self) -> None:
        check_choice("executor.name", self.name, EXECUTORS)
        check_int("executor.gpus_per_run", self.gpus_per_run, minimum=0)
        check_int("executor.cpus_per_run", self.cpus_per_run, minimum=1)
        check_str("executor.partition", self.partition, optional=True)
        check_int("executor.time_limit_minutes", self.time_limit_minutes, minimum=1)
        check_int("executor.array_parallelism", self.array_parallelism, minimum=1, optional=True)
        check_int("executor.max_requeues", self.max_requeues, minimum=0)
        check_mapping("executor.slurm_options", self.slurm_options)
        if not isinstance(self.setup, list) or not all(isinstance(line, str) for line in self.setup):
            raise ValueError(f"executor.setup must be a list of shell lines, got {self.setup!r}.")
        check_choice("executor.slurm_cluster", self.slurm_cluster, SLURM_CLUSTERS)
        check_str("executor.address", self.address, optional=True)


@dataclass(frozen=True)
class ExperimentRun:
    """One training run of the grid.

    Attributes:
        configuration: Its configuration's name.
        seed: Its seed.
        fold: Its cross-validation fold, or None.
        config: Its full training config (output not yet set).
    """

    configuration: str
    seed: int
    fold: int | str | None
    config: TrainConfig

    @property
    def folder(self) -> Path:
        """Its folder, relative to the experiment's: ``<configuration>/seed_<seed>[/fold_<K>]``."""
        path = Path(self.configuration) / f"seed_{self.seed}"
        return path / f"fold_{self.fold}" if self.fold is not None else path

    @property
    def label(self) -> str:
        return str(self.folder)


@dataclass
class ExperimentConfig:
    """A grid of runs: every configuration with every seed (and fold), each run a ``TrainConfig``.

    Attributes:
        name: Shown in the report.
        configurations: Name -> the settings of that configuration over ``train`` (dicts merged).
        train: Settings every run shares (over ``base``).
        base: A training config file every run starts from; relative paths are relative to the experiment file.
        seeds: Seeds; each configuration runs once per seed (and fold).
        folds: Cross-validation folds (0..N-1 or ``"all"``), or None for the dataset's own splits.
        reference: The configuration the others are tested against; None: the first.
        evaluate: How each run is evaluated.
        statistics: How configurations are compared.
        executor: Where the runs run.
    """

    name: str
    configurations: dict[str, dict[str, Any]]
    train: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    seeds: list[int] = field(default_factory=lambda: [1234])
    folds: list[int | str] | None = None
    reference: str | None = None
    evaluate: EvaluationSettings = field(default_factory=EvaluationSettings)
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)

    def __post_init__(self) -> None:
        check_str("name", self.name)
        check_mapping("train", self.train)
        for key, kind in (
            ("evaluate", EvaluationSettings),
            ("statistics", StatisticsSettings),
            ("executor", ExecutorSettings),
        ):
            if not isinstance(getattr(self, key), kind):
                raise ValueError(f"{key} must be a mapping of its settings, got {getattr(self, key)!r}.")
        if not isinstance(self.configurations, dict) or not self.configurations:
            raise ValueError("configurations must map at least one name to its settings, e.g. {full: {}}.")
        for name, settings in self.configurations.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    f"configurations: {name!r} is not a usable name (letters, digits, '_', '-', '.'; it "
                    "names the runs' folders)."
                )
            check_mapping(f"configurations.{name}", settings)
        if not isinstance(self.seeds, list) or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a list of distinct integers, got {self.seeds!r}.")
        for seed in self.seeds:
            check_int("seeds", seed, minimum=0)
        if self.folds is not None and (not isinstance(self.folds, list) or not self.folds):
            raise ValueError(f"folds must be a list of fold numbers (or 'all'), got {self.folds!r}.")
        if self.reference is None:
            self.reference = next(iter(self.configurations))
        if self.reference not in self.configurations:
            raise ValueError(f"reference {self.reference!r} is none of the configurations {list(self.configurations)}.")
        for key in ("seed", "fold", "output"):
            if key in self.train or any(key in c for c in self.configurations.values()):
                raise ValueError(
                    f"{key} is set by the experiment for each run; remove it from train and "
                    "configurations (use seeds and folds)."
                )
        self.runs()  # every run's config is built, and so checked, now

    def _base_settings(self) -> dict[str, Any]:
        """The fields the base file sets (checked as a training config first); its seed and output give way to the
        experiment's."""
        if self.base is None:
            return {}
        TrainConfig.from_yaml(self.base)
        data = read_yaml(self.base, "fix the base config file.") or {}
        return {k: v for k, v in data.items() if k not in ("seed", "fold", "output")}

    def self_contained(self) -> ExperimentConfig:
        """The same experiment with the base file's settings folded into ``train`` (no file needed to read it)."""
        return dataclasses.replace(self, train=_merge(self._base_settings(), self.train), base=None)

    def runs(self) -> list[ExperimentRun]:
        """The grid, configuration by configuration, then seed, then fold; each with its checked training config.

        Raises:
            ValueError: A run's settings make no valid ``TrainConfig`` (the message names the configuration).
        """
        base = self._base_settings()
        out = []
        for name, settings in self.configurations.items():
            merged = _merge(_merge(base, self.train), settings)
            for seed in self.seeds:
                for fold in self.folds or [None]:
                    try:
                        config = TrainConfig.from_dict({**merged, "seed": seed, "fold": fold})
                    except ValueError as exc:
                        raise ValueError(f"configurations.{name}: {exc}") from None
                    if not config.data:
                        raise ValueError(f"configurations.{name}: no dataset; set data in train (or in base).")
                    out.append(ExperimentRun(name, seed, fold, config))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, relative_to: Path | None = None) -> ExperimentConfig:
        data = dict(data)
        if isinstance(data.get("evaluate"), dict):
            data["evaluate"] = dataclass_from_dict(EvaluationSettings, data["evaluate"], "evaluate keys")
        if isinstance(data.get("statistics"), dict):
            data["statistics"] = dataclass_from_dict(StatisticsSettings, data["statistics"], "statistics keys")
        if isinstance(data.get("executor"), dict):
            data["executor"] = dataclass_from_dict(ExecutorSettings, data["executor"], "executor keys")
        base = data.get("base")
        if isinstance(base, str) and relative_to is not None and not Path(base).is_absolute():
            data["base"] = str(relative_to / base)
        return dataclass_from_dict(cls, data, "experiment keys")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Read an experiment file; a bad one raises ``ValueError`` naming the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"experiment file {path} does not exist; see configs/experiments/ for examples.")
        data = read_yaml(path, "fix the experiment file (see configs/experiments/ for examples).")
        if not isinstance(data, dict):
            raise ValueError(f"experiment file {path} must hold a mapping (name, configurations, seeds, ...).")
        try:
            return cls.from_dict(data, relative_to=path.parent)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"experiment file {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """``above`` over ``below``; dict values (model_options, augmentation) are merged one level deep."""
    out = dict(below)
    for key, value in above.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
