"""Clinician review sessions: cases, immutable mask versions, verdicts and a hash-chained audit trail.

Stored with SQLAlchemy in an embedded SQLite file by default
(``<data dir>/review.db``) or any database URL given as ``SEGCORE_DB_URL``
(e.g. ``postgresql+psycopg://...``). The schema is versioned: :data:`MIGRATIONS`
are applied in order inside transactions, so upgrading keeps existing data.

Every write is one transaction: either the verdict, its mask and its audit
record are all stored, or none is. Mask versions are only ever inserted, never
updated. The audit trail is append-only; each record stores the SHA-256 of
the previous record's hash and its own canonical JSON payload, so
:meth:`ReviewStore.verify_audit` detects any edited, deleted or reordered row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
from sqlalchemy import (Column, DateTime, Float, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text,
                        create_engine, event, func, insert, select, text)
from sqlalchemy.engine import Engine

__all__ = [
    "ReviewStore",
    "VERDICTS",
    "REASON_CODES",
    "AuditError",
    "MIGRATIONS",
    "SCHEMA_VERSION",
]

VERDICTS = ("accept", "accept_with_edits", "reject")
REASON_CODES = (
    "none",
    "boundary_inaccurate",
    "missed_lesion",
    "false_positive",
    "wrong_class",
    "image_quality",
    "artefact",
    "other",
)

metadata = MetaData()

schema_info = Table("schema_info", metadata, Column("version", Integer, nullable=False))
sessions = Table(
    "review_sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("refine_params", Text, nullable=False, default="{}"),
)
cases = Table(
    "review_cases", metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", Integer, ForeignKey("review_sessions.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("scan_name", String(300), nullable=False),
    Column("scan_sha256", String(64), nullable=False),
    Column("scan_bytes", LargeBinary, nullable=False),  # de-identified copy is made on load; bytes kept for export
    Column("slice_index", Integer, nullable=True),
    Column("uncertainty", Float, nullable=False, default=0.0),
    Column("spacing", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
mask_versions = Table(
    "mask_versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("review_cases.id"), nullable=False, index=True),
    Column("kind", String(20), nullable=False),  # raw | refined | correction
    Column("author", String(200), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("refine_params", Text, nullable=False, default="{}"),
    Column("mask_png", LargeBinary, nullable=False),
    Column("mask_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
verdicts = Table(
    "verdicts", metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("review_cases.id"), nullable=False, index=True),
    Column("reviewer", String(200), nullable=False),
    Column("verdict", String(30), nullable=False),
    Column("reason_code", String(50), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("point_x", Float, nullable=True),
    Column("point_y", Float, nullable=True),
    Column("mask_version_id", Integer, ForeignKey("mask_versions.id"), nullable=False),
    Column("seconds_spent", Float, nullable=False),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
audit = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)


def _m1(conn) -> None:
    metadata.create_all(conn, tables=[schema_info, sessions, cases, mask_versions, verdicts, audit])


def _m2(conn) -> None:
    # v2: reviewers can attach a free-text region description to a verdict
    cols = {c["name"] for c in __import__("sqlalchemy").inspect(conn).get_columns("verdicts")}
    if "region" not in cols:
        conn.execute(text("ALTER TABLE verdicts ADD COLUMN region TEXT DEFAULT ''"))


MIGRATIONS = [_m1, _m2]
SCHEMA_VERSION = len(MIGRATIONS)
GENESIS = "0" * 64


class AuditError(RuntimeError):
    """The audit trail does not verify: a record was edited, removed or reordered."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _png(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.asarray(mask).astype(np.uint8))
    if not ok:
        raise ValueError("Could not encode the mask as PNG.")
    return buf.tobytes()


