"""Prediction of files: geometry kept for any orientation, intensities as in training, safe outputs, CLI behavior."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.data.io import read_image
from perspective_unet.data.orientation import to_canonical
from perspective_unet.engine.predict import predict_file, predict_path
from perspective_unet.engine.predictor import Predictor
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec, normalize_intensity, recorded_intensity, resolve_intensity
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.runs import LoadedModel
from perspective_unet.runtime.inference_settings import InferenceSettings
from perspective_unet.runtime.predict import find_inputs, output_name, probability_path

CT_SPEC = {"kind": "ct_window", "window": [-125.0, 275.0]}
# Hounsfield units that the CT window maps to 0, 0.5 and 1: the oracle model below reads them as classes 0, 1, 2.
CLASS_HU = np.array([-500, 75, 600], dtype=np.int16)


class IntensityOracle(torch.nn.Module):
    """A 'model' whose class is the nearest of the normalized intensities -1, 0, 1 (so 0, 0.5, 1 before (x-0.5)/0.5).

    Its labels are known for every voxel, so a test can check that they land on the right voxels of the input's grid.
    """

    def __init__(self) -> None:
        super().__init__()
        self.centers = torch.nn.Parameter(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -50.0 * (x[:, :1] - self.centers) ** 2


def oracle_info(img_size: tuple[int, int], **fields) -> InferenceInfo:
    return InferenceInfo(
        img_size=img_size, class_names=("background", "a", "b"), intensity=IntensitySpec.from_dict(CT_SPEC), **fields
    )


def oracle(img_size: tuple[int, int], **fields) -> LoadedModel:
    """The oracle with a record of its 'training': the paper protocol at ``img_size`` on CT windowed as CT_SPEC."""
    return LoadedModel(IntensityOracle(), oracle_info(img_size, **fields))


def labeled_ct(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random class ids and the int16 CT volume whose voxels the oracle maps back to them."""
    labels = np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)
    return CLASS_HU[labels], labels


def save_nifti(path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))


def canonical_hw(path, orientation: str = "SPL") -> tuple[int, int]:
    """(H, W) of the canonical slices of a file: with it as the model size, the oracle's labels are exact."""
    array, meta = read_image(path)
    return to_canonical(array, meta, orientation).shape[1:]


# A left-posterior-superior affine with the axes permuted (stored i runs along z, j along y, k along x) and anisotropic
# spacing (4 mm, 0.7 mm, 0.9 mm): the canonical (Z, H, W) order differs from the stored one in every axis.
PERMUTED_LPS = np.array([[0.0, 0.0, -0.9, 100.0], [0.0, -0.7, 0.0, 50.0], [4.0, 0.0, 0.0, -20.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    dataset = {"class_names": ["background", "liver", "spleen"], "modality": "CT", "intensity": CT_SPEC}
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_model(model, path, train_config={"img_size": [32, 32]}, dataset=dataset)


# --------------------------------------------------------------------------------------------------------------------
# Geometry: labels land on the input's own voxels, with its affine and header
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "affine",
    [np.diag([0.8, 0.8, 3.0, 1.0]), PERMUTED_LPS, np.diag([-1.2, 0.6, -2.0, 1.0])],
    ids=["ras", "permuted-lps", "flipped-anisotropic"],
)
def test_labels_are_written_on_the_input_grid_for_any_orientation(tmp_path, affine):
    shape = (5, 24, 20) if affine is PERMUTED_LPS else (20, 24, 5)
    volume, expected = labeled_ct(shape)
    source = tmp_path / "scan.nii.gz"
    save_nifti(source, volume, affine)
    out = predict_file(oracle(canonical_hw(source)), source, tmp_path / "pred")

    assert out == tmp_path / "pred" / "scan.nii.gz"
    written = nib.load(str(out))
    assert written.shape == volume.shape
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_allclose(written.header.get_zooms(), nib.load(str(source)).header.get_zooms())
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)


def test_tiny_checkpoint_keeps_shape_affine_and_class_range(tmp_path, checkpoint):
    volume, _ = labeled_ct((5, 24, 20))
    source = tmp_path / "case_0000.nii.gz"
    save_nifti(source, volume, PERMUTED_LPS)
    assert main(["predict", "--checkpoint", str(checkpoint), "-i", str(source), "-o", str(tmp_path / "out")]) == 0
    written = nib.load(str(tmp_path / "out" / "case.nii.gz"))
    labels = np.asarray(written.dataobj)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < 3
    np.testing.assert_allclose(written.affine, PERMUTED_LPS)


def test_orientation_recorded_in_the_checkpoint_is_used(tmp_path):
    volume, expected = labeled_ct((20, 24, 5))
    source = tmp_path / "scan.nii"
    save_nifti(source, volume, PERMUTED_LPS)
    # "stored": slices along the third stored axis, so the model sees (20, 24) slices.
    assert canonical_hw(source, "stored") == (20, 24)
    predictor = Predictor.from_model(IntensityOracle(), oracle_info((20, 24), orientation="stored"))
    assert predictor.orientation == "stored"
    out = predictor.predict_file(source, tmp_path / "scan_pred.nii")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected)


