"""``perspective-unet export``: a trained model as a model folder (safetensors, no pickle) or as ONNX.

The ONNX export checks itself: ONNX Runtime's logits against PyTorch's on two input sizes and two batch sizes.
Beside ``model.onnx`` go ``preprocessing.json`` and ``labels.json``, so that ``predict --onnx`` sees new scans as the
training data were seen.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perspective_unet.errors import InputError
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.pretrained import inference_file_texts, write_model_folder
from perspective_unet.outputs import text_writer, write_all
from perspective_unet.runs import RunFolder, load, model_sources

__all__ = ["OnnxParity", "export_folder", "export_onnx", "model_card"]

log = logging.getLogger(__name__)

# Opset 18: supported by ONNX Runtime's CPU provider for every operator the model uses.
ONNX_OPSET = 18
# The export is accepted when ONNX Runtime's logits are this close to PyTorch's, relative to the largest logit.
PARITY_TOLERANCE = 1e-4


def _load(source: str | os.PathLike[str]) -> tuple[PerspectiveUNet, InferenceInfo]:
    paths = model_sources(source)
    if len(paths) != 1:
        raise InputError(f"{source} stands for {len(paths)} checkpoints; export one model at a time.")
    if paths[0].suffix.lower() == ".onnx":
        raise InputError(f"{paths[0]} is an ONNX graph; export a checkpoint or a model folder.")
    loaded = load(paths[0])
    return loaded.model, loaded.info  # type: ignore[return-value]


def _palette(num_classes: int) -> list[list[int]]:
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
    """A Markdown model card: architecture, training data and recipe as recorded, metrics if the run was evaluated
    (an evaluation beside ``info.sources[0]``)."""
    config = model.config
    plan, training = info.plan, info.train_config
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        "# Perspective+ Unet model",
        "",
        "Perspective+ Unet (Hu et al., MICCAI 2024): a bi-path residual encoder, efficient non-local transformer "
        "blocks and a spatial cross-scale integrator in a U-Net. Load it with "
        "`perspective_unet.from_pretrained(folder)` or give the folder to any `--checkpoint`.",
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
    evaluation = _evaluation_of(info.sources[0]) if info.sources else None
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
    model, info = _load(checkpoint)
    return write_model_folder(
        model,
        output,
        info,
        colors=_palette(model.config.num_classes),
        card=model_card(model, info),
        overwrite=overwrite,
    )


@dataclass(frozen=True)
class OnnxParity:
    """ONNX Runtime against PyTorch on one input shape: the largest logit difference over the largest logit."""

    shape: tuple[int, ...]
    relative_difference: float

    @property
    def passed(self) -> bool:
        return self.relative_difference <= PARITY_TOLERANCE


def _check_sizes(model: PerspectiveUNet, info: InferenceInfo) -> list[tuple[int, int, int, int]]:
    """Two sizes (the plan's and another multiple of the size divisor) at batch 1 and 2."""
    divisor = model.config.size_divisor
    height, width = info.img_size
    other = (max(divisor, height - 2 * divisor), width + divisor)
    channels = model.config.in_channels
    return [(1, channels, height, width), (2, channels, *other)]


def export_onnx(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    check_shapes: Sequence[tuple[int, ...]] | None = None,
) -> list[OnnxParity]:
    """Export a model to ONNX (dynamic batch, height and width) and check ONNX Runtime's logits against PyTorch's.

    Args:
        checkpoint: A checkpoint or model folder.
        output: The ``.onnx`` file; ``preprocessing.json`` and ``labels.json`` are written beside it.
        overwrite: Replace existing files.
        check_shapes: Input shapes of the parity check; default two sizes at batch 1 and 2.

    Returns:
        The parity per checked shape (all within :data:`PARITY_TOLERANCE`, or the export raises).

    Raises:
        InputError: The model mixes the samples of a batch (``scsi_attention="released"``), which a batch-independent
            graph cannot hold; or the exported graph's logits differ from PyTorch's beyond the tolerance.
        FileExistsError: An output exists and ``overwrite`` is False.
    """
    import onnxruntime

    from perspective_unet.models.ops import onednn_linear

    output = Path(output)
    if output.suffix != ".onnx":
        raise InputError(f"{output}: the ONNX file's name must end in .onnx.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    model, info = _load(checkpoint)
    if model.batch_dependent:
        raise InputError(
            "this model's SCSI attention runs across the batch (scsi_attention='released'): its output "
            "for one slice depends on the others, which an ONNX graph of any batch size cannot hold. "
            "Export a model with scsi_attention 'tokens' or 'official'."
        )
    model = model.float().cpu().eval()
    shapes = list(check_shapes or _check_sizes(model, info))
    output.parent.mkdir(parents=True, exist_ok=True)
    names = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}

    def write_onnx(path: Path) -> None:
        # The plain operators: backend routes (oneDNN, custom dropout) are for PyTorch only.
        with onednn_linear("off"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(shapes[0]),),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes=names,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        generator = torch.Generator().manual_seed(0)
        for shape in shapes:
            x = torch.randn(shape, generator=generator)
            with torch.no_grad(), onednn_linear("off"):
                expected = model(x).numpy()
            got = session.run(None, {"image": x.numpy()})[0]
            relative = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
            parities.append(OnnxParity(tuple(shape), relative))
        failed = [p for p in parities if not p.passed]
        if failed:
            worst = failed[0]
            raise InputError(
                f"the exported graph's logits differ from PyTorch's by {worst.relative_difference:.2e} "
                f"of the largest logit at input {worst.shape} (tolerance {PARITY_TOLERANCE:g}); "
                "nothing was written."
            )

    parities: list[OnnxParity] = []
    texts = inference_file_texts(info, model.config.num_classes, _palette(model.config.num_classes))
    writers: dict[Path, Any] = {output: write_onnx}
    for name, text in texts.items():
        path = output.parent / name
        if path.exists() and not overwrite:
            # A model folder's own files, when the graph is exported into it, are kept if they say the same.
            if path.read_text() == text:
                continue
            raise FileExistsError(
                f"{path} already exists and describes another model; pass --overwrite to replace "
                "it, or export into another folder."
            )
        writers[path] = text_writer(text)
    write_all(writers)
    return parities
