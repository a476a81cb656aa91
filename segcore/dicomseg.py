"""DICOM SEG export and import (with highdicom), referencing the source DICOM series.

Label volumes are ``D,H,W`` uint8 on the scan's grid (``Scan.pixels``), class ids 0..K-1 (0 = background).

How the SEG references its source
---------------------------------
:func:`segcore.series.load_series` de-identifies: it keeps no patient name, ID, birth date, accession number or
study date. It does keep, in ``Scan.metadata["dicom_refs"]``, the identifiers of the *images*: Study, Series,
Frame-of-Reference and SOP Class UIDs, each slice's SOP Instance UID (and frame number), position and the
plane geometry. :func:`write_seg` builds minimal source datasets from those (no pixels, empty patient and study
attributes) and gives them to highdicom, so the SEG:

* references every source slice by SOP Instance UID (ReferencedSeriesSequence, and per frame in the
  DerivationImageSequence), shares the study, the frame of reference and the plane positions, so viewers
  (OHIF, 3D Slicer, PACS) overlay it on the source series;
* carries empty patient attributes (type 2): segcore never stores them. Systems that file objects by patient
  ID rather than by Study Instance UID need them; pass the original pydicom datasets as ``source`` instead of
  the Scan (e.g. on a site where the de-identification is done elsewhere) and highdicom copies them.

A scan that did not come from a DICOM series (PNG, TIFF, NIfTI, NRRD, a single DICOM file loaded by
``load_scan``) has none of these UIDs and no frame of reference: :func:`write_seg` refuses it with a
:class:`ValueError` that says so and points to the NIfTI label volume (:func:`segcore.viz.nifti_bytes`).

Segments: one per foreground class present in the volume, BINARY, empty frames omitted. The coded
category/type of each segment comes from the class name (:data:`CLASS_CODES`, SNOMED CT): names containing
"lesion", "tumo(u)r", "nodule", "mass" or "metasta" -> Morphologically Abnormal Structure / Lesion; "organ" and
organ names -> Anatomical Structure / Organ; anything else -> Tissue / Tissue. The algorithm identification
names segcore and the model version; the segment algorithm type is SEMIAUTOMATIC when a person corrected the
mask, else AUTOMATIC.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .io import Scan, ScanError
from .limits import LimitExceeded, Limits

__all__ = ["CLASS_CODES", "SegNotOffered", "read_seg", "seg_not_offered_reason", "write_seg"]

# (category, type) as (code value, meaning) in SNOMED CT, chosen from the class name (see the module docstring)
CLASS_CODES = {
    "lesion": (("49755003", "Morphologically Abnormal Structure"), ("52988006", "Lesion")),
    "organ": (("91723000", "Anatomical Structure"), ("91772007", "Organ")),
    "tissue": (("85756007", "Tissue"), ("85756007", "Tissue")),
}
_LESION_WORDS = ("lesion", "tumor", "tumour", "nodule", "mass", "metasta", "cancer", "neoplasm")
_ORGAN_WORDS = ("organ", "liver", "kidney", "spleen", "lung", "heart", "pancrea", "prostate", "brain", "bladder")
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class SegNotOffered(ValueError):
    """The scan has no DICOM source a SEG could reference (the message says why and what to use instead)."""


def _kind(name: str) -> str:
    low = name.lower()
    if any(w in low for w in _LESION_WORDS):
        return "lesion"
    if any(w in low for w in _ORGAN_WORDS):
        return "organ"
    return "tissue"


def seg_not_offered_reason(scan: Scan) -> str | None:
    """Why a DICOM SEG cannot be written for ``scan`` (None when it can): for a page to explain the missing button."""
    refs = (scan.metadata or {}).get("dicom_refs") or {}
    if not refs:
        what = f"a {scan.format.upper() or 'non-DICOM'} file" if scan.format != "dicom" else \
            "a single DICOM file loaded without its series"
        return (f"DICOM SEG is not offered for '{scan.source_name}': it is {what}, which carries no DICOM "
                "study/series/SOP instance UIDs or frame of reference for a SEG to reference. Download the NIfTI "
                "label volume instead (on the scan's own grid), or load the DICOM files as a series.")
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID")
               if not refs.get(k)]
    if missing or not all(refs.get("sop_instance_uids") or []):
        return (f"DICOM SEG is not offered for '{scan.source_name}': the source series lacks "
                f"{', '.join(missing) or 'SOP Instance UIDs'}, which a SEG must reference. Download the NIfTI label "
                "volume instead.")
    if any(p is None for p in refs.get("positions") or [None]) or refs.get("ImageOrientationPatient") is None:
        return (f"DICOM SEG is not offered for '{scan.source_name}': the source images have no position/orientation "
                "(ImagePositionPatient/ImageOrientationPatient). Download the NIfTI label volume instead.")
    if any(f is not None for f in refs.get("frame_numbers") or []):
        return (f"DICOM SEG is not offered for '{scan.source_name}' from the de-identified scan: it is an enhanced "
                "multi-frame object; pass the original pydicom dataset as the source, or download the NIfTI label "
                "volume.")
    return None


def _minimal_sources(scan: Scan) -> list:
    """One pixel-less dataset per slice holding only what a SEG needs to reference it (see the module docstring)."""
    from pydicom.dataset import Dataset

    refs = scan.metadata["dicom_refs"]
    out = []
    thickness = refs.get("SliceThickness") or (scan.spacing[0] if scan.spacing and len(scan.spacing) == 3 else 1.0)
    for uid, pos in zip(refs["sop_instance_uids"], refs["positions"]):
        ds = Dataset()
        ds.SOPClassUID = refs["SOPClassUID"]
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = refs["StudyInstanceUID"]
        ds.SeriesInstanceUID = refs["SeriesInstanceUID"]
        ds.FrameOfReferenceUID = refs["FrameOfReferenceUID"]
        ds.Modality = refs.get("Modality") or scan.modality
        ds.Rows, ds.Columns = int(refs["Rows"]), int(refs["Columns"])
        ds.PixelSpacing = [f"{v:.6g}" for v in (refs.get("PixelSpacing") or scan.slice_spacing(0) or (1.0, 1.0))]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in refs["ImageOrientationPatient"]]
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.SliceThickness = f"{float(thickness):.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        # type-2 patient/study attributes: present and empty (segcore keeps none of them)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "AccessionNumber", "StudyID"):
            setattr(ds, kw, "")
        out.append(ds)
    return out


def write_seg(label_volume: np.ndarray, source: Scan | Sequence[Any], class_names: Sequence[str],
              model_version: str, corrected: bool, *, series_description: str = "segcore segmentation") -> bytes:
    """A DICOM SEG (BINARY, one segment per foreground class present) referencing the source series.

    Parameters
    ----------
    label_volume : np.ndarray
        ``D,H,W`` (or ``H,W`` for a one-image series) integer labels on the source grid, slice ``k`` on the
        ``k``-th source image in the scan's sorted order.
    source : Scan or sequence of pydicom.Dataset
        A scan from :func:`segcore.series.load_series` (minimal source datasets are built from its kept UIDs),
        or the original datasets in the scan's slice order (their patient/study attributes are copied).
    class_names : sequence of str
        Name of each class id (index 0 = background); decides the segment's codes (see :data:`CLASS_CODES`).
    model_version : str
        Written in the algorithm identification.
    corrected : bool
        A person edited the mask: segment algorithm type SEMIAUTOMATIC, else AUTOMATIC.

    Returns
    -------
    bytes
        The SEG file (Explicit VR Little Endian).

    Raises
    ------
    SegNotOffered
        The source is not a DICOM series (see :func:`seg_not_offered_reason`).
    ValueError
        The label volume does not match the source grid, has labels without a class name, or is empty.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(label_volume)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"label_volume must be an integer D,H,W volume. Got shape {labels.shape}, {labels.dtype}.")
    if isinstance(source, Scan):
        reason = seg_not_offered_reason(source)
        if reason:
            raise SegNotOffered(reason)
        sources = _minimal_sources(source)
    else:
        sources = list(source)
    if not sources:
        raise ValueError("write_seg needs the source images (a Scan from load_series or pydicom datasets).")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (len(sources), rows, cols):
        raise ValueError(f"label_volume has shape {labels.shape}; the source series is {len(sources)} slice(s) of "
                         f"{rows}x{cols}.")
    present = sorted(int(c) for c in np.unique(labels) if c != 0)
    if not present:
        raise ValueError("The label volume is empty: a DICOM SEG needs at least one labelled voxel.")
    if present[-1] >= len(class_names):
        raise ValueError(f"Label {present[-1]} has no name: class_names has {len(class_names)} entries "
                         f"({list(class_names)}).")
    from . import __version__

    algo = hd.AlgorithmIdentificationSequence(name="segcore", family=codes.cid7162.ArtificialIntelligence,
                                              version=str(model_version or "unknown"))
    algo_type = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if corrected else \
        hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    descriptions = []
    seg_array = np.zeros(labels.shape, np.uint8)
    for number, c in enumerate(present, start=1):
        (cat_v, cat_m), (typ_v, typ_m) = CLASS_CODES[_kind(class_names[c])]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(class_names[c])[:64],
            segmented_property_category=hd.sr.CodedConcept(cat_v, "SCT", cat_m),
            segmented_property_type=hd.sr.CodedConcept(typ_v, "SCT", typ_m),
            algorithm_type=algo_type, algorithm_identification=algo))
        seg_array[labels == c] = number
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=seg_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="segcore", manufacturer_model_name="segcore", software_versions=__version__,
        device_serial_number="none", omit_empty_frames=True, series_description=series_description,
        content_label="SEGCORE", content_description=("corrected" if corrected else "automatic") + " segmentation")
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def read_seg(data: bytes, scan: Scan, class_names: Sequence[str] | None = None, *,
             limits: Limits | None = None) -> np.ndarray:
    """A SEG file as a ``D,H,W`` uint8 label volume on ``scan``'s grid (a starting mask).

    Frames are placed by the SOP Instance UID of the source image they reference (by plane position, in the
    same frame of reference, when a frame references no image). Segments map to class ids by label (case-insensitive match in ``class_names``),
    else to their segment number; where segments overlap, the later one wins. FRACTIONAL segments are
    thresholded at one half. The SEG is an upload: its size is checked against ``limits`` before decoding.

    Raises
    ------
    ScanError
        Not a SEG, too large, or none of its frames belongs to this scan (another series).
    """
    import pydicom

    limits = limits or Limits.from_env()
    try:
        limits.check_file_size("SEG", len(data))
        ds = pydicom.dcmread(io.BytesIO(data))
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc
    except Exception as exc:
        raise ScanError(f"Not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
    if str(getattr(ds, "SOPClassUID", "")) != _SEG_SOP_CLASS:
        raise ScanError(f"Not a DICOM SEG (SOP Class {getattr(ds, 'SOPClassUID', 'missing')}); expected "
                        f"Segmentation Storage ({_SEG_SOP_CLASS}).")
    frames, rows, cols = int(getattr(ds, "NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    shape = scan.pixels.shape if scan.is_volume else (1,) + scan.pixels.shape
    if (rows, cols) != tuple(shape[1:]):
        raise ScanError(f"The SEG's frames are {rows}x{cols}; the scan's slices are {shape[1]}x{shape[2]}.")
    try:
        limits.check_decoded("SEG", (frames, rows, cols))
        pix = np.asarray(ds.pixel_array).reshape(frames, rows, cols)
    except LimitExceeded as exc:
        raise ScanError(str(exc)) from exc
    except Exception as exc:
        raise ScanError(f"The SEG's pixel data cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if str(getattr(ds, "SegmentationType", "BINARY")) == "FRACTIONAL":
        pix = pix >= (float(getattr(ds, "MaximumFractionalValue", 255)) / 2.0)
    names = [n.lower() for n in (class_names or [])]
    seg_to_class = {}
    for item in getattr(ds, "SegmentSequence", []):
        label = str(getattr(item, "SegmentLabel", "")).lower()
        num = int(item.SegmentNumber)
        seg_to_class[num] = names.index(label) if label in names else num
    refs = (scan.metadata or {}).get("dicom_refs") or {}
    by_uid = {u: k for k, u in enumerate(refs.get("sop_instance_uids") or [])}
    positions = np.array([p for p in refs.get("positions") or [] if p is not None], float)
    out = np.zeros(shape, np.uint8)
    placed = 0
    shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0]
    for f, item in enumerate(getattr(ds, "PerFrameFunctionalGroupsSequence", [])):
        k, referenced = None, False
        for der in getattr(item, "DerivationImageSequence", []):
            for src in getattr(der, "SourceImageSequence", []):
                referenced = True
                k = by_uid.get(str(getattr(src, "ReferencedSOPInstanceUID", "")), k)
        same_frame = str(getattr(ds, "FrameOfReferenceUID", "")) == str(refs.get("FrameOfReferenceUID", ""))
        if k is None and not referenced and same_frame and len(positions) == shape[0]:
            pp = getattr(getattr(item, "PlanePositionSequence", [None])[0], "ImagePositionPatient", None)
            if pp is not None:
                d = np.linalg.norm(positions - np.asarray([float(v) for v in pp]), axis=1)
                k = int(np.argmin(d)) if d.min() < 1e-2 else None
        if k is None:
            continue
        ident = getattr(item, "SegmentIdentificationSequence", None) or getattr(shared, "SegmentIdentificationSequence",
                                                                                None)
        if not ident:
            continue
        seg_num = int(ident[0].ReferencedSegmentNumber)
        out[k][pix[f] > 0] = seg_to_class.get(seg_num, seg_num)
        placed += 1
    if placed == 0:
        raise ScanError("None of the SEG's frames references an image of this scan: it belongs to another series "
                        f"(the SEG references series {_referenced_series(ds)}).")
    return out if scan.is_volume else out[0]


def _referenced_series(ds) -> str:
    seq = getattr(ds, "ReferencedSeriesSequence", None)
    return str(seq[0].SeriesInstanceUID) if seq else "unknown"
