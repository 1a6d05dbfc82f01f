"""An exported ONNX graph in ONNX Runtime, with what the graph says about itself: no PyTorch needed.

``perspective-unet export --format onnx`` writes into the graph's ``metadata_props`` everything inference needs: the
texts of ``preprocessing.json`` (the plan, the training data's intensity and orientation) and ``labels.json`` (class
names and colors), the version that wrote it, the SHA-256 of the weights (the same hash a model folder's
``config.json`` records for the same weights) and, for a quantized graph, its check against the float graph
(:class:`GraphRecord`, :func:`graph_metadata`). :class:`OnnxSession` runs the graph on the chosen execution
providers (:func:`resolve_providers`) and reads its inference info from that metadata, or from the two files beside
the graph when it has none (graphs of earlier versions); the files are optional.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.errors import InputError
from perspective_unet.models.inference_info import (
    LABELS_FILE,
    PREPROCESSING_FILE,
    InferenceInfo,
    read_inference_info,
)

__all__ = [
    "AUTO_PROVIDERS",
    "GRAPH_FORMAT",
    "PROVIDERS",
    "GraphRecord",
    "OnnxSession",
    "graph_metadata",
    "resolve_providers",
]

log = logging.getLogger(__name__)

# Short names of ONNX Runtime's execution providers, as --providers takes them.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}
# What "auto" takes, in order of preference, where the installed ONNX Runtime has it.
AUTO_PROVIDERS = ("tensorrt", "cuda", "cpu")
GRAPH_FORMAT = "perspective-unet-onnx"
_PREFIX = "perspective_unet."
_FORMAT, _VERSION, _WEIGHTS, _QUANTIZATION = (
    f"{_PREFIX}{k}" for k in ("format", "version", "weights_sha256", "quantization")
)
# The metadata keys of the two inference files' texts.
_FILE_KEYS = {PREPROCESSING_FILE: f"{_PREFIX}preprocessing", LABELS_FILE: f"{_PREFIX}labels"}


def resolve_providers(requested: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """ONNX Runtime's provider names for ``--providers``: short names (``cuda,cpu``) or full ones, in order.

    Args:
        requested: ``"auto"`` or None (TensorRT, CUDA, then the CPU, as far as installed), a comma-separated text or
            a sequence of names.
        available: ``onnxruntime.get_available_providers()``.

    Raises:
        InputError: A name is unknown, or its provider is not in this installation of ONNX Runtime.

    Example:
        >>> resolve_providers("cuda, cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    if requested is None or requested == "auto":
        return [PROVIDERS[name] for name in AUTO_PROVIDERS if PROVIDERS[name] in available]
    names = [n.strip() for n in (requested.split(",") if isinstance(requested, str) else requested) if n.strip()]
    if not names:
        raise InputError("--providers names no provider; give e.g. 'cpu' or 'cuda,cpu' (or 'auto').")
    short = {full: name for name, full in PROVIDERS.items()}
    chosen = []
    for name in names:
        full = PROVIDERS.get(name.lower(), name if name.endswith("ExecutionProvider") else None)
        if full is None:
            raise InputError(
                f"--providers: unknown execution provider {name!r}; choose from {', '.join(PROVIDERS)} (or ONNX "
                "Runtime's full names, such as CPUExecutionProvider)."
            )
        if full not in available:
            have = ", ".join(short.get(p, p) for p in available)
            raise InputError(
                f"--providers: ONNX Runtime's {full} is not available in this installation (available: {have}); "
                "CUDA and TensorRT come with the onnxruntime-gpu package. Choose another provider, e.g. cpu."
            )
        chosen.append(full)
    return chosen


@dataclass(frozen=True)
class GraphRecord:
    """What an exported graph records about itself beside its inference info.

    Attributes:
        version: The perspective-unet version that exported it.
        weights_sha256: SHA-256 of the weights as a model folder stores them (``model.safetensors``).
        quantization: For a quantized graph: its type and its Dice check against the float graph.
    """

    version: str | None = None
    weights_sha256: str | None = None
    quantization: Mapping[str, Any] | None = None


def graph_metadata(
    texts: Mapping[str, str], record: GraphRecord, quantization: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph: the inference files' texts (``inference_file_texts``) and the
    record (``quantization`` replaces the record's)."""
    quantization = quantization if quantization is not None else record.quantization
    metadata = {_FORMAT: GRAPH_FORMAT, **{_FILE_KEYS[name]: text for name, text in texts.items()}}
    if record.version is not None:
        metadata[_VERSION] = record.version
    if record.weights_sha256 is not None:
        metadata[_WEIGHTS] = record.weights_sha256
    if quantization is not None:
        metadata[_QUANTIZATION] = json.dumps(dict(quantization), sort_keys=True)
    return metadata


class OnnxSession:
    """An ONNX graph in ONNX Runtime: ``session(batch)`` maps a float32 (B, C, H, W) batch to its logits.

    Args:
        path: The ``.onnx`` file.
        providers: ``auto`` (or None), or the execution providers to use in order (see :func:`resolve_providers`).
        threads: ONNX Runtime's intra-op threads; None leaves ONNX Runtime's default (every core).

    Attributes:
        path: The file.
        in_channels: The graph's input channels (None when the graph leaves them open).
        metadata: The graph's ``metadata_props``.
        num_classes: The classes its labels name, checked against every output once set (None: not checked).

    Raises:
        InputError: A provider is unknown or unavailable, or the file is no ONNX graph of one (B, C, H, W) input.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime

        self.path = Path(path)
        chosen = resolve_providers(providers, onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        if not self.path.is_file():
            raise InputError(f"{self.path} does not exist; give the .onnx file `perspective-unet export` wrote.")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable files
            raise InputError(f"{self.path} cannot be loaded by ONNX Runtime ({type(exc).__name__}: {exc}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(
                f"{self.path} is not a segmentation graph of this project (one (B, C, H, W) input expected)."
            )
        self.input_name = inputs[0].name
        channels = inputs[0].shape[1]
        self.in_channels: int | None = channels if isinstance(channels, int) else None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.num_classes: int | None = None

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, in order."""
        return list(self.session.get_providers())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits (B, classes, H, W) float32 of a (B, C, H, W) batch.

        Raises:
            InputError: The graph gives another number of classes than :attr:`num_classes`.
        """
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise InputError(
                f"{self.path} gives {logits.shape[1]} classes but its {LABELS_FILE} names {self.num_classes}; "
                "export the model again."
            )
        return logits

    @property
    def record(self) -> GraphRecord:
        """The version, weights hash and quantization check the graph records (None where it records none)."""
        quantization = self.metadata.get(_QUANTIZATION)
        try:
            parsed = json.loads(quantization) if quantization is not None else None
        except json.JSONDecodeError:
            parsed = None
        return GraphRecord(self.metadata.get(_VERSION), self.metadata.get(_WEIGHTS), parsed)

    def info(self) -> InferenceInfo:
        """The graph's inference info: from its metadata, else from ``preprocessing.json`` and ``labels.json`` beside
        it.

        Raises:
            InputError: The graph has neither, or what it has is damaged (the message names the file).
        """
        texts = {name: self.metadata.get(key) for name, key in _FILE_KEYS.items()}
        beside = [self.path.parent / name for name in _FILE_KEYS]
        if all(text is not None for text in texts.values()):
            try:
                preprocessing, labels = (json.loads(texts[name]) for name in _FILE_KEYS)  # type: ignore[arg-type]
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path}: its metadata is damaged ({exc}); export the model again.") from None
            if not isinstance(preprocessing, dict) or not isinstance(labels, dict):
                raise InputError(f"{self.path}: its metadata holds no inference record; export the model again.")
            differing = [p.name for p in beside if p.is_file() and p.read_text() != texts[p.name]]
            if differing:
                log.warning(
                    "%s: %s beside the graph differ from the graph's own metadata; the graph's metadata is used.",
                    self.path,
                    " and ".join(differing),
                )
            info = InferenceInfo.from_files(preprocessing, labels, self.path)
            return info.replace(plan_source=self.path) if info.plan is not None else info
        if all(p.is_file() for p in beside):
            return read_inference_info(self.path.parent).replace(sources=(self.path,))
        raise InputError(
            f"{self.path} carries no perspective-unet metadata and has no {PREPROCESSING_FILE} and {LABELS_FILE} "
            "beside it, so its plan and classes are unknown; export it again with `perspective-unet export --format "
            "onnx`, which writes both."
        )
