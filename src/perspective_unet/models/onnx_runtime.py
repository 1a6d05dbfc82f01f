"""An exported ONNX model run by ONNX Runtime, behind the interface the PyTorch predict path uses for a torch model.

:class:`OnnxRuntimeModel` is a ``torch.nn.Module`` whose forward hands the batch to an
:class:`~perspective_unet.models.onnx_session.OnnxSession` and returns the logits as a tensor, so the PyTorch paths
(evaluation, ensembles, ``--checkpoint MODEL.onnx``) run an exported graph unchanged. :func:`perspective_unet.runs.load`
builds it for an ``.onnx`` source. Prediction without PyTorch (``predict --onnx``) uses the session directly:
:mod:`perspective_unet.runtime`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from perspective_unet.models.onnx_session import OnnxSession

__all__ = ["OnnxRuntimeModel"]


class _Config:
    """The model facts the predict path reads (classes and input channels), from the graph and its labels."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.repeat_gray_to_rgb = False


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX file as a module: ``forward(x)`` runs ONNX Runtime (float32 in, logits out, on ``x``'s device).

    Args:
        source: The ``.onnx`` file ``perspective-unet export --format onnx`` wrote, or its session.
        num_classes: Classes the labels name (checked against the graph's output on every call).
        threads: ONNX Runtime's intra-op threads for a file; default PyTorch's thread count, so both paths get the
            same cores.
        providers: ONNX Runtime's execution providers for a file (``auto``: TensorRT and CUDA where installed, then
            the CPU).
    """

    batch_dependent = False

    def __init__(
        self,
        source: str | os.PathLike[str] | OnnxSession,
        num_classes: int,
        threads: int | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(source, OnnxSession):
            source = OnnxSession(source, providers=providers, threads=int(threads or torch.get_num_threads()))
        source.num_classes = num_classes
        self.session = source
        self.path = source.path
        self.config = _Config(num_classes, source.in_channels or 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session(x.detach().to("cpu", torch.float32).numpy())).to(x.device)
