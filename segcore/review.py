"""Clinician review sessions: cases, immutable mask versions, verdicts and a keyed, tamper-evident audit trail.

Stored with SQLAlchemy in an embedded SQLite file by default
(``<data dir>/review.db``) or any database URL given as ``SEGCORE_DB_URL``
(e.g. ``postgresql+psycopg://...``). The schema is versioned: :data:`MIGRATIONS`
are applied in order inside transactions, so upgrading keeps existing data.

Every write is one transaction: either the verdict, its mask and its audit
record are all stored, or none is. Writers are serialised (SQLite
``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory lock; on every
server database also a ``SELECT ... FOR UPDATE`` of the audit head row, which
exists from the first migration on), so concurrent processes never fork the
chain or duplicate case positions. Migrations take the same lock, so several
processes may open a new database at once.

Volumes
-------
A case may be a whole volume (one case per volume, one verdict per volume): its masks are ``D,H,W`` label
volumes stored as compressed NumPy ``.npz`` blobs (``mask_versions.mask_format = "npz"``; 2-D masks stay PNG,
``"png"``; rows written before schema v6 have NULL, meaning PNG). Edits on any slice are stored as new mask
versions (:meth:`ReviewStore.add_mask_version`, and the verdict's correction); the edit effort of a volume
verdict is measured in 3-D: Dice and IoU per class, HD95 in mm with the 3-D spacing, the volume change in mL
per class and the number of edited voxels and slices.

What the audit proves
---------------------
Each audit record names the rows its transaction wrote (table, id and the
SHA-256 of the row's canonical content; byte columns -- scan bytes, mask PNGs --
enter as the SHA-256 of the stored bytes) and is chained to the previous
record with an HMAC-SHA256 under a key kept **outside the database**
(``SEGCORE_AUDIT_KEY``, else the key file ``SEGCORE_AUDIT_KEY_FILE`` or
``<data dir>/audit.key``, created with 0600 permissions). A signed head row
holds the number of records and the last MAC. :meth:`ReviewStore.verify_audit`
recomputes everything and reports, by table and id, any row that was edited,
deleted or inserted behind the application's back, any audit record that was
edited, removed or reordered, a truncated tail, and a chain recomputed without
the key. It cannot detect a rollback of the whole database (rows, log and head
together) to an earlier consistent state, nor anything done by someone who
holds the key; see SECURITY.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from sqlalchemy import (Column, DateTime, Float, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text,
                        create_engine, event, func, insert, inspect, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .auth import Identity, PermissionDenied, as_identity, require
from .labels import decode_png, png_bytes

__all__ = [
    "ReviewStore",
    "VERDICTS",
    "REASON_CODES",
    "AuditError",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "audit_key",
    "Case",
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
    Column("name", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", Text, nullable=False),
    Column("refine_params", Text, nullable=False, default="{}"),
    Column("created_by_id", Text, nullable=True),
)
cases = Table(
    "review_cases", metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", Integer, ForeignKey("review_sessions.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("scan_name", Text, nullable=False),
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
    Column("author", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("refine_params", Text, nullable=False, default="{}"),
    Column("mask_png", LargeBinary, nullable=False),  # the mask blob: PNG (2-D) or npz (3-D), see mask_format
    Column("mask_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("mask_format", String(10), nullable=True),  # v6: "png" | "npz"; NULL (rows before v6) means png
    Column("author_id", Text, nullable=True),  # v7: the author's subject (NULL on rows before v7: match by name)
)
verdicts = Table(
    "verdicts", metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("review_cases.id"), nullable=False, index=True),
    Column("reviewer", Text, nullable=False),
    Column("verdict", String(30), nullable=False),
    Column("reason_code", String(50), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("point_x", Float, nullable=True),
    Column("point_y", Float, nullable=True),
    Column("mask_version_id", Integer, ForeignKey("mask_versions.id"), nullable=False),
    Column("seconds_spent", Float, nullable=False),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("region", Text, nullable=True, default=""),
    Column("reviewer_id", Text, nullable=True),  # the token's subject (local:<name> in local mode)
    Column("authenticated", Integer, nullable=True, default=0),
)
audit = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("scheme", Integer, nullable=False, default=2),  # 1: SHA-256 chain (schema < 3), 2: HMAC-SHA256
)
user_roles = Table(  # role grants and revocations made in the app, newest last (never updated)
    "user_roles", metadata,
    Column("id", Integer, primary_key=True),
    Column("subject", Text, nullable=False, index=True),
    Column("role", String(30), nullable=False),
    Column("granted", Integer, nullable=False),  # 1 grant, 0 revoke
    Column("by_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
)

# free-text columns: TEXT since schema v5 (PostgreSQL enforces VARCHAR lengths that SQLite ignores)
FREE_TEXT = {"review_sessions": ("name", "created_by", "model_version", "created_by_id"),
             "review_cases": ("scan_name",), "mask_versions": ("author", "model_version"),
             "verdicts": ("reviewer", "reviewer_id"), "user_roles": ("subject", "by_id")}

# the rows the audit vouches for, with their table objects
AUDITED = {"review_sessions": sessions, "review_cases": cases, "mask_versions": mask_versions, "verdicts": verdicts,
           "user_roles": user_roles}
GENESIS = "0" * 64
WRITER_LOCK_KEY = 0x5E6C0AE  # PostgreSQL advisory lock id shared by every segcore writer


# ------------------------------------------------------------------ migrations

def _columns(conn, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _m1(conn) -> None:
    metadata.create_all(conn, tables=[schema_info, sessions, cases, mask_versions, verdicts, audit])


def _m2(conn) -> None:
    # v2: reviewers can attach a free-text region description to a verdict
    if "region" not in _columns(conn, "verdicts"):
        conn.execute(text("ALTER TABLE verdicts ADD COLUMN region TEXT DEFAULT ''"))


def _m3(conn) -> None:
    # v3: keyed audit (scheme column, signed head), unique case positions
    if "scheme" not in _columns(conn, "audit_log"):
        conn.execute(text("ALTER TABLE audit_log ADD COLUMN scheme INTEGER NOT NULL DEFAULT 1"))
    metadata.create_all(conn, tables=[audit_head])
    # positions duplicated by concurrent writers before v3: renumber each session in (position, id) order
    rows = conn.execute(select(cases.c.id, cases.c.session_id).order_by(
        cases.c.session_id, cases.c.position, cases.c.id)).all()
    counters: dict[int, int] = {}
    for cid, sid in rows:
        conn.execute(update(cases).where(cases.c.id == cid).values(position=-1 - cid))  # avoid transient clashes
    for cid, sid in rows:
        pos = counters.get(sid, 0)
        conn.execute(update(cases).where(cases.c.id == cid).values(position=pos))
        counters[sid] = pos + 1
    conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ux_review_cases_session_position "
                      "ON review_cases (session_id, position)"))


def _m4(conn) -> None:
    # v4: identities from sign-in (subject ids, authenticated flag) and roles granted in the app
    if "reviewer_id" not in _columns(conn, "verdicts"):
        conn.execute(text("ALTER TABLE verdicts ADD COLUMN reviewer_id VARCHAR(300)"))
    if "authenticated" not in _columns(conn, "verdicts"):
        conn.execute(text("ALTER TABLE verdicts ADD COLUMN authenticated INTEGER DEFAULT 0"))
    if "created_by_id" not in _columns(conn, "review_sessions"):
        conn.execute(text("ALTER TABLE review_sessions ADD COLUMN created_by_id VARCHAR(300)"))
    metadata.create_all(conn, tables=[user_roles])
    # rows written before v4 carry self-declared names: their ids are the local form of those names
    conn.execute(text("UPDATE verdicts SET reviewer_id = 'local:' || reviewer WHERE reviewer_id IS NULL"))
    conn.execute(text("UPDATE review_sessions SET created_by_id = 'local:' || created_by WHERE created_by_id IS NULL"))


def _m5(conn) -> None:
    # v5: names and subject ids are free text on every database (PostgreSQL enforced the VARCHAR limits that
    # SQLite ignores: a 300-character scan name or a long local reviewer name failed on PostgreSQL only)
    if conn.dialect.name == "postgresql":
        for table, cols in FREE_TEXT.items():
            for col in cols:
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {col} TYPE TEXT"))


def _m6(conn) -> None:
    # v6: volume cases; the mask blob's format (png for 2-D, npz for 3-D label volumes)
    if "mask_format" not in _columns(conn, "mask_versions"):
        conn.execute(text("ALTER TABLE mask_versions ADD COLUMN mask_format VARCHAR(10)"))


def _m7(conn) -> None:
    # v7: mask versions record their author's subject, so two people with one display name keep their edits apart
    # (rows before v7 keep NULL: their audit digests stay as recorded)
    if "author_id" not in _columns(conn, "mask_versions"):
        conn.execute(text("ALTER TABLE mask_versions ADD COLUMN author_id TEXT"))


MIGRATIONS = [_m1, _m2, _m3, _m4, _m5, _m6, _m7]
SCHEMA_VERSION = len(MIGRATIONS)


class AuditError(RuntimeError):
    """The audit trail does not verify: the message names each row or record that is wrong."""


# ------------------------------------------------------------------ helpers

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _canon_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "sha256:" + _sha(bytes(v))
    if isinstance(v, dt.datetime):
        v = v.replace(tzinfo=dt.timezone.utc) if v.tzinfo is None else v.astimezone(dt.timezone.utc)
        return v.isoformat()
    if isinstance(v, float):
        return repr(v)
    return v


# columns added after the keyed audit (v3): they enter a row's digest whenever they are set, and rows written
# before they existed (NULL there) keep the digest their audit record holds
LATE_COLUMNS = {"mask_versions": ("mask_format", "author_id")}


def row_digest(table: str, row: Mapping[str, Any]) -> str:
    """SHA-256 of a row's canonical content (byte columns by the SHA-256 of their bytes).

    A column of :data:`LATE_COLUMNS` is left out only while it is NULL, so setting or changing it on any row
    changes the digest.
    """
    late = LATE_COLUMNS.get(table, ())
    return _sha(_canonical({"table": table, **{k: _canon_value(v) for k, v in row.items()
                                               if not (k in late and v is None)}}).encode())


def audit_key(data_dir: str | Path | None = None) -> bytes:
    """The audit MAC key: ``SEGCORE_AUDIT_KEY``, else a key file created once with 0600 permissions.

    The key file is ``SEGCORE_AUDIT_KEY_FILE`` or ``<data dir>/audit.key``: it lives outside the
    database, so a copy of the database alone cannot be re-signed.
    """
    env = os.environ.get("SEGCORE_AUDIT_KEY", "")
    if env:
        if len(env) < 16:
            raise ValueError("SEGCORE_AUDIT_KEY must be at least 16 characters (use e.g. 32 random hex bytes).")
        return env.encode()
    from .store import default_data_dir

    path = Path(os.environ.get("SEGCORE_AUDIT_KEY_FILE") or Path(data_dir or default_data_dir()) / "audit.key")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Write the key to a private temporary, then link it into place: the link fails if another
        # process won the race, and nobody can ever read a half-written key file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except PermissionError as exc:
            raise ValueError(f"The audit key file '{path}' is readable by others (mode {mode:o}) and cannot be "
                             "restricted to 0600; fix its permissions.") from exc
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"The audit key file '{path}' is empty or too short; restore it from backup.")
    return key


@dataclasses.dataclass
class Case:
    id: int
    session_id: int
    position: int
    scan_name: str
    slice_index: int | None
    uncertainty: float
    spacing: tuple | None
    is_volume: bool = False


def _mask_png(mask: np.ndarray) -> bytes:
    return png_bytes(np.asarray(mask).astype(np.uint8))


def _encode_mask(mask: np.ndarray) -> tuple[bytes, str]:
    """``(blob, format)``: PNG for a 2-D label map, compressed npz for a 3-D label volume."""
    import io

    m = np.asarray(mask).astype(np.uint8)
    if m.ndim == 2:
        return _mask_png(m), "png"
    if m.ndim == 3:
        buf = io.BytesIO()
        np.savez_compressed(buf, mask=m)
        return buf.getvalue(), "npz"
    raise ValueError(f"A mask must be a 2-D label map (H,W) or a 3-D label volume (D,H,W). Got shape {m.shape}.")


def _decode_mask(data: bytes, fmt: str | None) -> np.ndarray:
    import io

    if fmt in (None, "png"):
        return decode_png(data)
    if fmt == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            m = z["mask"]
        if m.ndim != 3 or m.dtype != np.uint8:
            raise ValueError(f"The stored mask volume is corrupt (shape {m.shape}, dtype {m.dtype}).")
        return m
    raise ValueError(f"Unknown stored mask format {fmt!r}: expected 'png' or 'npz'.")


class ReviewStore:
    """Review sessions in a database (SQLite file by default).

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL; defaults to ``SEGCORE_DB_URL`` or ``sqlite:///<data_dir>/review.db``.
    data_dir : str or Path, optional
        Where the SQLite file (and, by default, the audit key file) lives.
    key : bytes, optional
        Audit MAC key (default: :func:`audit_key`).
    """

    def __init__(self, url: str | None = None, data_dir: str | Path | None = None, *, key: bytes | None = None):
        from .store import default_data_dir

        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        if url is None:
            url = os.environ.get("SEGCORE_DB_URL")
        if url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(self.data_dir / 'review.db').resolve()}"
        self.url = url
        self._key = key if key is not None else audit_key(self.data_dir)
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _):  # durable, concurrent readers, enforced foreign keys
                dbapi_conn.isolation_level = None  # transactions are begun below, not by pysqlite
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _begin(conn):  # writers take the write lock up front: no lost updates between read and write
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("segcore_write")
                                     else "BEGIN")
        self.migrate()

    # ------------------------------------------------------------ transactions
    @contextmanager
    def _write(self):
        """One serialised write transaction (yields the connection); the writers' lock is taken first."""
        with self.engine.connect().execution_options(segcore_write=True) as conn:
            with conn.begin():
                self._lock_writers(conn)
                conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1).with_for_update()).first()
                yield conn

    @staticmethod
    def _lock_writers(conn) -> None:
        """PostgreSQL: a transaction-scoped advisory lock (held even before the head row exists).

        SQLite writers are already serialised by ``BEGIN IMMEDIATE``; other databases rely on the head row lock.
        """
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK_KEY})

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------ schema
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not self.engine.dialect.has_table(conn, "schema_info"):
                return 0
            v = conn.execute(select(schema_info.c.version)).scalar()
            return int(v or 0)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version.

        Upgrading to v3 appends one keyed audit record that vouches for every row present at that moment.
        """
        current = self.schema_version()
        for i, step in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.engine.connect().execution_options(segcore_write=True) as conn, conn.begin():
                self._lock_writers(conn)
                if self._version_in(conn) >= i:  # another process applied it while we waited for the lock
                    continue
                step(conn)
                conn.execute(schema_info.delete())
                conn.execute(insert(schema_info).values(version=i))
                if i == 3:
                    self._anchor_existing(conn)
                elif i == 4:
                    self._reanchor(conn, ["verdicts", "review_sessions"], "schema v4: subject ids added")
        with self.engine.connect() as conn:
            has_head = conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1)).first() is not None
        if not has_head:
            with self._write() as conn:
                self._ensure_head(conn)
        return self.schema_version()

    @staticmethod
    def _version_in(conn) -> int:
        if not conn.dialect.has_table(conn, "schema_info"):
            return 0
        return int(conn.execute(select(schema_info.c.version)).scalar() or 0)

    def _ensure_head(self, conn) -> None:
        """A signed genesis head on a database without audit records, so writers always have a row to lock."""
        if conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1)).first() is not None:
            return
        if conn.execute(select(audit.c.id).limit(1)).first() is not None:
            return  # records without a head: verify_audit reports it; never paper over it
        conn.execute(insert(audit_head).values(id=1, count=0, last_hash=GENESIS, mac=self._mac(f"head:0:{GENESIS}")))

    def _anchor_existing(self, conn) -> None:
        rows = []
        for name, table in AUDITED.items():
            if not inspect(conn).has_table(name):
                continue
            present = _columns(conn, name)  # columns later migrations add are vouched for when they are added
            cols = [c for c in table.c if c.name in present]
            for r in conn.execute(select(*cols).order_by(table.c.id)).mappings():
                rows.append([name, int(r["id"]), row_digest(name, r)])
        n = conn.execute(select(audit.c.id)).all()
        if not rows and not n:
            return
        self._append_audit(conn, "audit_anchored", rows, who="migration",
                           note="schema v3: rows existing before the keyed audit")

    def _reanchor(self, conn, tables: list[str], note: str) -> None:
        """After a migration rewrote rows, vouch for their new content (one keyed record)."""
        rows = []
        for name in tables:
            table = AUDITED[name]
            for r in conn.execute(select(table).order_by(table.c.id)).mappings():
                rows.append([name, int(r["id"]), row_digest(name, r)])
        if rows:
            self._append_audit(conn, "audit_reanchored", rows, who="migration", note=note, supersedes=True)

    # ------------------------------------------------------------ audit
    def _digest_rows(self, conn, table: Table, ids: Iterable[int]) -> list[list]:
        out = []
        for rid in ids:
            r = conn.execute(select(table).where(table.c.id == rid)).mappings().one()
            out.append([table.name, int(rid), row_digest(table.name, r)])
        return out

    def _append_audit(self, conn, event_name: str, rows: list[list], **fields: Any) -> None:
        last = conn.execute(select(audit.c.hash).order_by(audit.c.id.desc()).limit(1)).scalar() or GENESIS
        count = conn.execute(select(func.count()).select_from(audit)).scalar_one()
        payload = {"event": event_name, "at": _now().isoformat(), "rows": rows, **fields}
        body = _canonical(payload)
        mac = self._mac(last + body)
        conn.execute(insert(audit).values(payload=body, prev_hash=last, hash=mac, scheme=2))
        n = count + 1
        head = {"count": n, "last_hash": mac, "mac": self._mac(f"head:{n}:{mac}")}
        if conn.execute(update(audit_head).where(audit_head.c.id == 1).values(**head)).rowcount == 0:
            conn.execute(insert(audit_head).values(id=1, **head))

    def audit_count(self) -> int:
        """How many audit records there are (cheap; :meth:`audit_problems` verifies them)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit)).scalar_one()

    def audit_records(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.id)).mappings().all()
        return [{"id": r["id"], **json.loads(r["payload"]), "hash": r["hash"]} for r in rows]

    def audit_problems(self) -> list[str]:
        """Every problem found by recomputing the audit trail and cross-checking each row (empty when it verifies)."""
        problems: list[str] = []
        recorded: dict[tuple[str, int], tuple[str, int]] = {}
        prev, n, keyed_seen = GENESIS, 0, False
        with self.engine.connect() as conn:
            for r in conn.execute(select(audit).order_by(audit.c.id)).mappings():
                n += 1
                rid, body = r["id"], r["payload"]
                if r["prev_hash"] != prev:
                    problems.append(f"audit record {rid} does not follow the record before it (chain broken: a "
                                    "record was deleted, inserted or reordered)")
                if r["scheme"] == 1:
                    if keyed_seen:
                        problems.append(f"audit record {rid} is an unkeyed record after keyed ones (forged)")
                    ok = _sha((prev + body).encode()) == r["hash"]
                else:
                    keyed_seen = True
                    ok = hmac.compare_digest(self._mac(prev + body), r["hash"])
                if not ok:
                    problems.append(f"audit record {rid} was modified: its MAC does not match its content (edited, "
                                    "or recomputed without the audit key)")
                prev = r["hash"]
                try:
                    parsed = json.loads(body)
                except json.JSONDecodeError:
                    parsed = {}
                entries, supersedes = parsed.get("rows", []), bool(parsed.get("supersedes"))
                for table, row_id, digest in entries:
                    if (table, row_id) in recorded and not supersedes:
                        problems.append(f"{table} row {row_id} is recorded twice (audit records "
                                        f"{recorded[(table, row_id)][1]} and {rid})")
                    recorded[(table, int(row_id))] = (digest, rid)
            head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).mappings().first()
            if head is None:
                if n:
                    problems.append("the signed audit head is missing")
            else:
                if not hmac.compare_digest(self._mac(f"head:{head['count']}:{head['last_hash']}"), head["mac"]):
                    problems.append("the audit head's signature does not verify (edited, or wrong audit key)")
                if head["count"] != n or head["last_hash"] != prev:
                    problems.append(f"the audit log has {n} records but its signed head vouches for "
                                    f"{head['count']} (records were removed from or added to the end)")
            if keyed_seen or head is not None:
                seen = set()
                for name, table in AUDITED.items():
                    for r in conn.execute(select(table).order_by(table.c.id)).mappings():
                        key = (name, int(r["id"]))
                        seen.add(key)
                        if key not in recorded:
                            problems.append(f"{name} row {key[1]} has no audit record (written outside the "
                                            "application)")
                        elif row_digest(name, r) != recorded[key][0]:
                            problems.append(f"{name} row {key[1]} was modified after audit record "
                                            f"{recorded[key][1]} vouched for it")
                for key in sorted(set(recorded) - seen):
                    problems.append(f"{key[0]} row {key[1]} (audit record {recorded[key][1]}) is missing: deleted")
        return problems

    def verify_audit(self) -> int:
        """Recompute the chain and cross-check every row; returns the number of records.

        Raises
        ------
        AuditError
            Naming each row or record that does not verify.
        """
        problems = self.audit_problems()
        if problems:
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise AuditError("Audit does not verify: " + "; ".join(problems[:10]) + more + ".")
        with self.engine.connect() as conn:
            return len(conn.execute(select(audit.c.id)).all())

    # ------------------------------------------------------------ sessions and cases
    def create_session(self, name: str, created_by: Identity | str, model_version: str,
                       refine_params: dict | None = None) -> int:
        """Start a review session (needs the reviewer role)."""
        name = (name or "").strip()
        if not name or not (created_by if isinstance(created_by, Identity) else (created_by or "").strip()):
            raise ValueError(f"A session needs a name and who starts it. Got name={name!r}, created_by={created_by!r}.")
        who = require(created_by, "create_session")
        with self._write() as conn:
            sid = conn.execute(insert(sessions).values(
                name=name, created_by=who.name, created_by_id=who.subject, created_at=_now(),
                model_version=model_version, refine_params=_canonical(refine_params or {}))).inserted_primary_key[0]
            self._append_audit(conn, "session_created", self._digest_rows(conn, sessions, [sid]), session_id=sid,
                               model_version=model_version, **who.audit_fields())
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
                 slice_index: int | None = None, uncertainty: float = 0.0, spacing=None,
                 who: Identity | str = "system") -> int:
        """Add a case with the model's raw and refined masks (two immutable mask versions; reviewer role).

        Positions are unique per session: they are assigned inside the serialised write
        transaction and guarded by a unique index (a conflict is retried).
        """
        actor = require(who, "add_case")
        s = self.session(session_id)
        if np.shape(raw) != np.shape(refined) or np.ndim(raw) not in (2, 3):
            raise ValueError(f"raw and refined must be 2-D masks or 3-D label volumes of one shape. Got "
                             f"{np.shape(raw)} and {np.shape(refined)}.")
        if np.ndim(raw) == 3 and slice_index is not None:
            raise ValueError(f"A volume case covers every slice: slice_index must be None. Got {slice_index}.")
        blobs = {kind: _encode_mask(m) for kind, m in (("raw", raw), ("refined", refined))}
        for attempt in range(5):
            try:
                with self._write() as conn:
                    pos = conn.execute(select(cases.c.position).where(cases.c.session_id == session_id)
                                       .order_by(cases.c.position.desc()).limit(1)).scalar()
                    cid = conn.execute(insert(cases).values(
                        session_id=session_id, position=0 if pos is None else int(pos) + 1, scan_name=scan_name,
                        scan_sha256=_sha(scan_bytes), scan_bytes=scan_bytes, slice_index=slice_index,
                        uncertainty=float(uncertainty), spacing=json.dumps(list(spacing)) if spacing else None,
                        created_at=_now())).inserted_primary_key[0]
                    mvs = []
                    for kind, m in (("raw", raw), ("refined", refined)):
                        mvs.append(conn.execute(insert(mask_versions).values(
                            case_id=cid, kind=kind, author=actor.name, author_id=actor.subject,
                            model_version=s["model_version"],
                            refine_params=s["refine_params"] if kind == "refined" else "{}",
                            mask_png=blobs[kind][0], mask_format=blobs[kind][1],
                            mask_sha256=_sha(np.asarray(m).astype(np.uint8).tobytes()),
                            created_at=_now())).inserted_primary_key[0])
                    rows = self._digest_rows(conn, cases, [cid]) + self._digest_rows(conn, mask_versions, mvs)
                    self._append_audit(conn, "case_added", rows, session_id=session_id, case_id=cid,
                                       scan_sha256=_sha(scan_bytes), model_version=s["model_version"],
                                       **actor.audit_fields())
                return int(cid)
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def cases(self, session_id: int, order: str = "uncertainty") -> list[Case]:
        """Cases of a session, most uncertain first (``order="uncertainty"``) or in upload order ("upload")."""
        if order not in ("uncertainty", "upload"):
            raise ValueError(f"order must be 'uncertainty' or 'upload'. Got {order!r}.")
        key = [cases.c.uncertainty.desc(), cases.c.position] if order == "uncertainty" else [cases.c.position]
        with self.engine.connect() as conn:
            rows = conn.execute(select(cases.c.id, cases.c.session_id, cases.c.position, cases.c.scan_name,
                                       cases.c.slice_index, cases.c.uncertainty, cases.c.spacing)
                                .where(cases.c.session_id == session_id).order_by(*key)).mappings().all()
            ids = [r["id"] for r in rows]
            volume = {cid for (cid,) in conn.execute(select(mask_versions.c.case_id).where(
                mask_versions.c.case_id.in_(ids) & (mask_versions.c.kind == "raw")
                & (mask_versions.c.mask_format == "npz")))} if ids else set()
        return [Case(id=r["id"], session_id=r["session_id"], position=r["position"], scan_name=r["scan_name"],
                     slice_index=r["slice_index"], uncertainty=r["uncertainty"],
                     spacing=tuple(json.loads(r["spacing"])) if r["spacing"] else None,
                     is_volume=r["id"] in volume) for r in rows]

    def case(self, case_id: int) -> Case:
        with self.engine.connect() as conn:
            r = conn.execute(select(cases.c.session_id).where(cases.c.id == case_id)).first()
        if r is None:
            raise ValueError(f"No case with id {case_id}.")
        return next(c for c in self.cases(r.session_id, "upload") if c.id == case_id)

    def scan_bytes(self, case_id: int) -> bytes:
        with self.engine.connect() as conn:
            return conn.execute(select(cases.c.scan_bytes).where(cases.c.id == case_id)).scalar_one()

    def mask(self, case_id: int, kind: str = "refined") -> np.ndarray:
        """The latest mask version of ``kind`` for a case."""
        with self.engine.connect() as conn:
            row = conn.execute(select(mask_versions.c.mask_png, mask_versions.c.mask_format).where(
                (mask_versions.c.case_id == case_id) & (mask_versions.c.kind == kind))
                .order_by(mask_versions.c.id.desc()).limit(1)).first()
        if row is None:
            raise ValueError(f"Case {case_id} has no {kind} mask.")
        return _decode_mask(row[0], row[1])

    def add_mask_version(self, case_id: int, author: Identity | str, mask: np.ndarray, *, kind: str = "edit") -> int:
        """Store an intermediate edit (e.g. a corrected slice of a volume, or a propagated volume) as a new mask version
        (reviewer role).

        Versions are immutable: the latest ``kind="edit"`` version is the working mask (:meth:`mask`); the
        verdict still compares the accepted mask with the model's refined one.
        """
        if not isinstance(author, Identity) and not (author or "").strip():
            raise ValueError("A mask version needs the name of who made it (author is empty).")
        who = require(author, "record_verdict")
        if kind not in ("edit", "propagated"):
            raise ValueError(f"kind must be 'edit' or 'propagated'. Got {kind!r}.")
        model_mask = self.mask(case_id, "refined")
        m = np.asarray(mask).astype(np.uint8)
        if m.shape != model_mask.shape:
            raise ValueError(f"Mask shape {m.shape} does not match the case's {model_mask.shape}.")
        blob, fmt = _encode_mask(m)
        with self._write() as conn:
            case = conn.execute(select(cases.c.session_id).where(cases.c.id == case_id)).first()
            model_version = conn.execute(select(sessions.c.model_version)
                                         .where(sessions.c.id == case.session_id)).scalar()
            mv = conn.execute(insert(mask_versions).values(
                case_id=case_id, kind=kind, author=who.name, author_id=who.subject, model_version=model_version,
                refine_params="{}",
                mask_png=blob, mask_format=fmt, mask_sha256=_sha(m.tobytes()),
                created_at=_now())).inserted_primary_key[0]
            self._append_audit(conn, "mask_version", self._digest_rows(conn, mask_versions, [mv]),
                               session_id=case.session_id, case_id=case_id, kind=kind,
                               mask_sha256=_sha(m.tobytes()), **who.audit_fields())
        return int(mv)

    def working_mask(self, case_id: int, verdict_id: int | None = None,
                     author: Identity | str | None = None) -> np.ndarray:
        """The mask a reviewer continues from: their latest kept edit (by ``author``, matched by subject; edits
        saved before v7 by name), else their last accepted mask (``verdict_id``), else the model's refined mask."""
        who = as_identity(author) if author else None
        mine = ((mask_versions.c.author_id == who.subject)
                | (mask_versions.c.author_id.is_(None) & (mask_versions.c.author == who.name))) if who else None
        with self.engine.connect() as conn:
            edit = conn.execute(select(mask_versions.c.id).where(
                (mask_versions.c.case_id == case_id) & (mask_versions.c.kind == "edit") & mine)
                .order_by(mask_versions.c.id.desc()).limit(1)).scalar() if who else None
            accepted = conn.execute(select(verdicts.c.mask_version_id).where(
                verdicts.c.id == verdict_id)).scalar() if verdict_id is not None else None
        newest = max((v for v in (edit, accepted) if v is not None), default=None)
        if newest is None:
            return self.mask(case_id, "refined")
        with self.engine.connect() as conn:
            row = conn.execute(select(mask_versions.c.mask_png, mask_versions.c.mask_format)
                               .where(mask_versions.c.id == newest)).first()
        return _decode_mask(row[0], row[1])

    def mask_versions(self, case_id: int) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(mask_versions.c.id, mask_versions.c.kind, mask_versions.c.author,
                                       mask_versions.c.model_version, mask_versions.c.mask_sha256,
                                       mask_versions.c.created_at)
                                .where(mask_versions.c.case_id == case_id).order_by(mask_versions.c.id)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------ verdicts
    def check_verdict(self, verdict: str, reason_code: str, reviewer: Identity | str = "x") -> None:
        """Raise ValueError if the verdict form is not acceptable (usable before submitting)."""
        if not isinstance(reviewer, Identity) and not (reviewer or "").strip():
            raise ValueError("A verdict needs the reviewer's name (got an empty name).")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {list(VERDICTS)}. Got {verdict!r}.")
        if reason_code not in REASON_CODES:
            raise ValueError(f"reason_code must be one of {list(REASON_CODES)}. Got {reason_code!r}.")
        if verdict == "reject" and reason_code == "none":
            raise ValueError("A rejection needs a reason code other than 'none'.")

    def record_verdict(self, case_id: int, reviewer: Identity | str, verdict: str, *, mask: np.ndarray | None = None,
                       reason_code: str = "none", comment: str = "", point: tuple[float, float] | None = None,
                       seconds_spent: float = 0.0, spacing=None, region: str = "") -> int:
        """Store a verdict (and, for edits, the corrected mask as a new mask version) in one transaction.

        ``mask`` is the reviewer's accepted mask; without it the model's refined
        mask is the accepted one. Edit-effort metrics (Dice, IoU, HD95, area
        change between the model's refined mask and the accepted mask) are
        stored with the verdict.
        """
        from .metrics import dice, hd95, iou

        self.check_verdict(verdict, reason_code, reviewer.name if isinstance(reviewer, Identity) else reviewer)
        who = require(reviewer, "record_verdict")
        model_mask = self.mask(case_id, "refined")
        accepted = model_mask if mask is None else np.asarray(mask).astype(np.uint8)
        if accepted.shape != model_mask.shape:
            raise ValueError(f"Mask shape {accepted.shape} does not match the case's {model_mask.shape}.")
        edited = not np.array_equal(accepted, model_mask)
        if verdict == "accept" and edited:
            verdict = "accept_with_edits"
        k = max(int(max(accepted.max(initial=0), model_mask.max(initial=0))) + 1, 2)
        if accepted.ndim == 3:
            metrics = self._volume_metrics(case_id, model_mask, accepted, k, spacing)
        else:
            h = hd95(model_mask, accepted, k, spacing)
            metrics = {
                "dice": dice(model_mask, accepted, k).tolist(),
                "iou": iou(model_mask, accepted, k).tolist(),
                "hd95": [None if not np.isfinite(v) else float(v) for v in h],
                "area_change_px": [int((accepted == c).sum()) - int((model_mask == c).sum()) for c in range(k)],
                "edited_pixels": int((accepted != model_mask).sum()),
            }
        blob, fmt = _encode_mask(accepted) if edited else (None, None)
        with self._write() as conn:
            case = conn.execute(select(cases.c.session_id).where(cases.c.id == case_id)).first()
            if case is None:
                raise ValueError(f"No case with id {case_id}.")
            mv = conn.execute(select(mask_versions.c.id).where(
                (mask_versions.c.case_id == case_id) & (mask_versions.c.kind == "refined"))
                .order_by(mask_versions.c.id.desc()).limit(1)).scalar()
            model_version = conn.execute(select(sessions.c.model_version)
                                         .where(sessions.c.id == case.session_id)).scalar()
            rows = []
            if edited:
                mv = conn.execute(insert(mask_versions).values(
                    case_id=case_id, kind="correction", author=who.name, author_id=who.subject,
                    model_version=model_version,
                    refine_params="{}", mask_png=blob, mask_format=fmt, mask_sha256=_sha(accepted.tobytes()),
                    created_at=_now())).inserted_primary_key[0]
                rows += self._digest_rows(conn, mask_versions, [mv])
            vid = conn.execute(insert(verdicts).values(
                case_id=case_id, reviewer=who.name, reviewer_id=who.subject, authenticated=int(who.authenticated),
                verdict=verdict, reason_code=reason_code, comment=comment or "",
                point_x=None if point is None else float(point[0]), point_y=None if point is None else float(point[1]),
                mask_version_id=mv, seconds_spent=float(seconds_spent), metrics=json.dumps(metrics),
                created_at=_now(), region=region or "")).inserted_primary_key[0]
            rows += self._digest_rows(conn, verdicts, [vid])
            self._append_audit(conn, "verdict", rows, session_id=case.session_id, case_id=case_id, verdict_id=vid,
                               **who.audit_fields(), verdict=verdict, reason_code=reason_code,
                               mask_sha256=_sha(accepted.tobytes()), model_version=model_version)
        return int(vid)

    def _volume_metrics(self, case_id: int, model_mask: np.ndarray, accepted: np.ndarray, k: int, spacing) -> dict:
        """Edit effort in 3-D: Dice/IoU per class, HD95 in mm, volume change in mL, edited voxels and slices."""
        from .metrics import dice, iou
        from .volume import hd95_3d

        if spacing is None:
            spacing = self.case(case_id).spacing
        sp = tuple(float(v) for v in spacing) if spacing is not None and len(spacing) == 3 else None
        vox_ml = (sp[0] * sp[1] * sp[2] / 1000.0) if sp else None
        change = [int((accepted == c).sum()) - int((model_mask == c).sum()) for c in range(k)]
        diff = accepted != model_mask
        h = hd95_3d(model_mask, accepted, k, sp)
        return {
            "dimension": 3,
            "dice": dice(model_mask, accepted, k).tolist(),
            "iou": iou(model_mask, accepted, k).tolist(),
            "hd95": [None if not np.isfinite(v) else float(v) for v in h],
            "hd95_unit": "mm" if sp else "voxels",
            "voxel_change": change,
            "volume_change_ml": [None if vox_ml is None else round(v * vox_ml, 6) for v in change],
            "edited_pixels": int(diff.sum()),
            "edited_slices": [int(z) for z in np.flatnonzero(diff.reshape(diff.shape[0], -1).any(1))],
        }

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
            row = conn.execute(select(mask_versions.c.mask_png, mask_versions.c.mask_format).join(
                verdicts, verdicts.c.mask_version_id == mask_versions.c.id).where(verdicts.c.id == verdict_id)).first()
        if row is None:
            raise ValueError(f"No verdict with id {verdict_id}.")
        return _decode_mask(row[0], row[1])

    def latest_verdicts(self, session_id: int) -> dict[tuple[int, str], dict]:
        """The latest verdict per (case, reviewer id)."""
        out: dict[tuple[int, str], dict] = {}
        for v in self.verdicts(session_id):
            out[(v["case_id"], v["reviewer_id"])] = v
        return out

    def visible_verdicts(self, session_id: int, viewer: Identity | str) -> list[dict]:
        """The verdicts ``viewer`` may see: their own (reviewer role), everyone's for an admin."""
        who = require(viewer, "view_verdicts")
        vs = self.verdicts(session_id)
        return vs if who.may("view_all_verdicts") else [v for v in vs if v["reviewer_id"] == who.subject]

    def reviewers_of(self, session_id: int) -> set[str]:
        """Subject ids of the session's creator and of everyone who recorded a verdict in it."""
        ids = {v["reviewer_id"] for v in self.verdicts(session_id)}
        ids.add(self.session(session_id).get("created_by_id") or "")
        return {i for i in ids if i}

    # ------------------------------------------------------------ roles
    def roles_of(self, subject: str) -> set[str]:
        """Roles granted to ``subject`` in the app (grants minus later revocations)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(user_roles).where(user_roles.c.subject == subject)
                                .order_by(user_roles.c.id)).mappings().all()
        held: set[str] = set()
        for r in rows:
            (held.add if r["granted"] else held.discard)(r["role"])
        return held

    def role_grants(self) -> list[dict]:
        """Every grant/revocation, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(user_roles).order_by(user_roles.c.id)).mappings()]

    def set_role(self, subject: str, role: str, granted: bool, actor: Identity | str) -> None:
        """Grant or revoke ``role`` for ``subject`` (admin role; audited)."""
        from .auth import role_rank

        role_rank(role)
        subject = (subject or "").strip()
        if not subject:
            raise ValueError("A role needs the user's subject id (the 'sub' of their sign-in).")
        who = require(actor, "manage_roles")
        with self._write() as conn:
            rid = conn.execute(insert(user_roles).values(subject=subject, role=role, granted=int(granted),
                                                         by_id=who.subject, created_at=_now())).inserted_primary_key[0]
            self._append_audit(conn, "role_granted" if granted else "role_revoked",
                               self._digest_rows(conn, user_roles, [rid]), subject=subject, role=role,
                               **who.audit_fields())

    def agreement(self, case_id: int, viewer: Identity | str) -> list[dict]:
        """Pairwise agreement between reviewers' latest accepted masks for a case.

        Shows everyone's masks, so only reviewers of that session (and admins) may see it.
        """
        from .metrics import dice, hd95
        from .volume import hd95_3d

        who = require(viewer, "view_agreement")
        session_id = self.case(case_id).session_id
        if not who.may("view_all_verdicts") and who.subject not in self.reviewers_of(session_id):
            raise PermissionDenied(f"{who.name} is not a reviewer of session {session_id}: its agreement views "
                                   "show other reviewers' masks.", "view_agreement", "reviewer")
        latest: dict[str, dict] = {}  # by the reviewer's subject: two people may share a display name
        for v in self.verdicts(session_id):
            if v["case_id"] == case_id and v["verdict"] != "reject":
                latest[v.get("reviewer_id") or v["reviewer"]] = v
        names = [v["reviewer"] for v in latest.values()]
        shown = {sid: v["reviewer"] if names.count(v["reviewer"]) == 1 else f"{v['reviewer']} ({sid})"
                 for sid, v in latest.items()}
        subjects = sorted(latest, key=lambda k: (shown[k], k))
        rows = []
        for i, sa in enumerate(subjects):
            for sb in subjects[i + 1:]:
                a, b = shown[sa], shown[sb]
                ma, mb = self.accepted_mask(latest[sa]["id"]), self.accepted_mask(latest[sb]["id"])
                k = int(max(ma.max(initial=0), mb.max(initial=0))) + 1
                fa, fb = (ma > 0).astype(np.uint8), (mb > 0).astype(np.uint8)
                if fa.ndim == 3:
                    sp = self.case(case_id).spacing
                    h = hd95_3d(fa, fb, 2, sp if sp is not None and len(sp) == 3 else None)
                else:
                    h = hd95(fa, fb, 2)
                rows.append({"reviewer_a": a, "reviewer_b": b,
                             "dice_per_class": dice(ma, mb, max(k, 2)).tolist(),
                             "dice_foreground": float(dice(fa, fb, 2)[1]),
                             "hd95_foreground": float(h[1]),
                             "disagreement_px": int((ma != mb).sum())})
        return rows

    def iter_accepted(self, session_id: int | None = None) -> Iterable[tuple[dict, np.ndarray]]:
        """``(verdict, accepted mask)`` for the latest non-rejected verdict per case and reviewer."""
        latest: dict[tuple[int, str], dict] = {}
        for v in self.verdicts(session_id):
            latest[(v["case_id"], v["reviewer_id"])] = v
        for v in latest.values():
            if v["verdict"] != "reject":
                yield v, self.accepted_mask(v["id"])


