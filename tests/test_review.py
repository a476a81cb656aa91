"""Review store: behaviour, tamper evidence and concurrent writers, on SQLite and on a real PostgreSQL server.

The ``db`` fixture runs each store test on both databases (PostgreSQL from tests/pg_server.py; skipped locally
without PostgreSQL binaries, required under CI). Tampering goes through SQLAlchemy on either database
(:meth:`Db.tamper`), as someone with write access to the database would.
"""

import dataclasses
import signal
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

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


@dataclasses.dataclass
class Db:
    """One review database: ``open()`` a store on it, ``tamper()`` with it behind the store's back."""

    kind: str
    url: str
    data_dir: Path  # the audit key file lives here (outside the database)

    def open(self, **kwargs) -> ReviewStore:
        return ReviewStore(self.url, data_dir=self.data_dir, **kwargs)

    def tamper(self, *statements) -> None:
        """Run SQL statements (a string, or ``(sql, params)``) in one transaction, outside the application."""
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                for q in statements:
                    sql, params = (q, {}) if isinstance(q, str) else q
                    conn.execute(text(sql), params)
        finally:
            engine.dispose()

    def problems(self) -> list[str]:
        return self.open().audit_problems()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", f"sqlite:///{tmp_path / 'review.db'}", tmp_path)
    return Db("postgresql", request.getfixturevalue("postgres_url"), tmp_path)


def _store(tmp_path):
    return ReviewStore(data_dir=tmp_path)


def test_session_cases_verdicts_and_metrics(db):
    st = db.open()
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


def test_verdict_bad_input(db):
    st = db.open()
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


def test_two_reviewers_agreement(db):
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    other = ref.copy()
    other[:, :32] = 0
    st.record_verdict(cid, "Dr A", "accept")
    st.record_verdict(cid, "Dr B", "accept", mask=other)
    rows = st.agreement(cid, "Dr A")
    assert len(rows) == 1 and rows[0]["reviewer_a"] == "Dr A" and rows[0]["reviewer_b"] == "Dr B"
    from segcore.metrics import dice

    assert rows[0]["dice_foreground"] == pytest.approx(dice((ref > 0).astype(int), (other > 0).astype(int), 2)[1])
    assert rows[0]["disagreement_px"] == int((ref != other).sum())


def _two_ann_lees(db):
    """A store, two signed-in reviewers who share the display name "Ann Lee", and one case with its mask."""
    from segcore.auth import Identity

    st = db.open()
    ann1 = Identity("idp|111", "Ann Lee", roles=frozenset({"reviewer"}), authenticated=True)
    ann2 = Identity("idp|222", "Ann Lee", roles=frozenset({"reviewer"}), authenticated=True)
    sid = st.create_session("s", ann1, "v1")
    raw, ref = _masks()
    return st, ann1, ann2, st.add_case(sid, b"x", "x.png", raw, ref), ref


def test_agreement_keeps_two_reviewers_who_share_a_display_name_apart(db):
    st, ann1, ann2, cid, ref = _two_ann_lees(db)
    other = ref.copy()
    other[:, :32] = 0
    st.record_verdict(cid, ann1, "accept")
    st.record_verdict(cid, ann2, "accept", mask=other)
    rows = st.agreement(cid, ann1)
    assert len(rows) == 1, rows  # keyed by name, the second verdict would have replaced the first
    assert {rows[0]["reviewer_a"], rows[0]["reviewer_b"]} == {"Ann Lee (idp|111)", "Ann Lee (idp|222)"}
    assert rows[0]["disagreement_px"] == int((ref != other).sum())


def test_edits_in_progress_belong_to_their_author_not_to_a_display_name(db):
    st, ann1, ann2, cid, ref = _two_ann_lees(db)
    edit = ref.copy()
    edit[:8] = 2
    st.add_mask_version(cid, ann1, edit)
    np.testing.assert_array_equal(st.working_mask(cid, None, ann1), edit)
    np.testing.assert_array_equal(st.working_mask(cid, None, ann2), ref)  # same name, another person
    np.testing.assert_array_equal(st.working_mask(cid, None, "Ann Lee"), ref)  # a local user of that name too
    assert st.verify_audit() > 0


