import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from segcore.review import SCHEMA_VERSION, AuditError, ReviewStore


def _masks(seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    raw = np.zeros(shape, np.uint8)
    r, c = rng.integers(10, 40, 2)
    raw[r:r + 15, c:c + 15] = 1
    raw[r + 5:r + 9, c + 5:c + 9] = 2
    refined = raw.copy()
    refined[r, c:c + 15] = 0
    return raw, refined


def _store(tmp_path):
    return ReviewStore(data_dir=tmp_path)


def test_session_cases_verdicts_and_metrics(tmp_path):
    st = _store(tmp_path)
    sid = st.create_session("Liver batch 1", "Dr A", "v1", {"open_size": 3})
    ids = []
    for i, unc in enumerate([0.1, 0.5, 0.3]):
        raw, ref = _masks(i)
        ids.append(st.add_case(sid, f"scan{i}".encode(), f"scan{i}.png", raw, ref, uncertainty=unc))
    assert [c.id for c in st.cases(sid)] == [ids[1], ids[2], ids[0]]  # most uncertain first
    assert [c.id for c in st.cases(sid, "upload")] == ids
    # accept as is
    v1 = st.record_verdict(ids[0], "Dr A", "accept", seconds_spent=12.5)
    # accept with edits: a new mask version, never overwriting the model's
    edited = st.mask(ids[1]).copy()
    edited[:5, :5] = 1
    v2 = st.record_verdict(ids[1], "Dr A", "accept", mask=edited, reason_code="boundary_inaccurate",
                           comment="extended", point=(3, 3), seconds_spent=30)
    v3 = st.record_verdict(ids[2], "Dr A", "reject", reason_code="image_quality", comment="motion")
    vs = {v["id"]: v for v in st.verdicts(sid)}
    assert vs[v1]["verdict"] == "accept" and vs[v1]["metrics"]["edited_pixels"] == 0
    assert vs[v1]["metrics"]["dice"][1] == 1.0
    assert vs[v2]["verdict"] == "accept_with_edits" and vs[v2]["metrics"]["edited_pixels"] == 25
    assert vs[v2]["metrics"]["area_change_px"][1] == 25
    assert vs[v2]["point_x"] == 3 and vs[v2]["comment"] == "extended"
    kinds = [m["kind"] for m in st.mask_versions(ids[1])]
    assert kinds == ["raw", "refined", "correction"]
    np.testing.assert_array_equal(st.accepted_mask(v2), edited)
    accepted = list(st.iter_accepted(sid))
    assert {v["id"] for v, _ in accepted} == {v1, v2}  # rejected cases do not feed fine-tuning
    assert vs[v3]["verdict"] == "reject"
    assert st.verify_audit() == 1 + 3 + 3


def test_verdict_bad_input(tmp_path):
    st = _store(tmp_path)
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    with pytest.raises(ValueError, match="verdict must be one of"):
        st.record_verdict(cid, "Dr A", "maybe")
    with pytest.raises(ValueError, match="reason_code must be one of"):
        st.record_verdict(cid, "Dr A", "reject", reason_code="bored")
    with pytest.raises(ValueError, match="rejection needs a reason"):
        st.record_verdict(cid, "Dr A", "reject")
    with pytest.raises(ValueError, match="reviewer's name"):
        st.record_verdict(cid, " ", "accept")
    with pytest.raises(ValueError, match="does not match"):
        st.record_verdict(cid, "Dr A", "accept", mask=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="needs a name"):
        st.create_session("", "Dr A", "v1")
    assert st.verdicts(sid) == []


def test_two_reviewers_agreement(tmp_path):
    st = _store(tmp_path)
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    other = ref.copy()
    other[:, :32] = 0
    st.record_verdict(cid, "Dr A", "accept")
    st.record_verdict(cid, "Dr B", "accept", mask=other)
    rows = st.agreement(cid)
    assert len(rows) == 1 and rows[0]["reviewer_a"] == "Dr A" and rows[0]["reviewer_b"] == "Dr B"
    from segcore.metrics import dice

    assert rows[0]["dice_foreground"] == pytest.approx(dice((ref > 0).astype(int), (other > 0).astype(int), 2)[1])
    assert rows[0]["disagreement_px"] == int((ref != other).sum())


def test_tampering_is_detected(tmp_path):
    st = _store(tmp_path)
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    st.record_verdict(cid, "Dr A", "reject", reason_code="artefact")
    assert st.verify_audit() == 3
    def tamper(sql):  # edit the database behind the store's back
        con = sqlite3.connect(tmp_path / "review.db")
        con.execute(sql)
        con.commit()
        con.close()

    tamper("UPDATE audit_log SET payload = replace(payload, 'reject', 'accept') WHERE id = 3")
    with pytest.raises(AuditError, match="record 3 was modified"):
        ReviewStore(data_dir=tmp_path).verify_audit()
    tamper("DELETE FROM audit_log WHERE id = 2")
    with pytest.raises(AuditError, match="chain broken"):
        ReviewStore(data_dir=tmp_path).verify_audit()


def test_migrations_upgrade_keeps_data(tmp_path):
    from segcore import review

    # a database created by schema version 1 (before the 'region' column)
    orig = review.MIGRATIONS
    review.MIGRATIONS = orig[:1]
    try:
        old = ReviewStore(data_dir=tmp_path)
        assert old.schema_version() == 1
        sid = old.create_session("kept", "Dr A", "v1")
    finally:
        review.MIGRATIONS = orig
    new = ReviewStore(data_dir=tmp_path)
    assert new.schema_version() == SCHEMA_VERSION == 2
    assert new.session(sid)["name"] == "kept"
    con = sqlite3.connect(tmp_path / "review.db")
    assert "region" in [r[1] for r in con.execute("PRAGMA table_info(verdicts)")]
    con.close()
    assert new.verify_audit() == 1


WRITER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.review import ReviewStore
st = ReviewStore(data_dir=sys.argv[2])
cid = int(sys.argv[3])
m = st.mask(cid).copy()
print("ready", flush=True)
i = 0
while True:
    m[i % 64, :] = 1
    st.record_verdict(cid, "Dr K", "accept", mask=m, seconds_spent=i)
    i += 1
"""


def test_kill_during_writes_leaves_consistent_state(tmp_path, root):
    st = _store(tmp_path)
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(tmp_path), str(cid)], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(1.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st2 = ReviewStore(data_dir=tmp_path)
    vs = st2.verdicts(sid)
    assert len(vs) > 0
    n_audit = st2.verify_audit()
    assert n_audit == 2 + len(vs)  # every stored verdict has its audit record, nothing half-written
    for v in vs:
        st2.accepted_mask(v["id"])  # each verdict's mask version exists
    con = sqlite3.connect(tmp_path / "review.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


@pytest.mark.parametrize("seed", range(3))
def test_rle_matches_pycocotools(seed):
    from segcore.export import rle_decode, rle_encode

    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(seed)
    m = rng.random((23, 31)) > 0.6
    m[0, 0] = bool(seed % 2)
    rle = rle_encode(m)
    np.testing.assert_array_equal(rle_decode(rle), m)
    coco = mask_utils.frPyObjects(rle, *rle["size"])
    np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), m)
    assert int(mask_utils.area(coco)) == int(m.sum())


def test_export_session_contents(tmp_path, root):
    import csv
    import io
    import json
    import zipfile

    from segcore.export import export_session, rle_decode

    st = _store(tmp_path)
    sid = st.create_session("export", "Dr A", "v1")
    scan_bytes = (root / "sample_data" / "demo" / "lung1_ct.nii.gz").read_bytes()
    raw = np.zeros((512, 512), np.uint8)
    raw[100:150, 100:180] = 1
    raw[300:320, 300:330] = 2
    cid = st.add_case(sid, scan_bytes, "lung1_ct.nii.gz", raw, raw, slice_index=3)
    png_case = st.add_case(sid, (root / "sample_data/demo/phantom_ct_256_hu+1024.png").read_bytes(), "p.png",
                           raw[:256, :256], raw[:256, :256])
    st.record_verdict(cid, "Dr A", "accept")
    st.record_verdict(png_case, "Dr A", "reject", reason_code="artefact", comment="streaks")
    z = zipfile.ZipFile(io.BytesIO(export_session(st, sid, ("background", "organ", "lesion"))))
    names = set(z.namelist())
    assert {"coco_instances.json", "verdicts.csv", "report.html", "audit_log.json"} <= names
    pngs = [n for n in names if n.startswith("masks/") and n.endswith(".png")]
    assert len(pngs) == 1  # the rejected case exports no mask
    coco = json.loads(z.read("coco_instances.json"))
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]
    assert rle_decode(coco["annotations"][0]["segmentation"]).sum() == 50 * 80
    rows = list(csv.DictReader(io.StringIO(z.read("verdicts.csv").decode())))
    assert [r["verdict"] for r in rows] == ["accept", "reject"] and rows[1]["comment"] == "streaks"
    nii = [n for n in names if n.endswith(".nii.gz")][0]
    from segcore.io import load_scan

    vol = load_scan(z.read(nii), "m.nii.gz")
    src = load_scan(scan_bytes, "lung1_ct.nii.gz")
    np.testing.assert_allclose(vol.affine, src.affine)
    np.testing.assert_array_equal(vol.pixels[3], raw)
    assert b"data:image/png;base64," in z.read("report.html")
