"""``perspective-unet export --format folder``: a trained model as a model folder (safetensors, no pickle) with a model
card, and the helpers both exports share (the one model a source stands for, the class colors)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError
from perspective_unet.models.hub import card_front_matter
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.pretrained import write_model_folder
from perspective_unet.runs import LoadedModel, RunFolder, load, model_sources

__all__ = ["class_colors", "export_folder", "exported_model", "model_card"]


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
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
    return None


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
        f"- dataset: {info.dataset_name or 'not recorded'}; modality {info.modality or 'not recorded'}",
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
        lines.append(
            f"Split {evaluation.get('split', '?')}, {evaluation.get('num_cases', '?')} case(s), metric "
            f"protocol {evaluation.get('protocol', '?')} (HD95 in {evaluation.get('hd95_units', '?')}): mean "
            f"Dice {100 * evaluation['mean_dice']:.2f}, mean HD95 {evaluation['mean_hd95']:.2f}."
        )
        for name, values in (evaluation.get("per_class") or {}).items():
            if values.get("dice") is not None:
                lines.append(f"- {name}: Dice {100 * values['dice']:.2f}")
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
    """Write a checkpoint (or model folder, or run folder) as a model folder with a model card."""
    loaded = exported_model(checkpoint)
    model, info = loaded.model, loaded.info
    return write_model_folder(
        model,
        output,
        info,
        colors=class_colors(model.config.num_classes),
        card=model_card(model, info),
        overwrite=overwrite,
    )
