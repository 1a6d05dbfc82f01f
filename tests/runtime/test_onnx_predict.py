"""Prediction from an ONNX graph alone, without PyTorch: metadata, label agreement, providers, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from perspective_unet.cli import main
from perspective_unet.errors import InputError
from perspective_unet.export.folder import export_folder
from perspective_unet.export.onnx import set_graph_metadata
from perspective_unet.models.onnx_session import PROVIDERS, OnnxSession, resolve_providers
from perspective_unet.runs import load
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predict import predict_onnx
from perspective_unet.runtime.predictor import OnnxPredictor
from perspective_unet.version import __version__
from tests.engine.test_predict import _write_dicom_series
from tests.runtime.conftest import exported

REPO = Path(__file__).resolve().parents[2]
# What the light runtime must run without: the deep-learning stack and the export and training dependencies.
HEAVY = ("torch", "monai", "onnx", "onnxscript", "safetensors", "h5py", "matplotlib", "tensorboard", "yaml")
# A meta-path hook that makes importing any of them fail, as in an environment where they are not installed.
BLOCK_HEAVY = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is not installed here (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocked())
"""


def _labels(folder: Path, name: str = "scan.nii.gz") -> np.ndarray:
    return np.asarray(nib.load(str(folder / name)).dataobj)


def _predict_in_float32(source: str, inputs: str, output: str) -> int:
    """``predict --checkpoint`` in float32: the graph computes in float32, so the PyTorch path must too on every
    processor (``auto`` takes bfloat16 where the CPU has it)."""
    return main(["predict", "--checkpoint", source, "-i", inputs, "-o", output, "--precision", "fp32"])


def test_the_graph_describes_itself(spacing_model, tmp_path):
    checkpoint, graph = spacing_model
    session = OnnxSession(graph, providers="cpu")
    info, expected = session.info(), load(checkpoint).info
    for field in ("plan", "img_size", "class_names", "modality", "intensity", "normalization", "orientation"):
        assert getattr(info, field) == getattr(expected, field), field
    assert info.dataset_name == "tiny" and info.license == "CC0" and info.sources == (graph,)
    folder = export_folder(checkpoint, tmp_path / "folder")
    recorded = json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert session.record.version == __version__ and session.record.weights_sha256 == recorded
    assert session.record.quantization is None
    labels = json.loads(session.metadata["perspective_unet.labels"])
    assert labels["2"]["name"] == "disc" and len(labels["2"]["color"]) == 3
    assert session.in_channels == 1 and session.providers == ["CPUExecutionProvider"]


def test_the_runtime_gives_the_pytorch_paths_labels(spacing_model, scan, tmp_path):
    checkpoint, graph = spacing_model
    for name, source in (("torch", ["--checkpoint", str(checkpoint)]), ("runtime", ["--onnx", str(graph)])):
        fp32 = ["--precision", "fp32"]  # the graph computes in float32: compare with float32 on every processor
        assert main(["predict", *source, "-i", str(scan), "-o", str(tmp_path / name), "--device", "cpu", *fp32]) == 0
    torch_labels, runtime_labels = _labels(tmp_path / "torch"), _labels(tmp_path / "runtime")
    assert len(np.unique(torch_labels)) == 3, "a model that predicts one class would prove nothing"
    # The same graph through PyTorch's kernels (OnnxRuntimeModel): the NumPy kernels give the same labels exactly.
    assert _predict_in_float32(str(graph), str(scan), str(tmp_path / "graph")) == 0
    np.testing.assert_array_equal(runtime_labels, _labels(tmp_path / "graph"))
    # Against the PyTorch model only ONNX Runtime's float rounding remains: a voxel where two classes tie may flip.
    assert (runtime_labels != torch_labels).sum() <= torch_labels.size // 1000


def test_the_runtime_writes_probabilities_and_takes_the_settings(scan, tmp_path):
    _, graph = exported(
        tmp_path / "paper", {"protocol": "paper", "patch_size": [32, 48], "intensity": {"kind": "unit"}}
    )
    settings = InferenceSettings(save_probabilities=True, tta=True, batch_size=2, window=(-100.0, 200.0))
    written = predict_onnx(graph, scan, tmp_path / "out", settings, providers="cpu", progress=False)
    assert [p.name for p in written] == ["scan.nii.gz"]
    probabilities = np.asarray(nib.load(str(tmp_path / "out" / "scan_probabilities.nii.gz")).dataobj)
    assert probabilities.shape == (*nib.load(str(scan)).shape, 3)
    # The paper protocol takes labels at the model's size and probabilities interpolated back: they agree but at edges.
    assert (probabilities.argmax(-1) == _labels(tmp_path / "out")).mean() > 0.9
    predictor = OnnxPredictor.from_file(graph, settings, providers="cpu")
    assert predictor.plan.intensity.window == (-100.0, 200.0) and predictor.class_names == [
        "background",
        "square",
        "disc",
    ]
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_onnx(graph, scan, tmp_path / "out", settings)


