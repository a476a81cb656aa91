"""DICOM SEG export/import against highdicom's reader, and NIfTI export for DICOM series."""

import io

import numpy as np
import pytest

from segcore.series import load_series
from tests.dicom_series import volume, write_series

NAMES = ("background", "organ", "lesion")


def _scan_and_labels():
    files = write_series(volume(6, 24, 20), spacing=(2.5, 0.8, 0.7))
    scan = load_series(files[::-1])
    labels = np.zeros(scan.pixels.shape, np.uint8)
    labels[1:5, 4:16, 3:15] = 1
    labels[2:4, 8:12, 6:10] = 2
    return scan, labels, files


@pytest.mark.parametrize("corrected", [False, True])
def test_seg_round_trip_with_highdicom(corrected):
    import highdicom as hd

    from segcore.dicomseg import read_seg, write_seg

    scan, labels, _ = _scan_and_labels()
    data = write_seg(labels, scan, NAMES, "v7", corrected=corrected)
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == scan.metadata["dicom_refs"]["StudyInstanceUID"]
    assert seg.FrameOfReferenceUID == scan.metadata["dicom_refs"]["FrameOfReferenceUID"]
    # the source series and every source instance are referenced
    uids = scan.metadata["dicom_refs"]["sop_instance_uids"]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == scan.metadata["dicom_refs"]["SeriesInstanceUID"]
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == set(uids)
    # segments: codes from the class names, algorithm and its type
    segs = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segs) == {"organ", "lesion"}
    assert segs["lesion"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segs["lesion"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segs["organ"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "91772007"
    assert segs["organ"].SegmentAlgorithmType == ("SEMIAUTOMATIC" if corrected else "AUTOMATIC")
    assert segs["organ"].SegmentAlgorithmName == "segcore"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "v7"
    # empty frames are omitted: organ on slices 1-4, lesion on 2-3
    assert int(seg.NumberOfFrames) == 4 + 2
    # voxel for voxel, read back by highdicom by source instance
    present = [u for z, u in enumerate(uids) if labels[z].any()]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=present, combine_segments=True,
                                            relabel=False)
    numbers = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    expect = np.zeros_like(labels)
    expect[labels == 1] = numbers["organ"]
    expect[labels == 2] = numbers["lesion"]
    np.testing.assert_array_equal(arr, expect[[z for z in range(len(uids)) if labels[z].any()]])
    # and imported as a starting mask on the scan's grid
    np.testing.assert_array_equal(read_seg(data, scan, NAMES), labels)
    # no patient identity travels into the SEG
    assert "Doe" not in str(seg.PatientName) and seg.PatientID == ""


def test_seg_import_refuses_another_series_and_non_seg():
    from segcore.dicomseg import read_seg, write_seg
    from segcore.io import ScanError

    scan, labels, files = _scan_and_labels()
    other = load_series(write_series(volume(6, 24, 20)))
    data = write_seg(labels, scan, NAMES, "v1", corrected=False)
    with pytest.raises(ScanError, match="belongs to another series"):
        read_seg(data, other, NAMES)
    with pytest.raises(ScanError, match="Not a DICOM SEG"):
        read_seg(files[0][1], scan)


def test_seg_refused_for_png_input_with_the_reason(root):
    from segcore.dicomseg import SegNotOffered, seg_not_offered_reason, write_seg
    from segcore.io import load_scan

    png = load_scan(root / "sample_data" / "demo" / "phantom_ct_256_hu+1024.png")
    with pytest.raises(SegNotOffered, match=r"DICOM SEG is not offered for 'phantom_ct_256_hu\+1024.png': it is a "
                                            r"PNG file.*no DICOM study/series/SOP instance UIDs or frame of "
                                            r"reference.*NIfTI label volume"):
        write_seg(np.ones((1, 256, 256), np.uint8), png, NAMES, "v1", corrected=False)
    single = load_scan(root / "sample_data" / "demo" / "phantom_ct_512.dcm")
    assert "single DICOM file loaded without its series" in seg_not_offered_reason(single)
    scan, labels, _ = _scan_and_labels()
    assert seg_not_offered_reason(scan) is None
    with pytest.raises(ValueError, match="empty"):
        write_seg(np.zeros_like(labels), scan, NAMES, "v1", corrected=False)
    with pytest.raises(ValueError, match="source series is 6 slice"):
        write_seg(labels[:3], scan, NAMES, "v1", corrected=False)


def test_nifti_label_volume_for_a_dicom_series_is_on_the_series_affine():
    from segcore.io import load_scan
    from segcore.viz import nifti_bytes

    scan, labels, _ = _scan_and_labels()
    back = load_scan(nifti_bytes(labels, scan), "labels.nii.gz")
    np.testing.assert_array_equal(back.pixels, labels)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5)
    assert back.spacing == pytest.approx(scan.spacing)


def test_single_segment_seg_imports():
    """With one segment highdicom puts the segment identification in the shared functional groups."""
    from segcore.dicomseg import read_seg, write_seg

    scan, labels, _ = _scan_and_labels()
    only = np.where(labels == 2, 2, 0).astype(np.uint8)
    np.testing.assert_array_equal(read_seg(write_seg(only, scan, NAMES, "v1", corrected=True), scan, NAMES), only)


def test_seg_for_a_real_one_image_series(pydicom_files):
    import highdicom as hd
    import pydicom

    from segcore.dicomseg import read_seg, write_seg

    path = pydicom_files / "CT_small.dcm"
    scan = load_series([path])
    labels = np.zeros(scan.pixels.shape, np.uint8)
    labels[40:80, 30:90] = 2
    data = write_seg(labels, scan, NAMES, "v1", corrected=False)
    seg = hd.seg.segread(io.BytesIO(data))
    src = pydicom.dcmread(path)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    np.testing.assert_array_equal(read_seg(data, scan, NAMES), labels)
