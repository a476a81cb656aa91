"""Synthetic DICOM series written with pydicom, for the series, SEG and volume tests."""

from __future__ import annotations

import io

import numpy as np


def volume(n=6, rows=24, cols=20, seed=0):
    """A small int16 volume (HU-like) with a bright cube, ``n,rows,cols``."""
    rng = np.random.default_rng(seed)
    v = rng.integers(-50, 50, (n, rows, cols)).astype(np.int16)
    v[1:n - 1, 6:14, 5:12] += 300
    return v


def write_series(vol, *, spacing=(2.5, 0.8, 0.7), tilt_deg=0.0, series_uid=None, study_uid=None, for_uid=None,
                 description="CT thorax", modality="CT", positions=None, instance_numbers=None, with_positions=True,
                 orientation=(1, 0, 0, 0, 1, 0), patient_name="Doe^Jane"):
    """``(name, bytes)`` per slice of ``vol`` (``n,rows,cols`` int16); slice ``k`` at z = k * spacing[0].

    ``tilt_deg`` shifts each slice along the column direction (y) by ``z * tan(tilt)``: a gantry tilt.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    out = []
    ori = np.asarray(orientation, float)
    normal = np.cross(ori[:3], ori[3:])
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.PatientName = patient_name
        ds.PatientID = "PID-123"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.StudyDate = "20250101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1 if instance_numbers is None else instance_numbers[k]
        if with_positions:
            if positions is not None:
                pos = np.asarray(positions[k], float)
            else:
                z = k * spacing[0]
                pos = np.array([-10.0, -20.0, 0.0]) + z * normal + ori[3:] * z * np.tan(np.radians(tilt_deg))
            ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
            ds.ImageOrientationPatient = [str(v) for v in orientation]
        ds.PixelSpacing = [str(spacing[1]), str(spacing[2])]
        ds.SliceThickness = str(spacing[0])
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(vol[k].astype(np.int16)).tobytes()
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        out.append((f"IM{k:04d}.dcm", buf.getvalue()))
    return out


def enhanced_multiframe(vol, *, spacing=(2.0, 0.8, 0.7), order=None):
    """One Enhanced CT multi-frame file of ``vol`` with per-frame positions (frames stored in ``order``)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    order = list(range(vol.shape[0])) if order is None else list(order)
    enhanced_ct = "1.2.840.10008.5.1.4.1.1.2.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = enhanced_ct
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = enhanced_ct
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = vol.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    pm = Dataset()
    pm.PixelSpacing = [str(spacing[1]), str(spacing[2])]
    pm.SliceThickness = str(spacing[0])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelMeasuresSequence = Sequence([pm])
    pv = Dataset()
    pv.RescaleIntercept, pv.RescaleSlope, pv.RescaleType = "-1024", "1", "HU"
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = ["0", "0", f"{k * spacing[0]:.3f}"]
        fg.PlanePositionSequence = Sequence([pp])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray((vol[order] + 1024).astype(np.int16)).tobytes()  # stored = HU + 1024
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ("enhanced.dcm", buf.getvalue())