def test_a_dicom_series_is_predicted_on_its_own_grid(spacing_model, tmp_path):
    checkpoint, graph = spacing_model
    volume = np.random.default_rng(1).uniform(-150, 300, (4, 30, 26)).astype(np.int16)
    _write_dicom_series(tmp_path / "ct", volume)
    assert main(["predict", "--onnx", str(graph), "-i", str(tmp_path / "ct"), "-o", str(tmp_path / "light")]) == 0
    assert _predict_in_float32(str(checkpoint), str(tmp_path / "ct"), str(tmp_path / "pt")) == 0
    light, reference = _labels(tmp_path / "light", "ct.nii.gz"), _labels(tmp_path / "pt", "ct.nii.gz")
    assert light.shape == (26, 30, 4) and (light != reference).sum() <= reference.size // 1000


def test_prediction_without_pytorch_in_the_process(spacing_model, scan, tmp_path):
    """The honest stand-in for an environment without PyTorch that fits the suite's time: every heavy import fails."""
    checkpoint, graph = spacing_model
    code = BLOCK_HEAVY + textwrap.dedent(
        f"""
        import json, sys
        from perspective_unet.cli import main
        status = main(["predict", "--onnx", {str(graph)!r}, "-i", {str(scan)!r}, "-o", {str(tmp_path / "light")!r}])
        print(json.dumps({{"status": status, "loaded": [n for n in {HEAVY!r} if n in sys.modules]}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"status": 0, "loaded": []}
    assert _predict_in_float32(str(checkpoint), str(scan), str(tmp_path / "torch")) == 0
    light, reference = _labels(tmp_path / "light"), _labels(tmp_path / "torch")
    assert (light != reference).sum() <= reference.size // 1000


def test_unavailable_and_unknown_providers_are_one_line(spacing_model, scan, tmp_path, capsys):
    graph = spacing_model[1]
    available = ["CPUExecutionProvider"]
    assert resolve_providers("auto", available) == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"], available) == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="CUDAExecutionProvider is not available"):
        resolve_providers("cuda,cpu", available)
    import onnxruntime

    missing = next(name for name, full in PROVIDERS.items() if full not in onnxruntime.get_available_providers())
    for providers, message in ((f"{missing},cpu", "is not available in this installation"), ("tpu", "unknown")):
        args = ["predict", "--onnx", str(graph), "-i", str(scan), "-o", str(tmp_path / "out"), "--providers", providers]
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    args = ["predict", "--onnx", str(graph), "-i", str(scan), "-o", str(tmp_path / "o2"), "--device", "cuda"]
    assert main(args) == 2 and "--providers" in capsys.readouterr().err


def test_a_graph_whose_channels_differ_from_what_a_scan_gives_is_one_line(graph_copy, scan, tmp_path, capsys):
    graph = graph_copy
    session = OnnxSession(graph, providers="cpu")
    metadata = dict(session.metadata)
    preprocessing = json.loads(metadata["perspective_unet.preprocessing"])
    preprocessing["plan"]["context_slices"] = 1  # a scan then gives 3 channels, the graph takes 1
    metadata["perspective_unet.preprocessing"] = json.dumps(preprocessing)
    set_graph_metadata(graph, metadata)
    for name in ("preprocessing.json", "labels.json"):
        (graph.parent / name).unlink()
    assert main(["predict", "--onnx", str(graph), "-i", str(scan), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "takes 1 input channel(s) but a scan gives it 3" in error and len(error.splitlines()) == 1


def test_a_graph_whose_labels_name_other_classes_is_one_line(graph_copy, scan, tmp_path, capsys):
    session = OnnxSession(graph_copy, providers="cpu")
    metadata = dict(session.metadata)
    labels = json.loads(metadata["perspective_unet.labels"])
    metadata["perspective_unet.labels"] = json.dumps({**labels, "3": {"name": "extra"}})
    set_graph_metadata(graph_copy, metadata)
    assert main(["predict", "--onnx", str(graph_copy), "-i", str(scan), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "gives 3 classes but its labels.json names 4" in error and len(error.splitlines()) == 1


def test_the_graphs_metadata_wins_over_edited_files_beside_it(graph_copy, caplog):
    graph = graph_copy
    labels = graph.parent / "labels.json"
    labels.write_text(labels.read_text().replace("disc", "renamed"))
    info = OnnxSession(graph, providers="cpu").info()
    assert info.class_names == ("background", "square", "disc")
    assert "differ from the graph's own metadata" in caplog.text


@pytest.mark.slow
def test_a_fresh_environment_without_pytorch_predicts_like_the_pytorch_path(spacing_model, scan, tmp_path):
    """``pip install "perspective-unet[runtime]"`` into a new virtual environment, then ``predict --onnx``."""
    checkpoint, graph = spacing_model
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{REPO}[runtime]"], capture_output=True, text=True
    )
    if install.returncode != 0 and "No matching distribution" in install.stderr + install.stdout:
        pytest.skip(f"no package index reachable to install the runtime's dependencies: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-2000:]
    has_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert has_torch.returncode != 0, "the runtime's install brought PyTorch"
    run = subprocess.run(
        [
            str(environment / "bin" / "perspective-unet"),
            "predict",
            "--onnx",
            str(graph),
            "-i",
            str(scan),
            "-o",
            str(tmp_path / "light"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert _predict_in_float32(str(checkpoint), str(scan), str(tmp_path / "torch")) == 0
    light, reference = _labels(tmp_path / "light"), _labels(tmp_path / "torch")
    assert (light != reference).sum() <= reference.size // 1000
