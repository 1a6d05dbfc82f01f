"""``perspective-unet export --format folder``: a trained model as a model folder (safetensors, no pickle) with a model
card, and the helpers both exports share (the one model a source stands for, the class colors)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.models.hub import card_front_matter
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.pretrained import write_model_folder
from perspective_unet.outputs import read_json, refuse_own_source
from perspective_unet.runs import LoadedModel, RunFolder, load, model_sources

__all__ = ["class_colors", "export_folder", "exported_model", "model_card"]

log = logging.getLogger(__name__)


def exported_model(source: str | os.PathLike[str]) -> LoadedModel:
    """The one PyTorch model a source stands for (a checkpoint, a run folder, a model folder).

    Raises:
        InputError: The source stands for several models (a folder of fold runs) or is an ONNX graph.
    """
    paths = model_sources(source)
    if len(paths) != 1:
        raise InputError(f"{source} stands for {len(paths)} checkpoints; export one model at a time.")
    if paths[0].suffix.lower() == ".onnx":
        raise InputError(f"{paths[0]} is an ONNX graph; export a checkpoint or a model folder.")
    return load(paths[0])


def class_colors(num_classes: int) -> list[list[int]]:
    """The display color (r, g, b) of each class id, as labels.json records them."""
    from perspective_unet.viz.palette import class_color

    return [[int(c) for c in class_color(i)] for i in range(num_classes)]


def _evaluation_of(checkpoint: Path) -> dict[str, Any] | None:
    """The evaluation summary a run folder holds beside its checkpoint, if any."""
    run = RunFolder(checkpoint.parent)
    for folder in (run.evaluation, run.path / "eval"):
        path = folder / "summary.json"
        if path.is_file():
            try:
                summary = read_json(path, "its scores are left out of the model card.")
            except InputError as exc:
                log.warning("%s", exc)
                return None
            return summary if isinstance(summary, dict) else None
    return None


def _number(values: dict[str, Any], key: str, scale: float = 1.0) -> str:
    value = values.get(key)
    return "n/a" if value is None else f"{value * scale:.2f}"


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    """The card's evaluation: the foreground means of both protocols, then each class's Dice."""
    mean, names = evaluation.get("foreground_mean") or {}, evaluation.get("class_names") or {}
    lines = [
        f"Split {evaluation.get('split', '?')}, {evaluation.get('num_cases', '?')} case(s). Corrected protocol: mean "
        f"Dice {_number(mean, 'Dice', 100)}, mean HD95 {_number(mean, 'HD95')} mm, mean NSD {_number(mean, 'NSD', 100)}"
        f"; the papers' protocol: mean Dice {_number(mean, 'legacy_Dice', 100)}, mean HD95 "
        f"{_number(mean, 'legacy_HD95_voxels')} voxels.",
    ]
    for class_id, values in (evaluation.get("mean") or {}).items():
        lines.append(f"- {names.get(class_id, class_id)}: Dice {_number(values, 'Dice', 100)}")
    return lines


def model_card(model: PerspectiveUNet, info: InferenceInfo) -> str:
    """A Markdown model card: the Hub's YAML metadata (:func:`~perspective_unet.models.hub.card_metadata`),
    architecture, training data and recipe as recorded, metrics if the run was evaluated (an evaluation beside
    ``info.sources[0]``)."""
    config = model.config
    plan, training = info.plan, info.train_config
    parameters = sum(p.numel() for p in model.parameters())
    evaluation = _evaluation_of(info.sources[0]) if info.sources else None
    lines = [
        card_front_matter(info, num_classes=config.num_classes, evaluation=evaluation),
        "# Perspective+ Unet model",
        "",
        "Perspective+ Unet (Hu et al., MICCAI 2024): a bi-path residual encoder, efficient non-local transformer "
        "blocks and a spatial cross-scale integrator in a U-Net. Load it with "
        "`perspective_unet.from_pretrained(folder)` (or the Hub id of this repository) or give the folder to any "
        "`--checkpoint`.",
        "",
        "## Architecture",
        "",
        f"- widths {list(config.widths)}, {parameters / 1e6:.2f} M parameters, {config.in_channels} input channel(s), "
        f"{config.num_classes} classes",
        f"- BPRB {'on' if config.use_bipath else 'off'}, ENLTB {'on' if config.use_enltb else 'off'}, SCSI "
        f"{'on' if config.use_scsi else 'off'} (attention: {config.scsi_attention})",
        "",
        "## Training data (as recorded)",
        "",
        f"- dataset: {info.dataset_name or 'not recorded'}; modality {info.modality or 'not recorded'}"
        + (f"; input channels {', '.join(info.channel_names)} (files <case>_0000, ...)" if info.channel_names else ""),
        f"- intensity normalization: {info.normalization or 'not recorded'}",
        f"- classes: {', '.join(info.class_names) or 'not recorded'}",
        "",
        "## Recipe",
        "",
    ]
    if plan is not None:
        lines.append(
            f"- protocol {plan.protocol}, patch {plan.patch_size[0]}x{plan.patch_size[1]}"
            + (f", spacing {plan.spacing[0]:.3g} x {plan.spacing[1]:.3g} mm" if plan.spacing else "")
            + f", {plan.context_slices} context slice(s) on each side"
        )
    keys = ("model", "epochs", "batch_size", "optimizer", "base_lr", "seed", "fold", "augment")
    recipe = ", ".join(f"{k} {training[k]}" for k in keys if training.get(k) is not None)
    lines += [f"- {recipe}" if recipe else "- training settings not recorded", ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        lines += _evaluation_lines(evaluation)
    else:
        lines.append("No evaluation found beside the checkpoint (`perspective-unet evaluate` writes one).")
    license_text = info.license or "not recorded"
    lines += [
        "",
        "## License",
        "",
        f"Weights: as the training data's terms allow ({license_text}). Code: Apache-2.0 (perspective-unet).",
        "",
    ]
    return "\n".join(lines)


def export_folder(
    checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a checkpoint (or model folder, or run folder) as a model folder with a model card.

    Raises:
        InputError: ``output`` is the model folder read, or the run folder of the checkpoint read (whose records the
            model folder's files would replace).
    """
    loaded = exported_model(checkpoint)
    model, info = loaded.model, loaded.info
    refuse_own_source(
        [output],
        [source if source.is_dir() else source.parent for source in loaded.sources],
        "write the model folder elsewhere",
    )
    return write_model_folder(
        model,
        output,
        info,
        colors=class_colors(model.config.num_classes),
        card=model_card(model, info),
        overwrite=overwrite,
    )