# --------------------------------------------------------------------------------------------------------------------
# Other input kinds: folders, pictures, DICOM series
# --------------------------------------------------------------------------------------------------------------------


def test_folder_input_strips_the_channel_suffix_and_keeps_every_case(tmp_path, checkpoint):
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    for i, name in enumerate(("liver_0000.nii.gz", "spleen_0000.nii.gz", "other.nii")):
        save_nifti(inputs / name, labeled_ct((16, 20, 3 + i), seed=i)[0], np.diag([0.9, 0.9, 2.5, 1.0]))
    (inputs / "notes.txt").write_text("not an image")
    written = predict_path(checkpoint, inputs, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["liver.nii.gz", "other.nii", "spleen.nii.gz"]
    for path, depth in zip(written, (3, 5, 4)):
        assert nib.load(str(path)).shape == (16, 20, depth)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["liver.nii.gz", "other.nii", "spleen.nii.gz"]


def test_png_input_gives_a_png_of_class_ids_with_the_same_size(tmp_path):
    expected = np.random.default_rng(1).integers(0, 3, (20, 28)).astype(np.uint8)
    source = tmp_path / "photo.png"
    Image.fromarray(np.array([0, 128, 255], dtype=np.uint8)[expected]).save(source)
    # The checkpoint names a CT window: a picture is refused, and with the flag scaled by its 8-bit range (it holds no
    # Hounsfield units).
    with pytest.raises(InputError, match="photo.png: an 8-bit picture does not fit a model trained on CT"):
        predict_file(oracle((20, 28)), source, tmp_path / "out")
    settings = InferenceSettings(save_probabilities=True, allow_modality_mismatch=True)
    out = predict_file(oracle((20, 28)), source, tmp_path / "out", settings)
    assert out.name == "photo.png"
    labels = np.asarray(Image.open(out))
    assert labels.shape == (20, 28)
    np.testing.assert_array_equal(labels, expected)
    probabilities = np.load(tmp_path / "out" / "photo_probabilities.npz")
    assert probabilities["probabilities"].shape == (3, 20, 28)
    assert list(probabilities["class_names"]) == ["background", "a", "b"]


def _write_dicom_series(folder, volume_zyx: np.ndarray, spacing=(0.8, 0.9, 3.0)) -> None:
    import SimpleITK

    folder.mkdir()
    image = SimpleITK.GetImageFromArray(volume_zyx)
    image.SetSpacing(spacing)
    writer = SimpleITK.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.42"
    for z in range(volume_zyx.shape[0]):
        piece = image[:, :, z]
        position = "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z)))
        tags = {
            "0008|0060": "CT",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(z + 1),
            "0020|0032": position,
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_series_folder_gives_one_nifti_on_its_grid(tmp_path):
    volume_zyx, expected_zyx = labeled_ct((4, 16, 20))
    series = tmp_path / "ct_series"
    _write_dicom_series(series, volume_zyx)
    assert find_inputs(series) == ([series], False)
    out = predict_file(oracle(canonical_hw(series)), series, tmp_path / "out")
    assert out.name == "ct_series.nii.gz"
    written = nib.load(str(out))
    _, meta = read_image(series)
    np.testing.assert_allclose(written.affine, meta["affine"])
    np.testing.assert_allclose(written.header.get_zooms(), (0.8, 0.9, 3.0))
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.transpose(expected_zyx, (2, 1, 0)))


# --------------------------------------------------------------------------------------------------------------------
# Probabilities and test-time augmentation
# --------------------------------------------------------------------------------------------------------------------


def test_probabilities_sum_to_one_and_share_the_geometry(tmp_path, checkpoint):
    volume, _ = labeled_ct((5, 24, 20))
    source = tmp_path / "scan.nii.gz"
    save_nifti(source, volume, PERMUTED_LPS)
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "-i",
        str(source),
        "-o",
        str(tmp_path / "out"),
        "--save-probabilities",
        "--tta",
    ]
    assert main(args) == 0
    probabilities = nib.load(str(tmp_path / "out" / "scan_probabilities.nii.gz"))
    data = probabilities.get_fdata()
    assert data.shape == (5, 24, 20, 3)
    np.testing.assert_allclose(probabilities.affine, PERMUTED_LPS)
    np.testing.assert_allclose(data.sum(axis=-1), 1.0, atol=2e-3)
    labels = np.asarray(nib.load(str(tmp_path / "out" / "scan.nii.gz")).dataobj)
    agree = (data.argmax(axis=-1) == labels).mean()
    assert agree > 0.95  # argmax of the stored probabilities is the label map up to float16 ties


