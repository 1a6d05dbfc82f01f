"""An exported ONNX model run by ONNX Runtime, behind the interface the predict path uses for a torch model.

:class:`OnnxRuntimeModel` is a ``torch.nn.Module`` whose forward hands the batch to an ONNX Runtime session and
returns the logits as a tensor, so the predict path (paper and spacing protocols, sliding windows, mirroring, writing
label maps) runs unchanged without PyTorch's model. :func:`perspective_unet.runs.load` builds it for an ``.onnx``
source, with the inference info of the ``preprocessing.json`` and ``labels.json`` beside the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from perspective_unet.errors import InputError
from perspective_unet.models.pretrained import LABELS_FILE

__all__ = ["OnnxRuntimeModel"]


class _Config:
    """The model facts the predict path reads (classes and input channels), from the graph and labels.json."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.repeat_gray_to_rgb = False


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX file as a module: ``forward(x)`` runs ONNX Runtime on the CPU (float32 in, logits out).

    Args:
        path: The ``.onnx`` file ``perspective-unet export --format onnx`` wrote.
        num_classes: Classes the labels name (checked against the graph's output on the first call).
        threads: ONNX Runtime's intra-op threads; default PyTorch's thread count, so both paths get the same cores.
    """

    batch_dependent = False

    def __init__(self, path: str | os.PathLike[str], num_classes: int, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable files
            raise InputError(f"{path} cannot be loaded by ONNX Runtime ({type(exc).__name__}: {exc}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"{path} is not a segmentation graph of this project (one (B, C, H, W) input expected).")
        self.input_name = inputs[0].name
        channels = inputs[0].shape[1]
        self.config = _Config(num_classes, channels if isinstance(channels, int) else 1)
        self.path = Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: x.detach().to("cpu", torch.float32).numpy()})[0]
        if logits.shape[1] != self.config.num_classes:
            raise InputError(
                f"{self.path} gives {logits.shape[1]} classes but {LABELS_FILE} beside it names "
                f"{self.config.num_classes}; export the model again."
            )
        return torch.from_numpy(logits).to(x.device)
