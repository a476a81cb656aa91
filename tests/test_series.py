"""DICOM series loading: sorting, geometry, several series, bad members, zip uploads (hostile ones too)."""

import io
import random
import zipfile

import numpy as np
import pytest

from segcore.io import ScanError, load_scan
from segcore.limits import Limits
from segcore.series import SeriesChoiceError, load_series, load_zip
from tests.dicom_series import enhanced_multiframe, volume, write_series


def _zip(members, compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def test_shuffled_files_are_sorted_by_position_with_spacing_and_affine():
    vol = volume(7)
    files = write_series(vol, spacing=(2.5, 0.8, 0.7), instance_numbers=[7, 1, 5, 3, 2, 6, 4])  # misleading numbers
    random.Random(3).shuffle(files)
    scan = load_series(files)
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    assert scan.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert scan.format == "dicom" and scan.modality == "CT" and scan.metadata["warnings"] == []
    # voxel (i=col, j=row, k=slice) -> RAS; DICOM LPS origin (-10, -20, 0), x and y flip
    ijk = np.array([3, 5, 4, 1.0])
    np.testing.assert_allclose(scan.affine @ ijk, [-(-10 + 3 * 0.7), -(-20 + 5 * 0.8), 4 * 2.5, 1], atol=1e-3)
    refs = scan.metadata["dicom_refs"]
    assert len(refs["sop_instance_uids"]) == 7 and len(set(refs["sop_instance_uids"])) == 7
    # the kept UIDs follow the sorted order (slice k's SOP instance is the file at z = k * 2.5)
    import pydicom

    by_uid = {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID: b for _, b in files}
    z = [float(pydicom.dcmread(io.BytesIO(by_uid[u])).ImagePositionPatient[2]) for u in refs["sop_instance_uids"]]
    assert z == sorted(z)
    # de-identified: no patient attributes anywhere in the metadata
    assert "Doe" not in repr(scan.metadata) and "PID-123" not in repr(scan.metadata)


def test_reversed_orientation_and_instance_number_fallback():
    vol = volume(5)
    # feet-first: normal points the other way; sorting along the normal flips the order of positions
    files = write_series(vol, orientation=(1, 0, 0, 0, -1, 0))
    scan = load_series(list(reversed(files)))
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    noloc = write_series(vol, with_positions=False, instance_numbers=[1, 2, 3, 4, 5])
    random.Random(0).shuffle(noloc)
    scan = load_series(noloc)
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    assert scan.affine is None and any("InstanceNumber" in w for w in scan.metadata["warnings"])


def test_gantry_tilt_is_handled_with_a_sheared_affine():
    vol = volume(6)
    files = write_series(vol, spacing=(3.0, 0.8, 0.7), tilt_deg=15.0)
    scan = load_series(files[::-1])
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    assert any("Gantry tilt of 15.0°" in w for w in scan.metadata["warnings"])
    assert scan.spacing[0] == pytest.approx(3.0)
    # every slice origin maps to its own ImagePositionPatient (LPS -> RAS)
    for k, pos in enumerate(scan.metadata["dicom_refs"]["positions"]):
        ras = scan.affine @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(ras[:3], [-pos[0], -pos[1], pos[2]], atol=1e-3)
    # voxel volume from the sheared affine is the slice spacing along the normal x pixel area
    assert abs(np.linalg.det(scan.affine[:3, :3])) == pytest.approx(3.0 * 0.8 * 0.7, rel=1e-4)


def test_positions_off_one_line_are_refused():
    vol = volume(5)
    pos = [[0, 0, 0], [0, 0, 2], [0, 5, 4], [0, 0, 6], [0, 0, 8]]
    with pytest.raises(ScanError, match="do not lie on one line"):
        load_series(write_series(vol, positions=pos))


def test_gaps_and_non_uniform_spacing_are_warned():
    vol = volume(6)
    files = write_series(vol, spacing=(2.0, 1, 1))
    scan = load_series(files[:2] + files[3:])  # slice 2 missing
    assert scan.pixels.shape[0] == 5 and scan.spacing[0] == pytest.approx(2.0)
    assert any("Gap in the series: 4.00 mm between slices 1 and 2" in w for w in scan.metadata["warnings"])
    pos = [[0, 0, z] for z in (0, 2, 4.2, 6, 8, 10)]
    scan = load_series(write_series(vol, positions=pos))
    assert any("Non-uniform slice spacing" in w for w in scan.metadata["warnings"])


def test_two_series_are_never_mixed():
    a = write_series(volume(4, seed=1), description="CT thorax")
    b = write_series(volume(3, seed=2), description="CT abdomen", modality="CT")
    mixed = a + b
    random.Random(1).shuffle(mixed)
    with pytest.raises(SeriesChoiceError, match="holds 2 DICOM series") as err:
        load_series(mixed)
    infos = {i.description: i for i in err.value.series}
    assert infos["CT thorax"].num_images == 4 and infos["CT abdomen"].num_images == 3
    assert "CT abdomen · CT · 3 image(s)" in str(err.value)
    scan = load_series(mixed, series_uid=infos["CT abdomen"].uid)
    np.testing.assert_array_equal(scan.pixels, volume(3, seed=2).astype(np.float32))
    with pytest.raises(SeriesChoiceError, match="no series with SeriesInstanceUID"):
        load_series(mixed, series_uid="1.2.3")


def test_several_volumes_in_one_series_are_refused():
    vol = volume(3)
    uid = "1.2.826.0.1.3680043.8.498.1"
    files = write_series(vol, series_uid=uid) + write_series(vol, series_uid=uid)
    with pytest.raises(ScanError, match="share one position"):
        load_series(files)


def test_a_corrupt_member_is_named_and_the_rest_is_kept():
    vol = volume(6)
    files = write_series(vol)
    truncated = (files[2][0], files[2][1][:400])  # header cut inside: pixels cannot be decoded
    garbage = ("IM9999.dcm", b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    scan = load_series(files[:2] + [truncated] + files[3:] + [garbage])
    assert scan.pixels.shape[0] == 5
    names = {s["name"] for s in scan.metadata["skipped"]}
    assert {"IM0002.dcm", "IM9999.dcm"} <= names
    assert any("IM0002.dcm" in w for w in scan.metadata["warnings"])
    assert any("Gap in the series" in w for w in scan.metadata["warnings"])
    with pytest.raises(ScanError, match="no readable DICOM image.*IM9999.dcm"):
        load_series([garbage])


def test_enhanced_multiframe_file_is_sorted_by_per_frame_positions_and_rescaled():
    """Frames stored out of order, HU + 1024 with the rescale only in the shared functional groups."""
    vol = volume(5)
    scan = load_series([enhanced_multiframe(vol, order=[3, 0, 4, 1, 2])])
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    assert scan.spacing == pytest.approx((2.0, 0.8, 0.7))
    assert scan.metadata["dicom_refs"]["frame_numbers"] == [2, 4, 5, 1, 3]


def test_series_budget_applies_to_the_whole_series():
    files = write_series(volume(8, 32, 32))
    per_file = Limits(max_decoded_bytes=32 * 32 * 4 * 4)  # each file fits, eight do not
    with pytest.raises(ScanError, match="decoded-size budget"):
        load_series(files, limits=per_file)
    size = sum(len(b) for _, b in files)
    with pytest.raises(ScanError, match="upload limit"):
        load_series(files, limits=Limits(max_bytes=size - 1))


def test_zip_upload_through_load_scan_ignores_junk_with_notes():
    vol = volume(4)
    files = write_series(vol)
    members = [("study/series/" + n, b) for n, b in files[::-1]]
    members += [("study/readme.txt", b"hello"), ("../../evil.dcm", files[0][1]), ("study/DICOMDIR", b"x"),
                ("__MACOSX/._IM0000.dcm", b"junk")]
    data = _zip(members)
    scan = load_scan(data, "upload.zip")
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    assert scan.source_name == "upload.zip" and scan.format == "dicom"
    reasons = {s["name"]: s["reason"] for s in scan.metadata["skipped"]}
    assert "unsafe path" in reasons["../../evil.dcm"]
    assert "not a DICOM file" in reasons["study/readme.txt"]
    assert "DICOMDIR" in reasons["study/DICOMDIR"] and "macOS" in reasons["__MACOSX/._IM0000.dcm"]


def test_zip_bombs_nested_zips_and_non_zips_are_refused():
    # declared sizes over the budget are refused before anything is inflated
    big = b"\x00" * (50 << 20)
    bomb = _zip([("a.dcm", big)])
    with pytest.raises(ScanError, match="zip bomb"):
        load_zip(bomb, "bomb.zip", limits=Limits(max_bytes=10 << 20))
    # overlapping members (the same compressed data declared many times) exceed the declared budget up front
    many = _zip([(f"m{i}.dcm", b"\x00" * (4 << 20)) for i in range(8)])
    with pytest.raises(ScanError, match="would unpack to"):
        load_zip(many, "many.zip", limits=Limits(max_bytes=16 << 20))
    inner = _zip(write_series(volume(2)))
    with pytest.raises(ScanError, match="nested archives"):
        load_scan(_zip([("inner.zip", inner)]), "outer.zip")
    with pytest.raises(ScanError, match="nested archives"):
        load_scan(_zip([("inner.bin", inner)]), "outer.zip")
    with pytest.raises(ScanError, match="not a readable zip"):
        load_zip(b"PK\x03\x04garbage", "x.zip")
    with pytest.raises(ScanError, match="no readable DICOM image"):
        load_scan(_zip([("notes.txt", b"hello")]), "x.zip")


def test_zip_member_lying_about_its_size_is_stopped():
    """A member whose local data inflates past the size in its header stops at that size."""
    data = bytearray(_zip([("a.dcm", b"\x00" * (1 << 20))]))
    # patch the declared uncompressed size (local header offset 22, central directory +24) down to 1000 bytes
    data[22:26] = (1000).to_bytes(4, "little")
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (1000).to_bytes(4, "little")
    with pytest.raises(ScanError, match=r"a.dcm: unreadable zip member: Bad CRC-32"):
        load_zip(bytes(data), "lie.zip")


def test_series_zip_round_trips_through_load_scan():
    from segcore.series import series_zip

    vol = volume(5)
    files = write_series(vol)
    scan = load_scan(series_zip(files[::-1]), "case.zip")
    np.testing.assert_array_equal(scan.pixels, vol.astype(np.float32))
    direct = load_series(files)
    assert scan.metadata["dicom_refs"] == direct.metadata["dicom_refs"]
    assert "CT thorax" not in repr(scan.metadata)  # the free-text series description is not kept


def test_a_real_single_file_is_a_one_image_series(pydicom_files):
    """pydicom's CT_small.dcm (a real CT slice) loads as a 2-D scan that keeps its references and geometry."""
    import pydicom

    path = pydicom_files / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    scan = load_series([path])
    np.testing.assert_array_equal(scan.pixels, load_scan(path).pixels)
    assert scan.pixels.ndim == 2 and scan.metadata["dicom_refs"]["sop_instance_uids"] == [ds.SOPInstanceUID]
    ipp = [float(v) for v in ds.ImagePositionPatient]
    np.testing.assert_allclose(scan.affine @ [0, 0, 0, 1], [-ipp[0], -ipp[1], ipp[2], 1], atol=1e-4)
    assert str(ds.PatientName) not in repr(scan.metadata)


def test_a_correction_of_one_series_in_a_two_series_zip_reopens_that_series(tmp_path):
    """The workspace keeps which series was corrected, so fine-tuning can load it (the zip alone is ambiguous)."""
    from segcore.series import series_zip
    from segcore.store import Workspace

    a = write_series(volume(4, seed=1), description="CT thorax")
    b = write_series(volume(3, seed=2), description="CT abdomen")
    data = series_zip(a + b)
    with pytest.raises(SeriesChoiceError) as err:
        load_scan(data, "two.zip")
    uid = next(i.uid for i in err.value.series if i.description == "CT abdomen")
    chosen = load_zip(data, "two.zip", series_uid=uid)
    mask = np.zeros(chosen.pixels.shape[1:], np.uint8)
    mask[2:5, 3:7] = 1
    ws = Workspace(tmp_path, default_model_dir=None)
    c = ws.save_correction(data, "two.zip", mask, author="Dr T", model_version="v1", source="refined",
                           slice_index=1, series_uid=uid)
    assert ws.list_corrections()[0].series_uid == uid
    image, back = ws.load_correction(c.id)
    np.testing.assert_array_equal(image, chosen.pixels[1])
    np.testing.assert_array_equal(back, mask)
    # instance corrections of that series reopen it too
    from segcore.store import InstanceWorkspace

    iws = InstanceWorkspace(ws, tmp_path / "no-shipped-model")
    iws.save(data, "two.zip", mask.astype(np.int32), author="Dr T", slice_index=2, class_names=("background", "x"),
             model_version="shipped", series_uid=uid)
    (image, ids), = iws.training_pairs()
    np.testing.assert_array_equal(image, chosen.pixels[2])
    assert ((ids > 0) == (mask > 0)).all()