def _unpng(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


@dataclasses.dataclass
class Case:
    id: int
    session_id: int
    position: int
    scan_name: str
    slice_index: int | None
    uncertainty: float
    spacing: tuple | None


class ReviewStore:
    """Review sessions in a database (SQLite file by default).

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL; defaults to ``SEGCORE_DB_URL`` or ``sqlite:///<data_dir>/review.db``.
    data_dir : str or Path, optional
        Where the SQLite file lives when no URL is given.
    """

    def __init__(self, url: str | None = None, data_dir: str | Path | None = None):
        if url is None:
            url = os.environ.get("SEGCORE_DB_URL")
        if url is None:
            d = Path(data_dir or os.environ.get("SEGCORE_DATA_DIR", "segcore_data"))
            d.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(d / 'review.db').resolve()}"
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _):  # durable, concurrent readers, enforced foreign keys
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()
        self.migrate()

    # ------------------------------------------------------------ schema
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not self.engine.dialect.has_table(conn, "schema_info"):
                return 0
            v = conn.execute(select(schema_info.c.version)).scalar()
            return int(v or 0)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version."""
        current = self.schema_version()
        for i, step in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.engine.begin() as conn:
                step(conn)
                conn.execute(schema_info.delete())
                conn.execute(insert(schema_info).values(version=i))
        return self.schema_version()

    # ------------------------------------------------------------ audit
    def _append_audit(self, conn, event_name: str, **fields: Any) -> None:
        prev = conn.execute(select(audit.c.hash).order_by(audit.c.id.desc()).limit(1)).scalar() or GENESIS
        payload = {"event": event_name, "at": _now().isoformat(), **fields}
        body = _canonical(payload)
        conn.execute(insert(audit).values(payload=body, prev_hash=prev, hash=_sha((prev + body).encode())))

    def audit_records(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.id)).mappings().all()
        return [{"id": r["id"], **json.loads(r["payload"]), "hash": r["hash"]} for r in rows]

    def verify_audit(self) -> int:
        """Recompute the chain; returns the number of records, raises :class:`AuditError` on tampering."""
        prev = GENESIS
        n = 0
        with self.engine.connect() as conn:
            for r in conn.execute(select(audit).order_by(audit.c.id)).mappings():
                if r["prev_hash"] != prev:
                    raise AuditError(f"Audit record {r['id']} does not follow record before it (chain broken).")
                if _sha((prev + r["payload"]).encode()) != r["hash"]:
                    raise AuditError(f"Audit record {r['id']} was modified: its hash does not match its content.")
                prev = r["hash"]
                n += 1
        return n

    # ------------------------------------------------------------ sessions and cases
    def create_session(self, name: str, created_by: str, model_version: str, refine_params: dict | None = None) -> int:
        name, created_by = (name or "").strip(), (created_by or "").strip()
        if not name or not created_by:
            raise ValueError(f"A session needs a name and who starts it. Got name={name!r}, created_by={created_by!r}.")
        with self.engine.begin() as conn:
            sid = conn.execute(insert(sessions).values(
                name=name, created_by=created_by, created_at=_now(), model_version=model_version,
                refine_params=_canonical(refine_params or {}))).inserted_primary_key[0]
            self._append_audit(conn, "session_created", session_id=sid, who=created_by, model_version=model_version,
                               refine_params=refine_params or {})
        return int(sid)

    def sessions(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(sessions).order_by(sessions.c.id)).mappings()]

    def session(self, session_id: int) -> dict:
        with self.engine.connect() as conn:
            r = conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
        if r is None:
            raise ValueError(f"No review session with id {session_id}.")
        return dict(r)

    def add_case(self, session_id: int, scan_bytes: bytes, scan_name: str, raw: np.ndarray, refined: np.ndarray, *,
                 slice_index: int | None = None, uncertainty: float = 0.0, spacing=None, who: str = "system") -> int:
        """Add a case with the model's raw and refined masks (two immutable mask versions)."""
        s = self.session(session_id)
        if np.shape(raw) != np.shape(refined) or np.ndim(raw) != 2:
            raise ValueError(f"raw and refined must be 2-D masks of one shape. Got {np.shape(raw)} and {np.shape(refined)}.")
        with self.engine.begin() as conn:
            pos = conn.execute(select(func.count()).select_from(cases).where(cases.c.session_id == session_id)).scalar()
            cid = conn.execute(insert(cases).values(
                session_id=session_id, position=int(pos), scan_name=scan_name, scan_sha256=_sha(scan_bytes),
                scan_bytes=scan_bytes, slice_index=slice_index, uncertainty=float(uncertainty),
                spacing=json.dumps(list(spacing)) if spacing else None, created_at=_now())).inserted_primary_key[0]
            for kind, m in (("raw", raw), ("refined", refined)):
                png = _png(m)
                conn.execute(insert(mask_versions).values(
                    case_id=cid, kind=kind, author=who, model_version=s["model_version"],
                    refine_params=s["refine_params"] if kind == "refined" else "{}", mask_png=png,
                    mask_sha256=_sha(np.asarray(m).astype(np.uint8).tobytes()), created_at=_now()))
            self._append_audit(conn, "case_added", session_id=session_id, case_id=cid, scan_sha256=_sha(scan_bytes),
                               model_version=s["model_version"], who=who,
                               raw_mask_sha256=_sha(np.asarray(raw).astype(np.uint8).tobytes()),
                               refined_mask_sha256=_sha(np.asarray(refined).astype(np.uint8).tobytes()),
                               refine_params=json.loads(s["refine_params"]))
        return int(cid)

    def cases(self, session_id: int, order: str = "uncertainty") -> list[Case]:
        """Cases of a session, most uncertain first (``order="uncertainty"``) or in upload order ("upload")."""
        if order not in ("uncertainty", "upload"):
            raise ValueError(f"order must be 'uncertainty' or 'upload'. Got {order!r}.")
        key = [cases.c.uncertainty.desc(), cases.c.position] if order == "uncertainty" else [cases.c.position]
        with self.engine.connect() as conn:
            rows = conn.execute(select(cases.c.id, cases.c.session_id, cases.c.position, cases.c.scan_name,
                                       cases.c.slice_index, cases.c.uncertainty, cases.c.spacing)
                                .where(cases.c.session_id == session_id).order_by(*key)).mappings().all()
        return [Case(id=r["id"], session_id=r["session_id"], position=r["position"], scan_name=r["scan_name"],
                     slice_index=r["slice_index"], uncertainty=r["uncertainty"],
                     spacing=tuple(json.loads(r["spacing"])) if r["spacing"] else None) for r in rows]

    def scan_bytes(self, case_id: int) -> bytes:
        with self.engine.connect() as conn:
            return conn.execute(select(cases.c.scan_bytes).where(cases.c.id == case_id)).scalar_one()

    def mask(self, case_id: int, kind: str = "refined") -> np.ndarray:
        """The latest mask version of ``kind`` for a case."""
        with self.engine.connect() as conn:
            data = conn.execute(select(mask_versions.c.mask_png).where(
                (mask_versions.c.case_id == case_id) & (mask_versions.c.kind == kind))
                .order_by(mask_versions.c.id.desc()).limit(1)).scalar()
        if data is None:
            raise ValueError(f"Case {case_id} has no {kind} mask.")
        return _unpng(data)

    def mask_versions(self, case_id: int) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(mask_versions.c.id, mask_versions.c.kind, mask_versions.c.author,
                                       mask_versions.c.model_version, mask_versions.c.mask_sha256,
                                       mask_versions.c.created_at)
                                .where(mask_versions.c.case_id == case_id).order_by(mask_versions.c.id)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------ verdicts
    def record_verdict(self, case_id: int, reviewer: str, verdict: str, *, mask: np.ndarray | None = None,
                       reason_code: str = "none", comment: str = "", point: tuple[float, float] | None = None,
                       seconds_spent: float = 0.0, spacing=None) -> int:
        """Store a verdict (and, for edits, the corrected mask as a new mask version) in one transaction.

        ``mask`` is the reviewer's accepted mask; without it the model's refined
        mask is the accepted one. Edit-effort metrics (Dice, IoU, HD95, area
        change between the model's refined mask and the accepted mask) are
        stored with the verdict.
        """
        from .metrics import dice, hd95, iou

        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ValueError("A verdict needs the reviewer's name (got an empty name).")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {list(VERDICTS)}. Got {verdict!r}.")
        if reason_code not in REASON_CODES:
            raise ValueError(f"reason_code must be one of {list(REASON_CODES)}. Got {reason_code!r}.")
        if verdict == "reject" and reason_code == "none":
            raise ValueError("A rejection needs a reason code other than 'none'.")
        model_mask = self.mask(case_id, "refined")
        accepted = model_mask if mask is None else np.asarray(mask).astype(np.uint8)
        if accepted.shape != model_mask.shape:
            raise ValueError(f"Mask shape {accepted.shape} does not match the case's {model_mask.shape}.")
        edited = not np.array_equal(accepted, model_mask)
        if verdict == "accept" and edited:
            verdict = "accept_with_edits"
        k = int(max(accepted.max(initial=0), model_mask.max(initial=0))) + 1
        h = hd95(model_mask, accepted, max(k, 2), spacing)
        metrics = {
            "dice": dice(model_mask, accepted, max(k, 2)).tolist(),
            "iou": iou(model_mask, accepted, max(k, 2)).tolist(),
            "hd95": [None if not np.isfinite(v) else float(v) for v in h],
            "area_change_px": [int((accepted == c).sum()) - int((model_mask == c).sum()) for c in range(max(k, 2))],
            "edited_pixels": int((accepted != model_mask).sum()),
        }
        with self.engine.begin() as conn:
            case = conn.execute(select(cases.c.session_id).where(cases.c.id == case_id)).first()
            if case is None:
                raise ValueError(f"No case with id {case_id}.")
            mv = conn.execute(select(mask_versions.c.id).where(
                (mask_versions.c.case_id == case_id) & (mask_versions.c.kind == "refined"))
                .order_by(mask_versions.c.id.desc()).limit(1)).scalar()
            model_version = self.session(case.session_id)["model_version"]
            if edited:
                mv = conn.execute(insert(mask_versions).values(
                    case_id=case_id, kind="correction", author=reviewer, model_version=model_version,
                    refine_params="{}", mask_png=_png(accepted), mask_sha256=_sha(accepted.tobytes()),
                    created_at=_now())).inserted_primary_key[0]
            vid = conn.execute(insert(verdicts).values(
                case_id=case_id, reviewer=reviewer, verdict=verdict, reason_code=reason_code, comment=comment or "",
                point_x=None if point is None else float(point[0]), point_y=None if point is None else float(point[1]),
                mask_version_id=mv, seconds_spent=float(seconds_spent), metrics=json.dumps(metrics),
                created_at=_now())).inserted_primary_key[0]
            self._append_audit(conn, "verdict", session_id=case.session_id, case_id=case_id, verdict_id=vid,
                               who=reviewer, verdict=verdict, reason_code=reason_code,
                               mask_sha256=_sha(accepted.tobytes()), model_version=model_version,
                               seconds_spent=round(float(seconds_spent), 3))
        return int(vid)

    def verdicts(self, session_id: int | None = None) -> list[dict]:
        q = select(verdicts, cases.c.scan_name, cases.c.session_id, cases.c.slice_index).join(
            cases, verdicts.c.case_id == cases.c.id).order_by(verdicts.c.id)
        if session_id is not None:
            q = q.where(cases.c.session_id == session_id)
        with self.engine.connect() as conn:
            out = []
            for r in conn.execute(q).mappings():
                d = dict(r)
                d["metrics"] = json.loads(d["metrics"])
                out.append(d)
        return out

    def accepted_mask(self, verdict_id: int) -> np.ndarray:
        with self.engine.connect() as conn:
            data = conn.execute(select(mask_versions.c.mask_png).join(
                verdicts, verdicts.c.mask_version_id == mask_versions.c.id).where(verdicts.c.id == verdict_id)).scalar()
        if data is None:
            raise ValueError(f"No verdict with id {verdict_id}.")
        return _unpng(data)

    def latest_verdicts(self, session_id: int) -> dict[tuple[int, str], dict]:
        """The latest verdict per (case, reviewer)."""
        out: dict[tuple[int, str], dict] = {}
        for v in self.verdicts(session_id):
            out[(v["case_id"], v["reviewer"])] = v
        return out

    def agreement(self, case_id: int) -> list[dict]:
        """Pairwise agreement between reviewers' latest accepted masks for a case."""
        from .metrics import dice, hd95

        latest: dict[str, dict] = {}
        for v in self.verdicts():
            if v["case_id"] == case_id and v["verdict"] != "reject":
                latest[v["reviewer"]] = v
        names = sorted(latest)
        rows = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ma, mb = self.accepted_mask(latest[a]["id"]), self.accepted_mask(latest[b]["id"])
                k = int(max(ma.max(initial=0), mb.max(initial=0))) + 1
                fa, fb = (ma > 0).astype(np.uint8), (mb > 0).astype(np.uint8)
                rows.append({"reviewer_a": a, "reviewer_b": b,
                             "dice_per_class": dice(ma, mb, max(k, 2)).tolist(),
                             "dice_foreground": float(dice(fa, fb, 2)[1]),
                             "hd95_foreground": float(hd95(fa, fb, 2)[1]),
                             "disagreement_px": int((ma != mb).sum())})
        return rows

    def iter_accepted(self, session_id: int | None = None) -> Iterable[tuple[dict, np.ndarray]]:
        """``(verdict, accepted mask)`` for the latest non-rejected verdict per case and reviewer."""
        latest: dict[tuple[int, str], dict] = {}
        for v in self.verdicts(session_id):
            latest[(v["case_id"], v["reviewer"])] = v
        for v in latest.values():
            if v["verdict"] != "reject":
                yield v, self.accepted_mask(v["id"])
