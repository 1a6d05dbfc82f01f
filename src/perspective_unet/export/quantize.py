"""``perspective-unet export --format onnx --quantize int8``: a statically quantized graph that is checked before it is
written.

The float graph is exported and checked against PyTorch as usual (:mod:`perspective_unet.export.onnx`), then ONNX
Runtime's static quantization (``quantize_static``: QDQ format, int8 weights per channel, uint8 activations, min-max
calibration) turns it into an int8 graph, calibrated on the network inputs the light runtime feeds the float graph
when it predicts slices of the training data (:func:`calibration_windows`: the same resampling, windows, context
slices and intensities as prediction). The QDQ format keeps the graph usable by every execution provider (TensorRT
reads QDQ graphs; ONNX Runtime's CPU provider fuses them into int8 kernels). Both graphs then predict held-out volumes
of the dataset (its validation split, else its test split: the demo's held-out slices) with the light runtime, and
the int8 graph is written only when its mean Dice stays within :data:`DICE_TOLERANCE` of the float graph's; the check
goes into its metadata.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perspective_unet.data.datasets import VolumeDataset
from perspective_unet.data.layouts.base import DatasetLayout
from perspective_unet.data.layouts.detect import open_dataset
from perspective_unet.errors import InputError
from perspective_unet.export.onnx import (
    ExportedGraph,
    OnnxParity,
    check_output,
    graph_source,
    set_graph_metadata,
    write_checked_graph,
    write_exported,
)
from perspective_unet.intensity import ImageStats
from perspective_unet.metrics import aggregate, score_case
from perspective_unet.models.onnx_session import OnnxSession, graph_metadata
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.inferers import Network, NumpyInferer, numpy_inferer_for
from perspective_unet.runtime.predictor import ScanPredictor

__all__ = [
    "CALIBRATION_SLICES",
    "CHECK_CASES",
    "DICE_TOLERANCE",
    "QUANTIZATIONS",
    "QuantizationCheck",
    "calibration_windows",
    "export_quantized_onnx",
]

QUANTIZATIONS = ("int8",)
# The int8 graph is written when its mean Dice on held-out volumes is at most this much (0.01 = one Dice point)
# below the float graph's.
DICE_TOLERANCE = 0.01
# Training slices whose network inputs calibrate the activations' ranges.
CALIBRATION_SLICES = 32
# Held-out volumes the check predicts (the first ones of the split).
CHECK_CASES = 8
# The operators that run in int8: None quantizes every operator ONNX Runtime can (convolutions, matrix products and
# the element-wise ones between them, so fewer tensors go back and forth between int8 and float: faster than
# quantizing the convolutions and matrix products alone; docs/performance.md).
QUANTIZED_OPERATORS: list[str] | None = None


@dataclass(frozen=True)
class QuantizationCheck:
    """The int8 graph against the float graph on held-out volumes.

    Attributes:
        quantization: ``int8``.
        float_dice: The float graph's mean Dice (legacy protocol, over classes and volumes).
        quantized_dice: The int8 graph's.
        tolerance: The largest drop accepted.
        split: The dataset split the volumes come from.
        cases: The volumes.
        calibration_slices: Training slices the calibration saw.
    """

    quantization: str
    float_dice: float
    quantized_dice: float
    tolerance: float
    split: str
    cases: tuple[str, ...]
    calibration_slices: int

    @property
    def drop(self) -> float:
        """How much lower the int8 graph's mean Dice is (negative when it is higher)."""
        return self.float_dice - self.quantized_dice

    @property
    def passed(self) -> bool:
        return self.drop <= self.tolerance

    def record(self) -> dict[str, Any]:
        """The check as the graph's metadata records it."""
        return {**asdict(self), "cases": list(self.cases)}