def test_tta_runs_and_keeps_a_flip_equivariant_prediction(tmp_path):
    volume, expected = labeled_ct((6, 16, 3))
    source = tmp_path / "scan.nii.gz"
    save_nifti(source, volume, np.eye(4))
    out = predict_file(oracle(canonical_hw(source)), source, tmp_path / "tta.nii.gz", InferenceSettings(tta=True))
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected)


# --------------------------------------------------------------------------------------------------------------------
# Safe outputs and clear errors
# --------------------------------------------------------------------------------------------------------------------


def _two_case_folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a_0000.nii.gz", "b_0000.nii.gz"):
        save_nifti(inputs / name, labeled_ct((12, 12, 2))[0], np.eye(4))
    return inputs


def test_existing_outputs_are_never_replaced_without_overwrite(tmp_path, checkpoint, capsys):
    inputs = _two_case_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.nii.gz").write_bytes(b"precious")
    args = ["predict", "--checkpoint", str(checkpoint), "-i", str(inputs), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "b.nii.gz" in err and "nothing was written" in err
    # All outputs are checked before any is written: a.nii.gz was not written either.
    assert sorted(p.name for p in out.iterdir()) == ["b.nii.gz"]
    assert (out / "b.nii.gz").read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert nib.load(str(out / "b.nii.gz")).shape == (12, 12, 2)
    assert (out / "a.nii.gz").exists()


def test_probability_outputs_count_as_existing_outputs(tmp_path, checkpoint):
    inputs = _two_case_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_probabilities.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="a_probabilities"):
        predict_path(checkpoint, inputs, out, InferenceSettings(save_probabilities=True), progress=False)
    assert [p.name for p in out.iterdir()] == ["a_probabilities.nii.gz"]


