"""``perspective-unet export --format onnx``: a trained model as an ONNX graph that checks itself.

ONNX Runtime's logits are compared with PyTorch's on two input sizes and two batch sizes before anything is written.
Beside ``model.onnx`` go ``preprocessing.json`` and ``labels.json``, so that ``predict --onnx`` sees new scans as the
training data were seen.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perspective_unet.errors import InputError
from perspective_unet.export.folder import class_colors, exported_model
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.pretrained import inference_file_texts
from perspective_unet.outputs import text_writer, write_all

__all__ = ["ONNX_OPSET", "PARITY_TOLERANCE", "OnnxParity", "export_onnx"]

# Opset 18: supported by ONNX Runtime's CPU provider for every operator the model uses.
ONNX_OPSET = 18
# The export is accepted when ONNX Runtime's logits are this close to PyTorch's, relative to the largest logit.
PARITY_TOLERANCE = 1e-4


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
    loaded = exported_model(checkpoint)
    model, info = loaded.model, loaded.info
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
    texts = inference_file_texts(info, model.config.num_classes, class_colors(model.config.num_classes))
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