def _session_with_verdicts(db):
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    st.record_verdict(cid, "Dr A", "reject", reason_code="artefact", comment="motion")
    edited = ref.copy()
    edited[:4, :4] = 2
    cid2 = st.add_case(sid, b"y", "y.png", raw, ref)
    st.record_verdict(cid2, "Dr B", "accept", mask=edited)
    assert st.verify_audit() == 5
    return st, sid, cid, cid2


def test_editing_an_audit_record_is_detected(db):
    _session_with_verdicts(db)
    db.tamper("UPDATE audit_log SET payload = replace(payload, 'reject', 'accept') WHERE id = 3")
    with pytest.raises(AuditError, match="audit record 3 was modified"):
        db.open().verify_audit()


def test_deleting_an_audit_record_breaks_the_chain(db):
    _session_with_verdicts(db)
    db.tamper("DELETE FROM audit_log WHERE id = 2")
    problems = db.problems()
    assert any("audit record 3 does not follow" in p for p in problems)
    assert any("review_cases row 1" in p and "no audit record" in p for p in problems)


@pytest.mark.parametrize("sql,expect", [
    ("UPDATE verdicts SET verdict='accept', reason_code='none' WHERE id=1", "verdicts row 1 was modified"),
    ("UPDATE verdicts SET reviewer='Dr Z' WHERE id=2", "verdicts row 2 was modified"),
    ("UPDATE verdicts SET comment='fine' WHERE id=1", "verdicts row 1 was modified"),
    ("DELETE FROM verdicts WHERE id=1", "verdicts row 1 (audit record 3) is missing: deleted"),
    ("UPDATE mask_versions SET mask_png=(SELECT mask_png FROM mask_versions WHERE id=1) WHERE id=5",
     "mask_versions row 5 was modified"),
    (("UPDATE review_cases SET scan_bytes=:b WHERE id=2", {"b": b"\x00"}), "review_cases row 2 was modified"),
    ("UPDATE review_sessions SET created_by='Dr Z' WHERE id=1", "review_sessions row 1 was modified"),
    ("INSERT INTO verdicts (case_id, reviewer, verdict, reason_code, comment, mask_version_id, seconds_spent, "
     "metrics, created_at) VALUES (1, 'Dr X', 'accept', 'none', '', 2, 1.0, '{}', '2026-01-01')",
     "verdicts row 3 has no audit record"),
])
def test_data_rows_are_vouched_for(db, sql, expect):
    """Editing, deleting or inserting data rows (not only audit rows) is detected, naming the row."""
    _session_with_verdicts(db)
    db.tamper(sql)
    with pytest.raises(AuditError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        db.open().verify_audit()


def test_tail_truncation_is_detected(db):
    _session_with_verdicts(db)
    # remove the last verdict and every row it wrote, and its audit record: the chain alone still verifies
    db.tamper("DELETE FROM verdicts WHERE id=2", "DELETE FROM mask_versions WHERE id=5",
              "DELETE FROM audit_log WHERE id=5")
    problems = db.problems()
    assert problems == ["the audit log has 4 records but its signed head vouches for 5 (records were removed from "
                        "or added to the end)"]


def test_recomputed_chain_without_the_key_is_detected(db):
    """An attacker rewrites a verdict and recomputes every digest, MAC and the head, but with their own key."""
    import json

    from segcore import review

    _session_with_verdicts(db)
    db.tamper("UPDATE verdicts SET verdict='accept', reason_code='none' WHERE id=1")
    forger = db.open(key=b"attacker-guessed-key-0000")
    with forger.engine.begin() as conn:
        recs = conn.execute(review.select(review.audit).order_by(review.audit.c.id)).mappings().all()
        prev = review.GENESIS
        for r in recs:
            body = json.loads(r["payload"])
            body["rows"] = [[t, i, review.row_digest(t, conn.execute(review.select(review.AUDITED[t]).where(
                review.AUDITED[t].c.id == i)).mappings().one())] for t, i, _ in body["rows"]]
            text = review._canonical(body)
            mac = forger._mac(prev + text)
            conn.execute(review.update(review.audit).where(review.audit.c.id == r["id"]).values(
                payload=text, prev_hash=prev, hash=mac))
            prev = mac
        conn.execute(review.update(review.audit_head).values(count=len(recs), last_hash=prev,
                                                             mac=forger._mac(f"head:{len(recs)}:{prev}")))
    assert forger.verify_audit() == 5  # consistent under the forger's key ...
    problems = db.problems()  # ... but not under ours
    assert any("audit record 1 was modified" in p for p in problems)
    assert any("head's signature does not verify" in p for p in problems)


def test_audit_key_file_is_private_and_outside_the_database(tmp_path, monkeypatch):
    import stat

    monkeypatch.delenv("SEGCORE_AUDIT_KEY", raising=False)
    _store(tmp_path)
    key = tmp_path / "audit.key"
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() not in (tmp_path / "review.db").read_bytes()
    os.chmod(key, 0o644)
    _store(tmp_path)  # restored to 0600 on open
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    monkeypatch.setenv("SEGCORE_AUDIT_KEY", "short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        _store(tmp_path)


def test_writers_creating_the_audit_key_at_once_all_read_the_same_whole_key(tmp_path, monkeypatch):
    """Creation is write-then-link: a racing reader never sees an empty, half-written key file.

    Key generation is slowed down so that every writer is inside the creation window at once.
    """
    import secrets
    import threading

    from segcore import review as review_mod

    monkeypatch.delenv("SEGCORE_AUDIT_KEY", raising=False)
    monkeypatch.delenv("SEGCORE_AUDIT_KEY_FILE", raising=False)
    slow_hex = secrets.token_hex

    def token_hex(n=None):
        time.sleep(0.2)
        return slow_hex(n)

    monkeypatch.setattr(review_mod.secrets, "token_hex", token_hex)
    barrier, results = threading.Barrier(6), []

    def open_key():
        barrier.wait()
        try:
            results.append(review_mod.audit_key(tmp_path))
        except Exception as exc:  # noqa: BLE001 - the failure is the assertion
            results.append(exc)

    threads = [threading.Thread(target=open_key) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 6 and not [r for r in results if isinstance(r, Exception)], results
    assert set(results) == {(tmp_path / "audit.key").read_bytes().strip()} and len(results[0]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["audit.key"]  # no temporaries left behind


def test_migration_from_v2_keeps_data_renumbers_positions_and_anchors_the_audit(tmp_path, root):
    """tests/data/review_v2.sql was written by the schema-2 code (with the duplicate positions its race made)."""
    con = sqlite3.connect(tmp_path / "review.db")
    con.executescript((root / "tests" / "data" / "review_v2.sql").read_text())
    con.close()
    st = ReviewStore(data_dir=tmp_path)
    assert st.schema_version() == SCHEMA_VERSION == 7
    assert [c.position for c in st.cases(1, "upload")] == [0, 1]
    assert st.session(1)["created_by"] == "Dr Old" and len(st.verdicts(1)) == 1
    assert st.verdicts(1)[0]["reviewer_id"] == "local:Dr Old"  # self-declared before sign-in existed
    assert [r["event"] for r in st.audit_records()[-2:]] == ["audit_anchored", "audit_reanchored"]
    assert st.verify_audit() == 6
    new_case = st.add_case(1, b"z", "z.png", np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8))
    assert st.case(new_case).position == 2
    db = Db("sqlite", f"sqlite:///{tmp_path / 'review.db'}", tmp_path)
    db.tamper("UPDATE verdicts SET verdict='reject' WHERE id=1")  # pre-migration rows are vouched for too
    assert any("verdicts row 1 was modified" in p for p in db.problems())


def _start_together(procs) -> None:
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def test_v4_database_with_length_limited_names_migrates_to_free_text(db):
    """Schema v4 declared VARCHAR(300) scan names: PostgreSQL enforced it, SQLite did not. v5 makes them TEXT."""
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    if db.kind == "postgresql":  # put the database back to what the v4 code created
        db.tamper("ALTER TABLE review_cases ALTER COLUMN scan_name TYPE VARCHAR(300)",
                  "ALTER TABLE verdicts ALTER COLUMN reviewer TYPE VARCHAR(200)",
                  "ALTER TABLE verdicts ALTER COLUMN reviewer_id TYPE VARCHAR(300)")
    db.tamper("UPDATE schema_info SET version = 4")
    st = db.open()
    assert st.schema_version() == SCHEMA_VERSION
    raw, ref = _masks()
    name, reviewer = "scan." + "x" * 400, "Dr " + "y" * 300
    cid = st.add_case(sid, b"x", name, raw, ref)
    st.record_verdict(cid, reviewer, "accept")
    assert st.case(cid).scan_name == name and st.verdicts(sid)[0]["reviewer"] == reviewer
    assert st.verify_audit() == 3


OPENER = r"""
import sys
sys.path.insert(0, sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
from segcore.review import ReviewStore
st = ReviewStore(sys.argv[2], data_dir=sys.argv[3])
sid = st.create_session("s" + sys.argv[4], "Dr " + sys.argv[4], "v1")
print(st.schema_version(), flush=True)
"""


def test_processes_opening_a_new_database_at_once_migrate_it_once(db, root):
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(root), db.url, str(db.data_dir), str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    _start_together(procs)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.split()[-1] == str(SCHEMA_VERSION)
    st = db.open()
    assert sorted(s["created_by"] for s in st.sessions()) == [f"Dr {i}" for i in range(4)]
    assert st.verify_audit() == 4


ADDER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.review import ReviewStore
st = ReviewStore(sys.argv[2], data_dir=sys.argv[3])
m = np.zeros((8, 8), np.uint8)
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[4])):
    st.add_case(1, b"s", "s.png", m, m, uncertainty=float(i))
    if i % 5 == 0:
        st.record_verdict(1, sys.argv[5], "accept")
"""


def test_concurrent_writers_unique_positions_and_one_chain(db, root):
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    m = np.zeros((8, 8), np.uint8)
    st.add_case(sid, b"s", "s.png", m, m)
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(root), db.url, str(db.data_dir), "40", f"Dr {i}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(4)]
    _start_together(procs)
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    positions = [c.position for c in st.cases(sid, "upload")]
    assert len(positions) == 161 and sorted(positions) == list(range(161))
    assert st.verify_audit() == 1 + 161 + 4 * 8


VERDICTS_FOR = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.review import ReviewStore
st = ReviewStore(sys.argv[2], data_dir=sys.argv[3])
cids = [int(c) for c in sys.argv[5].split(",")]
masks = {c: st.mask(c) for c in cids}
print("ready", flush=True)
sys.stdin.readline()
end, n = time.monotonic() + float(sys.argv[4]), 0
while time.monotonic() < end:
    cid = cids[n % len(cids)]
    m = masks[cid].copy()
    m[n % 64, :] = n % 3  # every other verdict is an edit: a correction mask version in the same transaction
    st.record_verdict(cid, sys.argv[6], "accept", mask=m, seconds_spent=n)
    n += 1
print(n, flush=True)
"""


def test_four_processes_recording_verdicts_keep_one_audit_chain(db, root):
    """The race seen on PostgreSQL 15 (writers reading the last hash under READ COMMITTED forked the chain)."""
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cids = ",".join(str(st.add_case(sid, b"x%d" % i, f"x{i}.png", raw, ref)) for i in range(3))
    procs = [subprocess.Popen([sys.executable, "-c", VERDICTS_FOR, str(root), db.url, str(db.data_dir), "3", cids,
                               f"Dr {i}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    _start_together(procs)
    counts = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        counts.append(int(out.split()[-1]))
    assert all(c > 0 for c in counts), counts  # every writer got its turn
    assert len(st.verdicts(sid)) == sum(counts)
    assert st.verify_audit() == 1 + 3 + sum(counts)
    assert sorted(v["reviewer"] for v in st.verdicts(sid)) == sorted(
        f"Dr {i}" for i, c in enumerate(counts) for _ in range(c))


WRITER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from segcore.review import ReviewStore
st = ReviewStore(sys.argv[2], data_dir=sys.argv[3])
cid = int(sys.argv[4])
m = st.mask(cid).copy()
print("ready", flush=True)
i = 0
while True:
    m[i % 64, :] = 1
    st.record_verdict(cid, "Dr K", "accept", mask=m, seconds_spent=i)
    i += 1
"""


def test_kill_during_writes_leaves_consistent_state(db, root):
    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root), db.url, str(db.data_dir), str(cid)],
                         stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    time.sleep(1.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st2 = db.open()
    vs = st2.verdicts(sid)
    assert len(vs) > 0
    n_audit = st2.verify_audit()  # rows cross-checked, chain and signed head verified
    assert n_audit == 2 + len(vs)  # every stored verdict has its audit record, nothing half-written
    for v in vs:
        st2.accepted_mask(v["id"])  # each verdict's mask version exists
    if db.kind == "sqlite":
        con = sqlite3.connect(db.data_dir / "review.db")
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


def test_export_session_contents(db, root):
    import csv
    import io
    import json
    import zipfile

    from segcore.export import export_session, rle_decode

    st = db.open()
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
    z = zipfile.ZipFile(io.BytesIO(export_session(st, sid, ("background", "organ", "lesion"), "Dr A")))
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


def test_export_names_are_slugs_and_csv_cells_cannot_be_formulas(db):
    import csv
    import io
    import zipfile

    from segcore.export import export_session

    st = db.open()
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    cid = st.add_case(sid, b"x", "x.png", raw, ref)
    evil = "/../../../tmp/x"
    st.record_verdict(cid, evil, "accept", comment="=HYPERLINK(\"http://evil\",\"click\")")
    st.record_verdict(cid, "@SUM(1+1)", "reject", reason_code="other", comment="-2+3\tx")
    z = zipfile.ZipFile(io.BytesIO(export_session(st, sid, ("background", "organ", "lesion"), "Dr A")))
    for n in z.namelist():
        assert ".." not in n and not n.startswith("/") and "\\" not in n, n
        parts = n.split("/")
        assert len(parts) <= 2 and all(parts), n
    assert any(n.startswith("masks/case0001_tmp_x_v") for n in z.namelist())
    rows = list(csv.DictReader(io.StringIO(z.read("verdicts.csv").decode())))
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert rows[0]["comment"] == "'=HYPERLINK(\"http://evil\",\"click\")" and rows[0]["reviewer"] == evil
    assert rows[1]["reviewer"] == "'@SUM(1+1)" and rows[1]["comment"].startswith("'-2+3")


def test_submit_verdict_orders_writes_so_failures_leave_nothing_half_done(db, tmp_path, monkeypatch):
    from segcore.review import submit_verdict
    from segcore.store import Workspace

    st, ws = db.open(), Workspace(tmp_path / "ws")
    sid = st.create_session("s", "Dr A", "v1")
    raw, ref = _masks()
    long_name = "scan." + "x" * 300  # used to crash the page after the verdict was stored
    cid = st.add_case(sid, b"x", long_name, raw, ref)
    vid, corr = submit_verdict(st, ws, cid, "Dr A", "accept", model_version="v1")
    assert corr is not None and corr.scan_name == long_name and [v["id"] for v in st.verdicts(sid)] == [vid]

    # the correction cannot be written (disk full): no verdict is stored either
    def disk_full(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(ws, "stage_correction", disk_full)
    with pytest.raises(OSError, match="No space"):
        submit_verdict(st, ws, cid, "Dr B", "accept", model_version="v1")
    assert len(st.verdicts(sid)) == 1
    monkeypatch.undo()

    # the verdict is refused by the database: the staged correction is discarded
    def db_down(*a, **k):
        raise ValueError("database unavailable")

    monkeypatch.setattr(st, "record_verdict", db_down)
    with pytest.raises(ValueError, match="database unavailable"):
        submit_verdict(st, ws, cid, "Dr C", "accept", model_version="v1")
    assert len(ws.list_corrections()) == 1
    assert not [p for p in ws.corrections_dir.iterdir() if p.name.startswith(".")]
    # a rejection stores no correction; a bad form is refused before anything is written
    monkeypatch.undo()
    with pytest.raises(ValueError, match="rejection needs a reason"):
        submit_verdict(st, ws, cid, "Dr D", "reject", model_version="v1")
    submit_verdict(st, ws, cid, "Dr D", "reject", model_version="v1", reason_code="artefact")
    assert len(ws.list_corrections()) == 1 and len(st.verdicts(sid)) == 2
    assert st.verify_audit() == 1 + 1 + 2