def test_corrupt_input_is_named_and_leaves_no_output(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 this is not a complete gzip stream")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "-i", str(bad), "-o", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("perspective-unet predict: error:")
    assert "broken.nii.gz" in errors[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_corrupt_file_in_a_folder_stops_with_its_name_and_no_partial_files(tmp_path, checkpoint):
    inputs = _two_case_folder(tmp_path)
    (inputs / "c_0000.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="c_0000.nii.gz") as info:
        predict_path(checkpoint, inputs, out, progress=False)
    assert "2 of 3 outputs" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # complete ones; no temporaries


def test_output_clashes_and_bad_targets_are_refused(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_nifti(inputs / "x_0000.nii.gz", labeled_ct((8, 8, 2))[0], np.eye(4))
    save_nifti(inputs / "x.nii.gz", labeled_ct((8, 8, 2))[0], np.eye(4))
    with pytest.raises(InputError, match="both be written"):
        predict_path(checkpoint, inputs, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="give a folder"):
        predict_path(checkpoint, inputs, tmp_path / "one.nii.gz", progress=False)
    with pytest.raises(InputError, match="JPEG"):
        predict_path(checkpoint, inputs / "x.nii.gz", tmp_path / "labels.jpg", progress=False)
    with pytest.raises(InputError, match="is the input itself"):
        predict_path(checkpoint, inputs / "x.nii.gz", inputs / "x.nii.gz", overwrite=True, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        predict_path(checkpoint, tmp_path / "missing.nii.gz", tmp_path / "out", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        predict_path(checkpoint, empty, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------------------------------
# Intensities and names
# --------------------------------------------------------------------------------------------------------------------


def test_resolve_intensity_prefers_the_user_then_the_record_then_the_text():
    ct = IntensitySpec.from_dict(CT_SPEC)
    assert resolve_intensity(ct) == ct
    assert resolve_intensity(ct, window=(-100, 200)) == IntensitySpec("ct_window", window=(-100.0, 200.0))
    assert resolve_intensity(ct, mr_normalize=True).kind == "percentile_minmax"
    text = "CT: HU clipped to [-160, 240] (given), then (x - -160) / 400 -> [0, 1]"
    assert recorded_intensity(None, text) == IntensitySpec("ct_window", window=(-160.0, 240.0))
    assert recorded_intensity(None, modality="MR").kind == "percentile_minmax"
    assert recorded_intensity(None) is None and resolve_intensity(None) is None
    with pytest.raises(ValueError, match="not both"):
        resolve_intensity(None, window=(0, 1), mr_normalize=True)
    with pytest.raises(ValueError, match="LOW < HIGH"):
        resolve_intensity(None, window=(10, -10))
    with pytest.raises(ValueError, match="intensity kind"):
        recorded_intensity({"kind": "zscore"})


def test_a_checkpoint_recording_an_unknown_intensity_is_refused_naming_it(tmp_path):
    model = create_model("perspective_unet_tiny", num_classes=3)
    path = save_model(model, tmp_path / "odd.pt", dataset={"intensity": {"kind": "zscore"}})
    with pytest.raises(InputError, match=r"odd\.pt records an unknown intensity normalization"):
        Predictor.from_source(path)


def test_normalize_intensity_kinds_and_the_warned_fallback(caplog):
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 2000.0])
    ct = IntensitySpec.from_dict(CT_SPEC)
    np.testing.assert_allclose(normalize_intensity(hu, ct), [0, 0, 0.5, 1, 1])
    mr = normalize_intensity(np.arange(1000.0), IntensitySpec("percentile_minmax", percentiles=(0.5, 99.5)))
    assert mr.min() == 0.0 and mr.max() == 1.0 and mr.dtype == np.float32
    np.testing.assert_allclose(
        normalize_intensity(np.array([0, 255], dtype=np.uint8), IntensitySpec("picture")), [0, 1]
    )
    unit = np.array([0.0, 0.25, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(normalize_intensity(unit, None), unit)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(normalize_intensity(hu.astype(np.int16), None, source="x.nii"), [0, 0, 0.5, 1, 1])
    assert "Synapse window" in caplog.text and "--window" in caplog.text and "x.nii" in caplog.text
    with pytest.raises(InputError, match="NaN"):
        normalize_intensity(np.array([np.nan, 1.0]), ct, source="y.nii")


def test_checkpoint_without_intensity_record_warns_and_window_option_overrides(tmp_path, caplog):
    model = IntensityOracle()
    volume, expected = labeled_ct((6, 16, 3))
    source = tmp_path / "scan.nii.gz"
    save_nifti(source, volume, np.eye(4))
    loaded = LoadedModel(model, InferenceInfo(img_size=canonical_hw(source)))
    with caplog.at_level(logging.WARNING):
        out = predict_file(loaded, source, tmp_path / "a.nii.gz")
    assert "assuming CT" in caplog.text
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), expected)
    # A window that puts every voxel of classes 0 and 1 below its lower end: both become class 0.
    out = predict_file(loaded, source, tmp_path / "b.nii.gz", InferenceSettings(window=(100, 700)))
    predicted = np.asarray(nib.load(str(out)).dataobj)
    assert set(np.unique(predicted[expected < 2])) == {0}


def test_output_names():
    assert output_name("a/case_0000.nii.gz") == "case.nii.gz"
    assert output_name("a/case_0001.nii.gz") == "case_0001.nii.gz"
    assert output_name("a/_0000.nii") == "_0000.nii"
    assert output_name("a/scan.mha") == "scan.mha"
    assert output_name("a/scan.mhd") == "scan.nii.gz"
    assert output_name("a/photo.JPG") == "photo.png"
    assert probability_path("o/case.nii") == probability_path("o/case.nii.gz")
    assert probability_path("o/case.mha").name == "case_probabilities.npz"


def test_the_fallback_warning_is_given_once_per_run(tmp_path, caplog):
    inputs = _two_case_folder(tmp_path)
    loaded = LoadedModel(IntensityOracle(), InferenceInfo(img_size=canonical_hw(inputs / "a_0000.nii.gz")))
    with caplog.at_level(logging.WARNING):
        written = predict_path(loaded, inputs, tmp_path / "out", progress=False)
    assert len(written) == 2
    assert caplog.text.count("assuming CT") == 1
