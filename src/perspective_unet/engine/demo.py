"""The one-command demo: prepare the real demo CT, train a CPU-sized model, evaluate on held-out slices, draw.

The data are the example abdominal CT that TotalSegmentator ships in its source distribution on PyPI (Apache-2.0),
with TotalSegmentator's own model output as labels (not manual annotation). The split is by contiguous blocks of
slices: the test block's neighbors are left out of training. See ``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import torch

from perspective_unet.config import TrainConfig
from perspective_unet.config.augmentation import DomainAugmentationFields
from perspective_unet.data import prepare_demo
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.engine.evaluate import evaluate
from perspective_unet.engine.predictor import Predictor
from perspective_unet.engine.train import train
from perspective_unet.intensity import SYNAPSE_HU_WINDOW
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.stats import spread
from perspective_unet.table import format_table
from perspective_unet.viz import save_overlay_grid

__all__ = [
    "DEMO_AUGMENTATION",
    "DEMO_RESULTS",
    "DemoSettings",
    "format_organ_table",
    "format_seed_table",
    "run_demo",
    "run_demo_seeds",
]

log = logging.getLogger(__name__)

DEMO_AUGMENTATION: dict[str, Any] = {
    "mirror_rows_prob": 0.0,
    "mirror_columns_prob": 0.0,
    "rotate_prob": 0.3,
    "rotate_degrees": 20.0,
    "scale_prob": 0.5,
    "shift_prob": 0.5,
    "shift_range": [-2.0, 2.0],
    "brightness_prob": 0.3,
    "contrast_prob": 0.3,
    "contrast_range": [0.65, 1.5],
}


@dataclass
class DemoSettings:
    """What the demo trains; the defaults finish within 12 minutes on 2 CPU cores.

    Attributes:
        model: Registered variant.
        protocol: ``spacing`` (slices at the plan's 3 mm pixels, patches, sliding-window inference) or ``paper``.
        img_size: Patch (spacing protocol) or slice size (paper protocol); None takes the plan's (the demo CT's
            axial slices are 101 x 122 pixels of 3 mm, so the plan's patch is 112 x 128).
        context_slices: Neighboring slices on each side as extra input channels (2.5D).
        epochs: Passes over the training slices; the run's numbers follow from these and the seed.
        batch_size: Patches per step; None takes the plan's.
        base_lr: Initial learning rate of the poly schedule.
        optimizer: ``adamw`` reaches a useful model in the few hundred steps a CPU affords; the paper's SGD
            recipe needs tens of thousands.
        foreground_sampling_weight: Slices holding organs are drawn this many times more often than empty ones
            (most of the demo CT's slices lie below the abdomen).
        model_options: ``ModelConfig`` overrides; SCSI attention dropout is off because on a CPU it doubles the
            cost of a training step of the tiny model.
        augment: Augment the training patches (the protocol's augmentation).
        augmentation: Overrides of the protocol's augmentation settings. The demo's: no mirroring (one scan cannot
            teach left from right once mirrored), rotation +-20 deg and scaling more often than nnU-Net's defaults,
            and intensity shifts of up to 2 foreground standard deviations (about 56 HU) with stronger brightness
            and contrast changes, which carry a model trained on this non-contrast CT over to contrast-enhanced scans.
        window: HU window of the prepared data, or ``"foreground"`` (nnU-Net's rule; see ``prepare_demo``).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32`` or ``bf16``, of training (``TrainConfig.precision``) and of the evaluation
            (``InferenceSettings.precision``); ``auto`` trains in float32 on a CPU and evaluates in bfloat16 where the
            processor has AMX or AVX-512 BF16.
        seed: Seed of the run.
        time_limit_minutes: A safety stop: training ends after the epoch that passes this budget, and the summary
            says so.
    """

    model: str = "perspective_unet_tiny"
    protocol: str = "spacing"
    img_size: tuple[int, int] | None = None
    context_slices: int = 0
    epochs: int = 40
    batch_size: int | None = None
    base_lr: float = 2e-3
    optimizer: str = "adamw"
    foreground_sampling_weight: float = 5.0
    model_options: dict[str, Any] = field(default_factory=lambda: {"scsi_dropout": 0.0})
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=lambda: dict(DEMO_AUGMENTATION))
    window: tuple[float, float] | str = SYNAPSE_HU_WINDOW
    device: str = "auto"
    precision: str = "auto"
    seed: int = 1234
    time_limit_minutes: float = 11.0


def _domain_settings(settings: DemoSettings) -> dict[str, Any]:
    """The demo's settings of the appearance augmentation for unseen domains, the part both protocols share."""
    shared = {item.name for item in dataclasses.fields(DomainAugmentationFields)}
    return {key: value for key, value in settings.augmentation.items() if key in shared}


def organ_means(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each organ's mean scores, by name, from ``summary.json``'s content (``mean`` keyed by class id)."""
    names = summary["class_names"]
    return {names[class_id]: values for class_id, values in summary["mean"].items()}


def format_organ_table(summary: dict[str, Any]) -> str:
    """Per-organ Dice (x100) and HD95 of both protocols, with the means as a last row."""
    rows = [
        [
            name,
            _maybe(values["legacy_Dice"], 100),
            _maybe(values["legacy_HD95_voxels"]),
            _maybe(values["Dice"], 100),
            _maybe(values["HD95"]),
        ]
        for name, values in organ_means(summary).items()
    ]
    mean = summary["foreground_mean"]
    footer = [
        "mean",
        _maybe(mean["legacy_Dice"], 100),
        _maybe(mean["legacy_HD95_voxels"]),
        _maybe(mean["Dice"], 100),
        _maybe(mean["HD95"]),
    ]
    header = ["organ", "Dice", "HD95 (voxels)", "Dice (corrected)", "HD95 mm (corrected)"]
    return format_table(header, rows, footer=footer)


def _maybe(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.2f}" if scale == 1.0 else f"{value * scale:.1f}"


DEMO_RESULTS = ("best.pt", "summary.json", "overlay.png", "demo.json", "run", "evaluation")


def run_demo(
    output: str | Path = "demo_out",
    settings: DemoSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Prepare the demo CT, train, evaluate on the held-out slices and write ``best.pt``, ``summary.json`` and
    ``overlay.png`` into ``output``; returns the evaluation summary.

    An existing prepared dataset in ``data`` (default ``output/data``) is reused. The results of an earlier demo in
    ``output`` are replaced only with ``overwrite``.

    Raises:
        FileExistsError: ``output`` holds an earlier demo's results and ``overwrite`` is False.

    Example:
        >>> summary = run_demo("demo_out")  # doctest: +SKIP
        >>> summary["foreground_mean"]["legacy_Dice"] > 0.6  # doctest: +SKIP
        True
    """
    settings = settings or DemoSettings()
    output = Path(output)
    earlier = [name for name in DEMO_RESULTS if (output / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output} holds an earlier demo's results ({', '.join(earlier)}); pass --overwrite to "
            "replace them, or choose another output folder."
        )
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    data = Path(data) if data is not None else output / "data"
    if not (data / "dataset.json").is_file():
        log.info("preparing the demo CT into %s", data)
        prepare_demo(data, cache_dir=cache_dir, window=settings.window, protocol=settings.protocol)
    info = open_dataset(data).info

    run = output / "run"
    if run.exists():
        shutil.rmtree(run)
    config = TrainConfig(
        data=str(data),
        output=str(run),
        model=settings.model,
        protocol=settings.protocol,
        img_size=settings.img_size,
        context_slices=settings.context_slices,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        base_lr=settings.base_lr,
        optimizer=settings.optimizer,
        foreground_sampling_weight=settings.foreground_sampling_weight,
        model_options=dict(settings.model_options),
        augment=settings.augment,
        # The demo's augmentation settings are the spacing protocol's; the paper protocol keeps the paper's own, with
        # the appearance augmentation for unseen domains as the demo's settings have it (both protocols share it).
        augmentation=dict(settings.augmentation) if settings.protocol == "spacing" else _domain_settings(settings),
        device=settings.device,
        precision=settings.precision,
        seed=settings.seed,
        num_workers=0,
        val_every=0,
        time_limit_minutes=settings.time_limit_minutes,
        log_every=5,
    )
    result = train(config)
    # The demo has no validation block (its few slices go to training), so, like the paper's protocol, it keeps
    # the last epoch's weights; they are written as best.pt.
    shutil.copyfile(result.last_checkpoint, output / "best.pt")

    inference = InferenceSettings(device=settings.device, precision=settings.precision)
    summary = evaluate(output / "best.pt", data, output / "evaluation", inference, progress=False, overwrite=True)
    shutil.copyfile(output / "evaluation" / "summary.json", output / "summary.json")

    predictor = Predictor.from_source(output / "best.pt", inference)
    test_volume = sorted((data / "test_vol_h5").glob("*.npy.h5"))[0]
    with h5py.File(test_volume, "r") as handle:
        image, label, spacing = handle["image"][:], handle["label"][:], tuple(handle.attrs["spacing"])
    prediction = predictor.predict_canonical(image, spacing=spacing[1:])
    save_overlay_grid(
        image,
        output / "overlay.png",
        label=label,
        prediction=prediction,
        num_slices=3,
        class_names=list(info.class_names),
        value_range=(0.0, 1.0),
    )
    minutes = (time.monotonic() - started) / 60
    cut_short = result.epochs_completed < settings.epochs
    (output / "demo.json").write_text(
        json.dumps(
            {
                "minutes": round(minutes, 2),
                "epochs": result.epochs_completed,
                "epochs_planned": settings.epochs,
                "cut_short_by_time_limit": cut_short,
                "iterations": result.iterations,
                "seed": settings.seed,
                "plan": predictor.plan.to_dict(),
                "settings": dataclasses.asdict(settings),
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    summary.update(
        demo_minutes=minutes,
        demo_epochs=result.epochs_completed,
        demo_epochs_planned=settings.epochs,
        demo_cut_short=cut_short,
        demo_seed=settings.seed,
        demo_protocol=predictor.plan.protocol,
    )
    return summary


def run_demo_seeds(
    output: str | Path = "demo_out",
    settings: DemoSettings | None = None,
    seeds: int = 3,
    *,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo once per seed (``settings.seed``, the next integer, ...), each in ``output/seed_<S>`` on the
    shared ``output/data``, and write ``output/seeds.json``: each organ's Dice and HD95 as mean and sample standard
    deviation over the runs. Returns that record.

    Raises:
        FileExistsError: A seed's folder holds an earlier demo's results and ``overwrite`` is False (checked for
            every seed before any run).
    """
    settings = settings or DemoSettings()
    output = Path(output)
    folders = {settings.seed + i: output / f"seed_{settings.seed + i}" for i in range(seeds)}
    earlier = [f"{folder / name}" for folder in folders.values() for name in DEMO_RESULTS if (folder / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{earlier[0]} holds an earlier demo's results; pass --overwrite to replace them, or "
            "choose another output folder."
        )
    summaries = {
        seed: run_demo(
            folder,
            dataclasses.replace(settings, seed=seed),
            cache_dir=cache_dir,
            overwrite=overwrite,
            data=output / "data",
        )
        for seed, folder in folders.items()
    }
    first = next(iter(summaries.values()))
    runs = list(summaries.values())
    # The papers' protocol, as the demo's table leads with it.
    record: dict[str, Any] = {
        "seeds": list(summaries),
        "mean_dice": spread([s["foreground_mean"]["legacy_Dice"] for s in runs]),
        "mean_hd95": spread([s["foreground_mean"]["legacy_HD95_voxels"] for s in runs]),
        "per_class": {},
    }
    organs = [organ_means(s) for s in runs]
    for name in organ_means(first):
        record["per_class"][name] = {
            metric: spread([o[name][key] for o in organs])  # type: ignore[misc]
            for metric, key in (("dice", "legacy_Dice"), ("hd95", "legacy_HD95_voxels"))
        }
    record = json.loads(json.dumps(record, default=dataclasses.asdict))
    (output / "seeds.json").write_text(json.dumps(record, indent=2))
    return record


def format_seed_table(record: dict[str, Any]) -> str:
    """Per-organ Dice (x100) and HD95 as mean +- sample standard deviation over the seeds of ``run_demo_seeds``."""

    def cell(value: dict[str, float], scale: float = 1.0) -> str:
        return f"{value['mean'] * scale:.1f} ± {value['std'] * scale:.1f}"

    rows = [[name, cell(v["dice"], 100), cell(v["hd95"])] for name, v in record["per_class"].items()]
    footer = ["mean", cell(record["mean_dice"], 100), cell(record["mean_hd95"])]
    return format_table(["organ", "Dice", "HD95 (voxels)"], rows, footer=footer)
