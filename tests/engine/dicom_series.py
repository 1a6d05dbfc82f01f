"""A CT series written with pydicom, one file per slice, for the DICOM tests and the README's commands."""

from __future__ import annotations

import numpy as np

STUDY, SERIES, FRAME_OF_REFERENCE = (
    "1.2.826.0.1.3680043.8.498.1",
    "1.2.826.0.1.3680043.8.498.2",
    "1.2.826.0.1.3680043.8.498.3",
)


def write_series(folder, slices_hu: np.ndarray, row: tuple, column: tuple, spacing=(0.7, 0.9), step=2.5) -> list:
    """A CT series, one file per (rows, columns) slice, along the normal of ``row`` x ``column``; the files are named
    in the reverse of their position so that the reader must sort them. Returns the files in slice order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    normal = np.cross(row, column)
    origin = np.array([-40.0, 25.0, 110.0])
    files = []
    count = len(slices_hu)
    for z, pixels in enumerate(slices_hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, SERIES, FRAME_OF_REFERENCE
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "1",
            "20260101",
            "1200",
            "",
            "",
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, z + 1
        ds.Manufacturer = "tests"
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in origin + z * step * normal]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = step
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16)).tobytes()
        path = folder / f"im{count - z:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
