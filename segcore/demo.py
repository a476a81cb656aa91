"""Write the demo scans in ``sample_data/demo/`` (one per supported format).

``python -m segcore make-demo-data`` regenerates them: the phantom scans from
the seeded generator, the real CT/MR cases from pyradiomics' test data
(BSD-3-Clause, Harvard Medical School) under ``../shared/data/radiomics``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np

from .phantom import HU_OFFSET, make_phantom

__all__ = ["write_demo_scans", "write_dicom"]


def write_dicom(path: Path, hu: np.ndarray, *, spacing=(0.8, 0.8), modality="CT", window=(40, 400),
                patient_name="Anonymous^Phantom") -> None:
    """Write a 2-D or multi-frame CT-like DICOM with rescale intercept -1024."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path.name), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path.name), "series"])
    ds.PatientName = patient_name
    ds.PatientID = "DEMO-0001"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC-DEMO"
    ds.StudyDate = dt.date(2026, 1, 1).strftime("%Y%m%d")
    ds.Modality = modality
    stored = np.clip(np.rint(hu + HU_OFFSET), 0, 4095).astype(np.uint16)
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
        ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = window[0]
    ds.WindowWidth = window[1]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def _nrrd_to_nifti(image: Path, label: Path, out_img: Path, out_lab: Path, z_range=None, crop=None) -> None:
    import nibabel as nib
    import nrrd

    arr, hdr = nrrd.read(str(image))
    lab, _ = nrrd.read(str(label))
    dirs = np.asarray(hdr["space directions"], dtype=np.float64)
    origin = np.asarray(hdr["space origin"], dtype=np.float64)
    if z_range is not None:
        arr, lab = arr[..., z_range[0]:z_range[1]], lab[..., z_range[0]:z_range[1]]
        origin = origin + dirs[2] * z_range[0]
    affine = np.eye(4)
    affine[:3, :3] = dirs.T
    affine[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    nib.save(nib.Nifti1Image(arr.astype(np.int16), affine), str(out_img))
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), affine), str(out_lab))


def write_demo_scans(out_dir: str | Path, radiomics_dir: str | Path | None = None) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    hu, lab = make_phantom(9_000_001, 512)
    write_dicom(out / "phantom_ct_512.dcm", hu, spacing=(0.7, 0.7))
    cv2.imwrite(str(out / "phantom_ct_512_mask.png"), lab)
    hu2, lab2 = make_phantom(9_000_002, 256)
    cv2.imwrite(str(out / "phantom_ct_256_hu+1024.png"), np.clip(np.rint(hu2 + HU_OFFSET), 0, 4095).astype(np.uint16))
    cv2.imwrite(str(out / "phantom_ct_256_mask.png"), lab2)
    import tifffile

    hu3, _ = make_phantom(9_000_003, 256)
    hu4, _ = make_phantom(9_000_004, 256)
    stack = np.clip(np.rint(np.stack([hu3, hu4]) + HU_OFFSET), 0, 4095).astype(np.uint16)
    tifffile.imwrite(str(out / "phantom_ct_2page_16bit.tif"), stack)
    vol = np.stack([make_phantom(9_000_010 + i, 256)[0] for i in range(4)])
    write_dicom(out / "phantom_ct_multiframe.dcm", vol, spacing=(1.0, 1.0))
    written += ["phantom_ct_512.dcm", "phantom_ct_256_hu+1024.png", "phantom_ct_2page_16bit.tif",
                "phantom_ct_multiframe.dcm"]
    if radiomics_dir is not None and Path(radiomics_dir).is_dir():
        r = Path(radiomics_dir)
        _nrrd_to_nifti(r / "lung1_image.nrrd", r / "lung1_label.nrrd", out / "lung1_ct.nii.gz",
                       out / "lung1_ct_lesion.nii.gz", z_range=(30, 37))
        _nrrd_to_nifti(r / "brain1_image.nrrd", r / "brain1_label.nrrd", out / "brain1_mr.nii.gz",
                       out / "brain1_mr_lesion.nii.gz")
        written += ["lung1_ct.nii.gz", "brain1_mr.nii.gz"]
    return written
