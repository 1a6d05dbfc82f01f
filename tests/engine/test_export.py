"""Shipping models: the model folder (no pickle), ONNX export with parity, prediction through ONNX Runtime."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import InputError, create_model, from_pretrained, list_models, save_model, save_pretrained
from perspective_unet.cli import main
from perspective_unet.export.folder import export_folder
from perspective_unet.export.onnx import export_onnx, set_graph_metadata
from perspective_unet.plan import Plan
from perspective_unet.runs import load

PLAN = {"protocol": "spacing", "patch_size": [32, 32], "spacing": [1.0, 1.0], "intensity": {"kind": "unit"}}
DATASET = {
    "name": "tiny",
    "class_names": ["background", "square", "disc"],
    "modality": "CT",
    "normalization": "synthetic",
    "intensity": {"kind": "ct_window", "window": [-125.0, 275.0]},
    "orientation": "SPL",
    "license": "CC0",
}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    with torch.no_grad():  # a head that makes every class win somewhere, so that label maps can differ
        model.head.bias.zero_()
        model.head.weight.mul_(1000.0)
    return save_model(
        model,
        tmp_path / "run" / "best.pt",
        plan=PLAN,
        dataset=DATASET,
        train_config={"model": "perspective_unet_tiny", "epochs": 3, "seed": 7},
    )


@pytest.fixture
def scan(tmp_path):
    volume = np.random.default_rng(0).uniform(-150, 300, (44, 40, 4)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 3.0, 1.0])), str(path))
    return path


def test_checkpoint_to_folder_to_model_gives_equal_logits_without_unpickling(checkpoint, tmp_path, monkeypatch):
    folder = export_folder(checkpoint, tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "labels.json",
        "README.md",
    }
    original = torch.load(checkpoint, weights_only=True)

    def no_pickle(*args, **kwargs):
        raise AssertionError("the model folder loader called torch.load")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load(folder)
    model, info = loaded.model, loaded.info
    reference = create_model("perspective_unet_tiny", num_classes=3)
    reference.load_state_dict(original["model"])
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    assert info.plan == Plan.from_dict(PLAN) and list(info.class_names) == DATASET["class_names"]
    labels = json.loads((folder / "labels.json").read_text())
    assert labels["1"]["name"] == "square" and len(labels["1"]["color"]) == 3
    card = (folder / "README.md").read_text()
    assert "1.69 M parameters" in card and "CC0" in card and "seed 7" in card
    for path in folder.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} is a pickle"


def test_save_pretrained_and_from_pretrained_mirror_each_other(tmp_path):
    model = create_model("perspective_unet_tiny", num_classes=4).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_pretrained(model, tmp_path / "m")


def test_a_damaged_model_folder_is_named(checkpoint, tmp_path):
    folder = export_folder(checkpoint, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"model\.safetensors differs from .*SHA-256"):
        from_pretrained(folder)
    other = export_folder(checkpoint, tmp_path / "other")
    small = create_model("perspective_unet_tiny", num_classes=5)
    save_pretrained(small, tmp_path / "five")
    (other / "model.safetensors").write_bytes((tmp_path / "five" / "model.safetensors").read_bytes())
    config = json.loads((other / "config.json").read_text())
    config["weights_sha256"] = json.loads((tmp_path / "five" / "config.json").read_text())["weights_sha256"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"model\.safetensors: its weights do not match its model config"):
        from_pretrained(other)
    intact = export_folder(checkpoint, tmp_path / "intact")
    (intact / "labels.json").unlink()
    with pytest.raises(InputError, match=r"labels\.json is missing"):
        load(intact)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_variant_exports_to_onnx_with_parity(name, tmp_path):
    if name == "perspective_unet":
        pytest.skip("the paper-size variant is exported in the slow test below")
    model = create_model(name, num_classes=3)
    path = save_model(model, tmp_path / "m.pt", plan={**PLAN, "patch_size": [32, 32]}, dataset=DATASET)
    parities = export_onnx(path, tmp_path / "m.onnx", check_shapes=[(1, 1, 32, 32), (2, 1, 48, 32)])
    assert [p.shape for p in parities] == [(1, 1, 32, 32), (2, 1, 48, 32)]
    assert all(p.relative_difference <= 1e-4 for p in parities)


@pytest.mark.slow
def test_the_paper_variant_exports_to_onnx_with_parity(tmp_path):
    model = create_model("perspective_unet", num_classes=9)
    path = save_model(
        model,
        tmp_path / "m.pt",
        plan={**PLAN, "patch_size": [64, 64]},
        dataset={**DATASET, "class_names": [f"c{i}" for i in range(9)]},
    )
    parities = export_onnx(path, tmp_path / "m.onnx", check_shapes=[(1, 1, 64, 64), (2, 1, 48, 80)])
    assert all(p.passed for p in parities)


def test_onnx_parity_on_two_sizes_and_batches_and_the_batch_mixing_mode_is_refused(checkpoint, tmp_path, capsys):
    assert main(["export", "--format", "onnx", str(checkpoint), str(tmp_path / "onnx" / "model.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "input 1x1x32x32" in printed and "input 2x1x16x48" in printed and "tolerance 0.0001" in printed
    assert {p.name for p in (tmp_path / "onnx").iterdir()} == {"model.onnx", "preprocessing.json", "labels.json"}
    released = create_model("perspective_unet_tiny", num_classes=3, scsi_attention="released")
    path = save_model(released, tmp_path / "released.pt", plan=PLAN, dataset=DATASET)
    assert main(["export", "--format", "onnx", str(path), str(tmp_path / "released.onnx")]) == 2
    assert "across the batch" in capsys.readouterr().err
    assert not (tmp_path / "released.onnx").exists()
    official = create_model("perspective_unet_tiny", num_classes=3, scsi_attention="official")
    path = save_model(official, tmp_path / "official.pt", plan=PLAN, dataset=DATASET)
    assert all(p.passed for p in export_onnx(path, tmp_path / "official" / "model.onnx"))


def test_prediction_through_onnx_runtime_equals_the_torch_path(checkpoint, scan, tmp_path):
    assert main(["export", "--format", "onnx", str(checkpoint), str(tmp_path / "onnx" / "model.onnx")]) == 0
    assert main(["export", str(checkpoint), str(tmp_path / "folder")]) == 0
    outputs = {}
    for name, source in (
        ("torch", ["--checkpoint", str(checkpoint)]),
        ("folder", ["--checkpoint", str(tmp_path / "folder")]),
        ("onnx", ["--onnx", str(tmp_path / "onnx" / "model.onnx")]),
    ):
        # The ONNX model runs in float32, so the torch paths do too (auto would take bfloat16 on some processors).
        command = ["predict", *source, "-i", str(scan), "-o", str(tmp_path / name), "--device", "cpu"]
        assert main([*command, "--precision", "fp32"]) == 0
        outputs[name] = np.asarray(nib.load(str(tmp_path / name / "scan.nii.gz")).dataobj)
    assert len(np.unique(outputs["torch"])) > 1, "a model that predicts one class would prove nothing"
    np.testing.assert_array_equal(outputs["folder"], outputs["torch"])
    assert (outputs["onnx"] == outputs["torch"]).mean() > 0.999  # float rounding may flip a pixel at a tie
    loaded = load(tmp_path / "onnx" / "model.onnx")
    assert loaded.info.plan == Plan.from_dict(PLAN) and loaded.model.config.num_classes == 3


def test_an_onnx_file_runs_alone_and_one_without_metadata_or_files_is_named(checkpoint, scan, tmp_path, capsys):
    graph = tmp_path / "onnx" / "model.onnx"
    export_onnx(checkpoint, graph)
    for name in ("preprocessing.json", "labels.json"):
        (tmp_path / "onnx" / name).unlink()
    assert main(["predict", "--onnx", str(graph), "-i", str(scan), "-o", str(tmp_path / "alone")]) == 0
    set_graph_metadata(graph, {})
    out = str(tmp_path / "out")
    assert main(["predict", "--onnx", str(graph), "-i", str(scan), "-o", out]) == 2
    error = capsys.readouterr().err
    assert "carries no perspective-unet metadata and has no preprocessing.json and labels.json" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "out" / "scan.nii.gz").exists()
    with pytest.raises(FileExistsError):
        export_onnx(checkpoint, graph)