def _evenly(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _inferer(exported: ExportedGraph) -> NumpyInferer:
    """The light runtime's inferer of the model's plan, with the default settings (as ``predict --onnx`` runs)."""
    settings = InferenceSettings()
    return numpy_inferer_for(ScanPredictor.resolve(exported.info, settings)["plan"], settings)


def calibration_windows(
    layout: DatasetLayout, inferer: NumpyInferer, network: Network, slices: int = CALIBRATION_SLICES
) -> list[np.ndarray]:
    """The network inputs the light runtime gives ``network`` when it predicts ``slices`` training slices (spread
    over the training cases; each with its context slices), batch by batch.

    Raises:
        InputError: The dataset has no training slices, or their spacing is unknown under the spacing protocol.
    """
    cases = sorted({ref.case for ref in layout.list_slices("train")})
    if not cases:
        raise InputError(f"{layout.root} has no training slices to calibrate the quantization on.")
    cases = _evenly(cases, slices)
    per_case = math.ceil(slices / len(cases))
    context = inferer.plan.context_slices
    windows: list[np.ndarray] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        windows.append(np.array(batch, dtype=np.float32))
        return network(batch)

    for item in VolumeDataset(layout, cases=cases):
        volume, spacing = item["image"], item.get("spacing")
        stats = ImageStats.of(volume) if inferer.plan.intensity.per_image else None
        for z in _evenly(range(volume.shape[0]), per_case):
            block = volume[max(z - context, 0) : z + context + 1]
            try:
                inferer(recording, block, spacing=None if spacing is None else spacing[1:], stats=stats)
            except InputError as exc:
                raise InputError(f"calibration on case {item['case']} of {layout.root}: {exc}") from None
    return windows


def _held_out(layout: DatasetLayout, cases: int) -> tuple[str, list[dict[str, Any]]]:
    for split in ("val", "test"):
        if layout.volume_files(split):
            dataset = VolumeDataset(layout, split)
            items = [dataset[i] for i in range(min(cases, len(dataset)))]
            if any(item["label"] is None for item in items):
                continue
            return split, items
    raise InputError(
        f"{layout.root} has no labeled validation or test volumes to check the quantized graph on; give a dataset "
        "that holds some (--calibration-data)."
    )


def _mean_dice(inferer: NumpyInferer, network: Network, items: Sequence[dict[str, Any]], num_classes: int) -> float:
    scores = []
    for item in items:
        spacing = item.get("spacing")
        labels = inferer(network, item["image"], spacing=None if spacing is None else spacing[1:])
        scores.append(score_case(labels, item["label"], num_classes, protocol="legacy"))
    return float(aggregate(scores, protocol="legacy")["mean_dice"])


def _quantize(float_graph: Path, quantized: Path, windows: list[np.ndarray], input_name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(windows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = quantized.with_name("prepared.onnx")
    # Shape inference and graph optimization first, as ONNX Runtime recommends before quantizing (ONNX's shape
    # inference: the symbolic one fails on the attention's dynamic reshapes).
    quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(quantized),
        Windows(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=QUANTIZED_OPERATORS,
    )


def export_quantized_onnx(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    tolerance: float = DICE_TOLERANCE,
    calibration_slices: int = CALIBRATION_SLICES,
    check_cases: int = CHECK_CASES,
    overwrite: bool = False,
    check_shapes: Sequence[tuple[int, ...]] | None = None,
) -> tuple[list[OnnxParity], QuantizationCheck]:
    """Export a model as a statically quantized int8 ONNX graph, checked on held-out volumes (module docstring).

    Args:
        checkpoint: A checkpoint, run folder or model folder.
        output: The ``.onnx`` file; ``preprocessing.json`` and ``labels.json`` are written beside it.
        data: The dataset to calibrate on (training slices) and check with (validation or test volumes); default
            the training data the checkpoint records.
        tolerance: The largest drop of the mean Dice accepted.
        calibration_slices: Training slices whose network inputs calibrate the quantization.
        check_cases: Held-out volumes the check predicts.
        overwrite: Replace existing files.
        check_shapes: Input shapes of the float graph's parity check against PyTorch.

    Returns:
        The float graph's parity against PyTorch, and the int8 graph's check.

    Raises:
        InputError: No dataset is given or recorded, it lacks training slices or labeled held-out volumes, or the
            int8 graph's mean Dice falls more than ``tolerance`` below the float graph's (nothing is written then).
        FileExistsError: An output exists and ``overwrite`` is False.
    """
    output = check_output(output, overwrite)
    if calibration_slices < 1 or check_cases < 1:
        raise ValueError("--calibration-slices and the number of checked volumes must be at least 1.")
    exported = graph_source(checkpoint)
    data = data if data is not None else exported.info.train_config.get("data")
    if not data:
        raise InputError(
            f"{checkpoint} records no training data to calibrate the quantization on; give the dataset with "
            "--calibration-data."
        )
    layout = open_dataset(data)
    inferer = _inferer(exported)
    with tempfile.TemporaryDirectory(prefix="perspective-unet-quantize-") as folder:
        float_graph, quantized = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        parities = write_checked_graph(exported, float_graph, check_shapes)
        float_session = OnnxSession(float_graph, providers="cpu")
        windows = calibration_windows(layout, inferer, float_session, calibration_slices)
        _quantize(float_graph, quantized, windows, float_session.input_name)
        split, items = _held_out(layout, check_cases)
        num_classes = exported.model.config.num_classes
        check = QuantizationCheck(
            "int8",
            _mean_dice(inferer, float_session, items, num_classes),
            _mean_dice(inferer, OnnxSession(quantized, providers="cpu"), items, num_classes),
            float(tolerance),
            split,
            tuple(str(item["case"]) for item in items),
            calibration_slices,
        )
        if not check.passed:
            raise InputError(
                f"the int8 graph's mean Dice on {len(items)} {split} volume(s) of {layout.root} is "
                f"{check.quantized_dice:.4f}, {check.drop:.4f} below the float graph's {check.float_dice:.4f} "
                f"(tolerance {check.tolerance:g}); nothing was written. Export without --quantize, calibrate on "
                "more slices (--calibration-slices) or accept a larger drop (--dice-tolerance)."
            )
        set_graph_metadata(quantized, graph_metadata(exported.texts, exported.record, check.record()))
        write_exported(output, exported.texts, lambda path: shutil.copyfile(quantized, path), overwrite=overwrite)
    return parities, check
