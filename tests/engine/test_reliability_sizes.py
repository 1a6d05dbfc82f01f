"""Sizes that come from files are checked against memory before anything is allocated, a full disk while exporting
leaves neither files nor an empty folder, and a conversion or export is never written over its own source."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from tests.engine.test_reliability import one_line_error
from tests.engine.test_reliability_files import predict_args

# 32 x 32 pixels of 1 mm at this spacing are 3.2 million pixels a side: hundreds of terabytes on any machine.
HOSTILE_SPACING = [1e-5, 1e-5]


def tiny_onnx(path: Path, classes: int = 3) -> Path:
    """A graph of the exported form (one (B, 1, H, W) input, (B, classes, H, W) logits): a 1 x 1 convolution."""
    weight = numpy_helper.from_array(np.ones((classes, 1, 1, 1), np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes, "height", "width"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def set_spacing(preprocessing: Path, spacing: list[float]) -> None:
    content = json.loads(preprocessing.read_text())
    content["plan"]["spacing"] = spacing
    preprocessing.write_text(json.dumps(content))


# Sizes from files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["model folder", "onnx"])
def test_a_plan_spacing_that_would_resample_beyond_memory_is_refused_naming_its_file(
    source, untrained_model_folder, tmp_path, capsys
):
    folder = Path(shutil.copytree(untrained_model_folder, tmp_path / "model"))
    set_spacing(folder / "preprocessing.json", HOSTILE_SPACING)
    checkpoint = folder if source == "model folder" else tiny_onnx(folder / "model.onnx")
    args = predict_args(checkpoint, tmp_path)
    if source == "onnx":
        args[1] = "--onnx"
    started = time.monotonic()
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"to the plan's spacing of 1e-05 x 1e-05 mm in {folder / 'preprocessing.json'}" in err
    assert "(3200000 x 3200000 pixels each)" in err and "GB of memory" in err and "image's header" in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_training_refuses_a_plan_json_spacing_whose_slices_cannot_be_held(tiny_dataset, tmp_path, capsys):
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    plan = json.loads((data / "plan.json").read_text())
    plan.update(protocol="spacing", spacing=HOSTILE_SPACING, patch_size=[32, 32])
    plan["intensity"]["scaling"] = "zscore_per_image"
    (data / "plan.json").write_text(json.dumps(plan))
    args = ["train", "--data", str(data), "-o", str(tmp_path / "run"), "--model", "perspective_unet_tiny"]
    assert main([*args, "--batch-size", "2", "--num-workers", "0", "--epochs", "1"]) == 2
    err = one_line_error(capsys)
    assert f"resampling the training slices to the spacing of 1e-05 x 1e-05 mm in {data / 'plan.json'}" in err
    assert "(the largest becomes 3200000 x 3200000 pixels)" in err and f"plan -d {data} --reset" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# Full disks --------------------------------------------------------------------------------------------------------


def test_a_full_disk_while_exporting_a_model_folder_leaves_no_files_and_no_empty_folder(
    untrained_model_folder, tmp_path, capsys, monkeypatch
):
    from safetensors import SafetensorError

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part of the weights")  # what a real full disk leaves: a partial file
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    assert main(["export", str(untrained_model_folder), str(tmp_path / "new" / "model")]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'new' / 'model' / 'model.safetensors'}: the disk is full" in err
    assert not (tmp_path / "new" / "model").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, empty
    assert main(["export", str(untrained_model_folder), str(tmp_path / "kept")]) == 2
    assert "disk is full" in one_line_error(capsys)
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_full_disk_while_exporting_onnx_names_the_graph_file(untrained_model_folder, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name, as the ONNX writer raises it

    monkeypatch.setattr("torch.onnx.export", full_disk)
    assert (
        main(["export", "--format", "onnx", str(untrained_model_folder), str(tmp_path / "graph" / "model.onnx")]) == 2
    )
    assert f"{tmp_path / 'graph' / 'model.onnx'}: the disk is full" in one_line_error(capsys)
    assert list((tmp_path / "graph").iterdir()) == []


# Own sources -------------------------------------------------------------------------------------------------------


def test_convert_official_never_writes_over_its_source(tmp_path, capsys):
    released = tmp_path / "released.pth"
    released.write_bytes(b"the only copy of a released checkpoint")
    (tmp_path / "alias.pth").symlink_to(released)
    for destination in (released, tmp_path / "alias.pth"):
        assert main(["convert-official", str(released), str(destination), "--overwrite"]) == 2
        err = one_line_error(capsys)
        assert f"{destination} is the source" in err and "write the conversion to another file" in err
    assert "by another name" in err
    assert released.read_bytes() == b"the only copy of a released checkpoint"


def test_export_never_writes_over_the_model_folder_or_run_it_reads(
    untrained_model_folder, tiny_dataset, tmp_path, capsys
):
    folder = Path(shutil.copytree(untrained_model_folder, tmp_path / "model"))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert main(["export", str(folder), str(folder), "--overwrite"]) == 2
    assert f"{folder} is the source itself; write the model folder elsewhere" in one_line_error(capsys)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    run = tmp_path / "run"
    save_model(create_model("perspective_unet_tiny", num_classes=3), run / "last.pt")
    (run / "config.json").write_text('{"model": "perspective_unet_tiny", "epochs": 1}\n')
    config = (run / "config.json").read_bytes()
    assert main(["export", str(run / "last.pt"), str(run), "--overwrite"]) == 2
    assert "write the model folder elsewhere" in one_line_error(capsys)
    assert (run / "config.json").read_bytes() == config  # the run's own record, not a model config
