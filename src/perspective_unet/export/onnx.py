"""``perspective-unet export --format onnx``: a trained model as a self-describing ONNX graph that checks itself.

ONNX Runtime's logits are compared with PyTorch's on two input sizes and two batch sizes before anything is written.
The graph carries in its ``metadata_props`` the texts of ``preprocessing.json`` and ``labels.json``, the version that
wrote it and the weights' SHA-256 (:mod:`perspective_unet.models.onnx_session`), so ``predict --onnx`` needs the
``.onnx`` file alone; the two files are written beside it too, for people and older readers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perspective_unet.errors import InputError
from perspective_unet.export.folder import class_colors, exported_model
from perspective_unet.models.inference_info import InferenceInfo, inference_file_texts
from perspective_unet.models.onnx_session import GraphRecord, graph_metadata
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.pretrained import weights_sha256
from perspective_unet.outputs import text_writer, write_all

__all__ = [
    "ONNX_OPSET",
    "PARITY_TOLERANCE",
    "ExportedGraph",
    "OnnxParity",
    "check_output",
    "export_onnx",
    "graph_source",
    "set_graph_metadata",
    "write_checked_graph",
    "write_exported",
]

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


@dataclass(frozen=True)
class ExportedGraph:
    """A model ready to be written as a graph: the float32 CPU model, its inference info and what the graph records.

    Attributes:
        model: The model in eval mode, float32, on the CPU.
        info: Its inference info (plan, classes, training data).
        texts: The texts of ``preprocessing.json`` and ``labels.json``.
        record: The version and the weights' hash.
    """

    model: PerspectiveUNet
    info: InferenceInfo
    texts: Mapping[str, str]
    record: GraphRecord


def graph_source(checkpoint: str | os.PathLike[str]) -> ExportedGraph:
    """The one model a checkpoint, run folder or model folder stands for, as a graph is exported from it.

    Raises:
        InputError: The source stands for several models, or its model mixes the samples of a batch
            (``scsi_attention="released"``), which a batch-independent graph cannot hold.
    """
    from perspective_unet.version import __version__

    loaded = exported_model(checkpoint)
    model, info = loaded.model, loaded.info
    if model.batch_dependent:
        raise InputError(
            "this model's SCSI attention runs across the batch (scsi_attention='released'): its output "
            "for one slice depends on the others, which an ONNX graph of any batch size cannot hold. "
            "Export a model with scsi_attention 'tokens' or 'official'."
        )
    model = model.float().cpu().eval()
    texts = inference_file_texts(info, model.config.num_classes, class_colors(model.config.num_classes))
    return ExportedGraph(model, info, texts, GraphRecord(__version__, weights_sha256(model)))


def _check_sizes(model: PerspectiveUNet, info: InferenceInfo) -> list[tuple[int, int, int, int]]:
    """Two sizes (the plan's and another multiple of the size divisor) at batch 1 and 2."""
    divisor = model.config.size_divisor
    height, width = info.img_size
    other = (max(divisor, height - 2 * divisor), width + divisor)
    channels = model.config.in_channels
    return [(1, channels, height, width), (2, channels, *other)]


def set_graph_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Replace the ``metadata_props`` of the graph at ``path`` (rewritten in place)."""
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def write_checked_graph(
    exported: ExportedGraph, path: Path, shapes: Sequence[tuple[int, ...]] | None = None
) -> list[OnnxParity]:
    """Write the float graph with its metadata at ``path`` and check ONNX Runtime's logits against PyTorch's.

    Raises:
        InputError: The logits differ beyond :data:`PARITY_TOLERANCE` (``path`` is left for the caller to remove).
    """
    import onnxruntime

    from perspective_unet.models.ops import onednn_linear

    model = exported.model
    shapes = list(shapes or _check_sizes(model, exported.info))
    names = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
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
    set_graph_metadata(path, graph_metadata(exported.texts, exported.record))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    parities = []
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
    return parities


def write_exported(
    output: Path, texts: Mapping[str, str], write_graph: Callable[[Path], None], *, overwrite: bool
) -> None:
    """Write the graph and the inference files beside it, all or none.

    Raises:
        FileExistsError: The graph exists, or a file beside it describes another model, and ``overwrite`` is False.
    """
    writers: dict[Path, Any] = {output: write_graph}
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


def check_output(output: str | os.PathLike[str], overwrite: bool) -> Path:
    """The graph's path, checked: an ``.onnx`` name, not an existing file unless ``overwrite``."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputError(f"{output}: the ONNX file's name must end in .onnx.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    return output


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
        output: The ``.onnx`` file; ``preprocessing.json`` and ``labels.json`` are written beside it (and their texts
            into the graph's metadata).
        overwrite: Replace existing files.
        check_shapes: Input shapes of the parity check; default two sizes at batch 1 and 2.

    Returns:
        The parity per checked shape (all within :data:`PARITY_TOLERANCE`, or the export raises).

    Raises:
        InputError: The model mixes the samples of a batch (``scsi_attention="released"``), which a batch-independent
            graph cannot hold; or the exported graph's logits differ from PyTorch's beyond the tolerance.
        FileExistsError: An output exists and ``overwrite`` is False.
    """
    output = check_output(output, overwrite)
    exported = graph_source(checkpoint)
    parities: list[OnnxParity] = []

    def write_graph(path: Path) -> None:
        parities.extend(write_checked_graph(exported, path, check_shapes))

    write_exported(output, exported.texts, write_graph, overwrite=overwrite)
    return parities