def submit_verdict(store: ReviewStore, workspace, case_id: int, reviewer: Identity | str, verdict: str, *,
                   model_version: str, mask: np.ndarray | None = None, class_names: tuple[str, ...] | None = None,
                   **verdict_fields: Any) -> tuple[int, Any]:
    """Record a verdict and, unless it is a rejection, save the accepted mask as a correction for fine-tuning.

    Ordered so that a failure leaves nothing half done: the correction is validated and
    written to a hidden staging folder first (bad names, masks or a full disk fail here,
    before anything is stored), then the verdict is committed, then the correction is
    renamed into place. Returns ``(verdict id, Correction or None)``.
    """
    store.check_verdict(verdict, verdict_fields.get("reason_code", "none"), reviewer)
    require(reviewer, "record_verdict")
    case = store.case(case_id)
    staged = None
    if verdict != "reject" and not case.is_volume:  # the fine-tuning workspace takes 2-D corrections only
        accepted = store.mask(case_id, "refined") if mask is None else np.asarray(mask)
        staged = workspace.stage_correction(
            store.scan_bytes(case_id), case.scan_name, accepted, author=reviewer, model_version=model_version,
            source="review", slice_index=case.slice_index, class_names=class_names,
            note=f"review session {case.session_id}, case {case_id}")
    try:
        vid = store.record_verdict(case_id, reviewer, verdict, mask=mask, **verdict_fields)
    except BaseException:
        if staged is not None:
            workspace.discard_staged(staged)
        raise
    return vid, (workspace.commit_correction(staged) if staged is not None else None)


def queue_scan(store: ReviewStore, session_id: int, data: bytes, name: str, model, config, refine=None, *,
               who: Identity | str = "system") -> int:
    """Segment a scan through :mod:`segcore.pipeline` and add it as a case: a 2-D image as one case, a volume as
    one whole-volume case (:func:`segcore.pipeline.segment_volume`, verdict per volume).

    The case keeps the model's raw and refined masks and the mean predictive entropy (the queue's
    uncertainty). Raises :class:`segcore.io.ScanError` for files that cannot be read.
    """
    from .io import load_scan
    from .pipeline import segment, segment_volume

    scan = load_scan(data, name)
    if scan.is_volume:
        vol = segment_volume(scan, model, config, refine, keep_probs=False)
        return store.add_case(session_id, data, name, vol.raw, vol.refined, slice_index=None,
                              uncertainty=float(vol.slice_entropy.mean()), spacing=scan.spacing, who=who)
    seg = segment(scan, model, config, refine)
    return store.add_case(session_id, data, name, seg.raw, seg.refined, slice_index=seg.slice_index,
                          uncertainty=seg.mean_entropy, spacing=seg.spacing, who=who)
