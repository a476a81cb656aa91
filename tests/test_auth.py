"""Roles: every guarded library call checks the acting identity itself (a page hiding a button is not enough)."""

import io
import json
import zipfile

import numpy as np
import pytest

from segcore.auth import (ACTIONS, Identity, PermissionDenied, RoleConfig, identity_from_claims, require,
                          set_login_required)
from segcore.review import ReviewStore, submit_verdict
from segcore.store import Workspace

ANN = Identity("ann-sub", "Ann", roles=frozenset({"annotator"}), authenticated=True)
REV = Identity("rev-sub", "Rita", roles=frozenset({"reviewer"}), authenticated=True)
REV2 = Identity("rev2-sub", "Raj", roles=frozenset({"reviewer"}), authenticated=True)
ADM = Identity("adm-sub", "Ada", roles=frozenset({"admin"}), authenticated=True)
NOBODY = Identity("x-sub", "Xavier", roles=frozenset(), authenticated=True)


@pytest.fixture(autouse=True)
def _reset_login_flag():
    yield
    set_login_required(False)


def _masks():
    m = np.zeros((16, 16), np.uint8)
    m[4:10, 4:10] = 1
    return m


def _denied(fn, needed):
    with pytest.raises(PermissionDenied, match=f"needs the {needed} role") as e:
        fn()
    assert e.value.needed == needed


def test_every_action_has_a_role_and_the_hierarchy_holds():
    assert set(ACTIONS.values()) <= {"annotator", "reviewer", "admin"}
    for action, needed in ACTIONS.items():
        for who in (ANN, REV, ADM):
            allowed = who.may(action)
            assert allowed == (["annotator", "reviewer", "admin"].index(who.role)
                               >= ["annotator", "reviewer", "admin"].index(needed)), (who.name, action)
        assert not NOBODY.may(action)
    with pytest.raises(ValueError, match="Unknown action"):
        require(ADM, "launch_rockets")


def test_review_store_guards(tmp_path):
    st = ReviewStore(data_dir=tmp_path)
    _denied(lambda: st.create_session("s", ANN, "v1"), "reviewer")
    sid = st.create_session("s", REV, "v1")
    _denied(lambda: st.add_case(sid, b"x", "x.png", _masks(), _masks(), who=ANN), "reviewer")
    cid = st.add_case(sid, b"x", "x.png", _masks(), _masks(), who=REV)
    _denied(lambda: st.record_verdict(cid, ANN, "accept"), "reviewer")
    st.record_verdict(cid, REV, "accept")
    edited = _masks()
    edited[0, 0] = 2
    st.record_verdict(cid, REV2, "accept", mask=edited)
    v = st.verdicts(sid)
    assert [(x["reviewer"], x["reviewer_id"], x["authenticated"]) for x in v] == [
        ("Rita", "rev-sub", 1), ("Raj", "rev2-sub", 1)]
    # a reviewer sees only their own verdicts; an admin sees all
    assert [x["reviewer_id"] for x in st.visible_verdicts(sid, REV)] == ["rev-sub"]
    assert len(st.visible_verdicts(sid, ADM)) == 2
    _denied(lambda: st.visible_verdicts(sid, ANN), "reviewer")
    # agreement shows everyone's masks: reviewers of the session and admins only
    assert len(st.agreement(cid, REV)) == 1 and len(st.agreement(cid, ADM)) == 1
    outsider = Identity("out-sub", "Otto", roles=frozenset({"reviewer"}), authenticated=True)
    with pytest.raises(PermissionDenied, match="not a reviewer of session"):
        st.agreement(cid, outsider)
    _denied(lambda: st.agreement(cid, ANN), "reviewer")
    # roles are managed by admins, audited
    _denied(lambda: st.set_role("ann-sub", "reviewer", True, REV), "admin")
    st.set_role("ann-sub", "reviewer", True, ADM)
    assert st.roles_of("ann-sub") == {"reviewer"}
    st.set_role("ann-sub", "reviewer", False, ADM)
    assert st.roles_of("ann-sub") == set()
    recs = st.audit_records()
    assert recs[-1]["event"] == "role_revoked" and recs[-1]["who_id"] == "adm-sub" and recs[-1]["authenticated"]
    assert st.verify_audit() == len(recs)


def test_export_shows_a_reviewer_only_their_own(tmp_path):
    from segcore.export import export_session

    st = ReviewStore(data_dir=tmp_path)
    sid = st.create_session("s", REV, "v1")
    cid = st.add_case(sid, b"x", "x.png", _masks(), _masks(), who=REV)
    st.record_verdict(cid, REV, "accept")
    st.record_verdict(cid, REV2, "reject", reason_code="artefact")
    _denied(lambda: export_session(st, sid, ("bg", "organ"), ANN), "reviewer")
    mine = zipfile.ZipFile(io.BytesIO(export_session(st, sid, ("bg", "organ"), REV)))
    rows = mine.read("verdicts.csv").decode().splitlines()
    assert len(rows) == 2 and "Rita" in rows[1]
    assert {r.get("who_id") for r in json.loads(mine.read("audit_log.json"))} == {"rev-sub"}
    everything = zipfile.ZipFile(io.BytesIO(export_session(st, sid, ("bg", "organ"), ADM)))
    assert len(everything.read("verdicts.csv").decode().splitlines()) == 3


