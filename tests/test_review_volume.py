"""Review sessions with volume cases: 3-D mask versions, verdict per volume, 3-D edit effort, audit, export."""

import csv
import io
import sqlite3
import zipfile

import numpy as np
import pytest

from segcore.review import ReviewStore
from tests.dicom_series import volume, write_series

NAMES = ("background", "organ", "lesion")


def _series_zip():
    files = write_series(volume(6, 24, 20), spacing=(2.5, 0.8, 0.7))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    return buf.getvalue()


def _volume_case(tmp_path):
    from segcore.io import load_scan

    st = ReviewStore(data_dir=tmp_path)
    sid = st.create_session("volumes", "Dr A", "v3")
    data = _series_zip()
    scan = load_scan(data, "ct_series.zip")
    raw = np.zeros(scan.pixels.shape, np.uint8)
    raw[1:5, 4:16, 3:15] = 1
    raw[2:4, 8:12, 6:10] = 2
    refined = raw.copy()
    refined[1] = 0
    cid = st.add_case(sid, data, "ct_series.zip", raw, refined, spacing=scan.spacing, uncertainty=0.2)
    png_case = st.add_case(sid, b"png", "p.png", raw[2], refined[2])
    return st, sid, cid, png_case, scan, refined


def test_volume_case_versions_verdict_and_3d_effort(tmp_path):
    from segcore.volume import hd95_3d

    st, sid, cid, png_case, scan, refined = _volume_case(tmp_path)
    cases = {c.id: c for c in st.cases(sid, "upload")}
    assert cases[cid].is_volume and not cases[png_case].is_volume and cases[cid].slice_index is None
    np.testing.assert_array_equal(st.mask(cid), refined)
    # an edit on one slice is a mask version of its own; so is the propagated volume
    edit = refined.copy()
    edit[4, 4:16, 3:15] = 0
    st.add_mask_version(cid, "Dr A", edit)
    filled = edit.copy()
    filled[0, 10:14, 8:12] = 1
    st.add_mask_version(cid, "Dr A", filled, kind="propagated")
    np.testing.assert_array_equal(st.mask(cid, "edit"), edit)
    vid = st.record_verdict(cid, "Dr A", "accept", mask=filled, reason_code="boundary_inaccurate",
                            seconds_spent=40)
    assert [m["kind"] for m in st.mask_versions(cid)] == ["raw", "refined", "edit", "propagated", "correction"]
    v = {x["id"]: x for x in st.verdicts(sid)}[vid]
    m = v["metrics"]
    assert v["verdict"] == "accept_with_edits" and m["dimension"] == 3
    vox_ml = 2.5 * 0.8 * 0.7 / 1000
    organ_change = int((filled == 1).sum()) - int((refined == 1).sum())
    assert m["voxel_change"][1] == organ_change < 0
    assert m["volume_change_ml"][1] == pytest.approx(organ_change * vox_ml)
    assert m["edited_slices"] == [0, 4] and m["edited_pixels"] == int((filled != refined).sum())
    expect = hd95_3d(refined, filled, 3, scan.spacing)
    assert m["hd95"][1] == pytest.approx(expect[1]) and m["hd95_unit"] == "mm"
    assert m["dice"][2] == 1.0 and 0 < m["dice"][1] < 1
    np.testing.assert_array_equal(st.accepted_mask(vid), filled)
    with pytest.raises(ValueError, match="does not match the case's"):
        st.record_verdict(cid, "Dr B", "accept", mask=filled[0])
    with pytest.raises(ValueError, match="slice_index must be None"):
        st.add_case(sid, b"x", "x.zip", refined, refined, slice_index=2)
    assert st.verify_audit() == 1 + 2 + 2 + 1


def test_volume_mask_rows_are_vouched_for_including_their_format(tmp_path):
    st, _, cid, _, _, _ = _volume_case(tmp_path)
    st.record_verdict(cid, "Dr A", "accept")
    st.verify_audit()
    con = sqlite3.connect(tmp_path / "review.db")
    con.execute("UPDATE mask_versions SET mask_format=NULL WHERE id=2")
    con.commit()
    con.close()
    problems = ReviewStore(data_dir=tmp_path).audit_problems()
    assert any("mask_versions row 2 was modified" in p for p in problems)


def test_export_with_volume_and_image_cases(tmp_path):
    from segcore.dicomseg import read_seg
    from segcore.export import export_session
    from segcore.io import load_scan

    st, sid, cid, png_case, scan, refined = _volume_case(tmp_path)
    edited = refined.copy()
    edited[3, 0:3, 0:3] = 2
    vid = st.record_verdict(cid, "Dr A", "accept", mask=edited)
    st.record_verdict(png_case, "Dr A", "accept")
    z = zipfile.ZipFile(io.BytesIO(export_session(st, sid, NAMES, "Dr A")))
    names = set(z.namelist())
    stem = f"masks/case{cid:04d}_Dr_A_v{vid}"
    assert {stem + ".nii.gz", stem + ".seg.dcm"} <= names and stem + ".png" not in names
    vol = load_scan(z.read(stem + ".nii.gz"), "m.nii.gz")
    np.testing.assert_array_equal(vol.pixels, edited)
    np.testing.assert_allclose(vol.affine, scan.affine, atol=1e-5)
    np.testing.assert_array_equal(read_seg(z.read(stem + ".seg.dcm"), scan, NAMES), edited)
    import pydicom

    seg = pydicom.dcmread(io.BytesIO(z.read(stem + ".seg.dcm")))
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert len([n for n in names if n.endswith(".png")]) == 1  # the 2-D case keeps its PNG
    rows = list(csv.DictReader(io.StringIO(z.read("verdicts.csv").decode())))
    vrow = next(r for r in rows if r["case_id"] == str(cid))
    assert vrow["slice"] == "" and vrow["volume_change_ml"] != "null"
    assert b"data:image/png;base64," in z.read("report.html")
