"""DICOM SEG output: segments coded by class, geometry equal to the source series, the NIfTI output's labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from perspective_unet import create_model, save_model
from perspective_unet.cli import main
from perspective_unet.data.dicom_seg import segment_code
from perspective_unet.engine.predict import predict_path
from perspective_unet.errors import InputError
from perspective_unet.intensity import IntensitySpec
from perspective_unet.models.inference_info import InferenceInfo
from perspective_unet.runs import LoadedModel
from tests.engine.dicom_series import FRAME_OF_REFERENCE, SERIES, STUDY, write_series
from tests.engine.test_predict import CT_SPEC, IntensityOracle, canonical_hw, labeled_ct, save_nifti

highdicom = pytest.importorskip("highdicom", reason="DICOM SEG output needs highdicom (pip install '.[dicom]')")
pydicom = pytest.importorskip("pydicom")

CLASS_NAMES = ("background", "liver", "kidney_left")


def oracle_model(img_size) -> LoadedModel:
    info = InferenceInfo(img_size=img_size, class_names=CLASS_NAMES, intensity=IntensitySpec.from_dict(CT_SPEC))
    return LoadedModel(IntensityOracle(), info)


ORIENTATIONS = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    # rotated 30 degrees about the z axis and tilted: neither row nor column lies along a patient axis
    "oblique": ((0.866025, 0.5, 0.0), (-0.171010, 0.296198, -0.939693)),
    # rows run to the patient's right, columns from feet to head: flips on two axes and a coronal plane
    "flipped-coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_dicom_seg_reads_back_as_the_nifti_label_map_with_the_series_geometry(tmp_path, orientation):
    row, column = ORIENTATIONS[orientation]
    slices_hu, expected = labeled_ct((4, 11, 13), seed=3)  # (slices, rows, columns)
    expected[:, :3] = 0  # a background band, and a slice with no label at all: its frame is left out
    expected[1] = 0
    slices_hu = np.array([-500, 75, 600], dtype=np.int16)[expected]
    files = write_series(tmp_path / "ct", slices_hu, row, column)
    model = oracle_model(canonical_hw(tmp_path / "ct"))

    nifti = predict_path(model, tmp_path / "ct", tmp_path / "nifti", progress=False)[0]
    seg_path = predict_path(model, tmp_path / "ct", tmp_path / "seg", progress=False, output_format="dicom-seg")[0]
    assert seg_path.name == "ct.dcm"

    seg = highdicom.seg.segread(str(seg_path))
    sources = [pydicom.dcmread(str(f)) for f in files]
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert seg.StudyInstanceUID == STUDY and seg.SeriesInstanceUID != SERIES
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    # Segments: one per foreground class, named and coded.
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["liver", "kidney_left"]
    liver = seg.get_segment_description(1)
    assert (liver.segmented_property_category.value, liver.segmented_property_type.value) == ("91772007", "10200004")
    assert liver.segmented_property_type.meaning == "Liver" and liver.segmented_property_type.scheme_designator == "SCT"
    kidney = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeValue == "64033007" and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    # Geometry: every frame lies on its source slice.
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient], (*row, *column), atol=1e-6
    )
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], (0.7, 0.9))
    by_uid = {s.SOPInstanceUID: s for s in sources}
    framed = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-4)
        framed.add(source.SOPInstanceUID)
    assert framed == {s.SOPInstanceUID for z, s in enumerate(sources) if z != 1}  # the empty slice has no frame

    # The label map: per source file, the labels the test drew, and the NIfTI output's slice at that position.
    frames = seg.get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in sources], combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(frames, expected)
    image = nib.load(str(nifti))
    labels = np.asarray(image.dataobj)
    to_voxel = np.linalg.inv(image.affine)
    for source, frame in zip(sources, frames):
        ras = np.array([-1.0, -1.0, 1.0]) * np.array([float(v) for v in source.ImagePositionPatient])
        i, j, k = np.rint(to_voxel[:3, :3] @ ras + to_voxel[:3, 3]).astype(int)
        assert (i, j) == (0, 0)
        np.testing.assert_array_equal(labels[:, :, k].T, frame)


def test_segment_codes_of_the_datasets_names():
    assert segment_code("RV").type == ("53085002", "Right ventricle")
    assert segment_code("Myocardium").type[0] == "49848007"
    assert segment_code("Right Kidney").laterality == ("24028007", "Right")
    assert segment_code("something else") == segment_code("class 3")


def test_non_dicom_input_with_dicom_seg_is_refused_before_anything_is_written(tmp_path, capsys):
    source = tmp_path / "scan_0000.nii.gz"
    save_nifti(source, labeled_ct((12, 10, 3))[0], np.diag([0.9, 0.9, 2.5, 1.0]))
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=3)
    checkpoint = save_model(model, tmp_path / "model.pt", train_config={"img_size": [32, 32]})
    argv = ["predict", "--checkpoint", str(checkpoint), "-i", str(source), "-o", str(tmp_path / "out")]
    assert main([*argv, "--output-format", "dicom-seg"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(source) in error and "DICOM series" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=r"\.dcm outputs are DICOM SEG"):
        predict_path(model, source, tmp_path / "x.dcm", progress=False)
    assert not (tmp_path / "x.dcm").exists()