def test_workspace_guards(tmp_path, root):
    from segcore.models import ModelConfig, build_unet

    ws = Workspace(tmp_path, default_model_dir=root / "sample_data" / "models" / "default")
    _denied(lambda: ws.save_correction(b"s", "a.png", _masks(), author=NOBODY, model_version="v1", source="raw"),
            "annotator")
    rec = ws.save_correction(b"s", "a.png", _masks(), author=ANN, model_version="v1", source="raw")
    meta = json.loads((rec.path / "meta.json").read_text())
    assert (meta["author"], meta["author_id"], meta["authenticated"]) == ("Ann", "ann-sub", True)
    _denied(lambda: ws.delete_correction(rec.id, REV), "admin")
    m = build_unet((None, None, 1), 3, base_filters=4, depth=2)
    metrics = {"held_out": {"mean_foreground_dice": 0.9}, "baseline_held_out": {"mean_foreground_dice": 0.9},
               "baseline_version": "v1"}
    _denied(lambda: ws.add_version(m, ModelConfig(), metrics=metrics, trained_on=[], parent="v1", actor=REV),
            "admin")
    v = ws.add_version(m, ModelConfig(), metrics=metrics, trained_on=[], parent="v1", actor=ADM)
    _denied(lambda: ws.promote(v, actor=REV), "admin")
    _denied(lambda: ws.activate(v, actor=ANN), "admin")
    assert ws.active_version() == "v1"
    ws.promote(v, actor=ADM)
    assert ws.active_version() == v
    assert ws._registry()["history"][-1]["by_id"] == "adm-sub"
    ws.delete_correction(rec.id, ADM)
    assert ws.list_corrections() == []


def test_submit_verdict_checks_before_writing(tmp_path):
    st, ws = ReviewStore(data_dir=tmp_path), Workspace(tmp_path / "ws")
    sid = st.create_session("s", REV, "v1")
    cid = st.add_case(sid, b"x", "x.png", _masks(), _masks(), who=REV)
    _denied(lambda: submit_verdict(st, ws, cid, ANN, "accept", model_version="v1"), "reviewer")
    assert st.verdicts(sid) == [] and ws.list_corrections() == []


def test_when_sign_in_is_required_self_declared_names_cannot_act(tmp_path, monkeypatch):
    st = ReviewStore(data_dir=tmp_path)
    sid = st.create_session("s", REV, "v1")
    set_login_required(True)
    for call in (lambda: st.create_session("t", "Dr Local", "v1"),
                 lambda: st.add_case(sid, b"x", "x.png", _masks(), _masks(), who="system"),
                 lambda: Workspace(tmp_path / "w").save_correction(b"s", "a.png", _masks(), author="Dr Local",
                                                                    model_version="v1", source="raw")):
        with pytest.raises(PermissionDenied, match="requires sign-in"):
            call()
    st.add_case(sid, b"x", "x.png", _masks(), _masks(), who=REV)  # an authenticated reviewer still can
    set_login_required(False)
    monkeypatch.setenv("SEGCORE_REQUIRE_LOGIN", "1")
    with pytest.raises(PermissionDenied, match="requires sign-in"):
        require("Dr Local", "save_correction")


def test_roles_from_token_claims_grants_and_configured_admins():
    cfg = RoleConfig.from_dict({"claim": "realm_access.roles", "map": {"rad": "reviewer", "ops": "admin"},
                                "admins": ["boss@example.org"], "default": "none"})
    rev = identity_from_claims({"sub": "u1", "name": "Ann", "realm_access": {"roles": ["rad", "other"]}}, cfg)
    assert rev.role == "reviewer" and rev.authenticated and rev.subject == "u1"
    assert identity_from_claims({"sub": "u2", "email": "boss@example.org", "email_verified": True}, cfg).role == "admin"
    # an address the provider did not verify (self-service profiles) never makes anyone admin
    assert identity_from_claims({"sub": "u4", "email": "boss@example.org"}, cfg).role is None
    assert identity_from_claims({"sub": "u4", "email": "boss@example.org", "email_verified": False}, cfg).role is None
    assert identity_from_claims({"sub": "u3"}, cfg).role is None  # no default role: can only look
    assert identity_from_claims({"sub": "u3"}, cfg, granted=["annotator"]).role == "annotator"
    with pytest.raises(PermissionDenied, match="no subject"):
        identity_from_claims({"name": "anon"}, cfg)
    with pytest.raises(ValueError, match="Unknown role"):
        RoleConfig(mapping={"x": "superuser"})
