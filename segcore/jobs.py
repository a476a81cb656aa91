"""Fine-tune jobs that run in the server's background, not in a page script.

One :class:`JobManager` per server process (the app keeps it with ``st.cache_resource``) owns worker threads
that run :func:`segcore.finetune.adapt` on saved corrections (``kind="semantic"``) or
:func:`segcore.instances.train.fine_tune_instances` on saved instance corrections (``kind="instances"``, versions
in :class:`segcore.store.InstanceWorkspace`). Every job lives on disk under the workspace::

    <data dir>/jobs/<id>/state.json   spec, state, progress, result or error (rewritten atomically)
    <data dir>/jobs/<id>/log.txt      one line per event / progress record; the traceback of a failure
    <data dir>/jobs/<id>/cancel       present when someone asked to cancel (checked before every step)

States: ``queued`` -> ``running`` -> ``done`` (``result["version"]`` is the new, inactive version) | ``failed``
(``error`` and the log say why) | ``cancelled``. A job never activates anything: promotion stays with
:meth:`segcore.store.Workspace.promote`, which reads the held-out metrics stored with the version.

When a manager starts it looks at the jobs on disk: a ``running`` job whose worker (process id + manager
instance) is gone is marked ``failed`` with its log kept, and ``queued`` jobs of a dead server are queued again.
Versions are numbered under the registry lock (``Workspace.add_version``), so concurrent jobs always get
distinct versions; the active model is never written by a job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path

from .auth import Identity, require
from .store import Workspace, _pid_alive, atomic_write

__all__ = ["JOB_KINDS", "JOB_STATES", "JobManager", "JobSpec", "JobState", "evaluate_against"]

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_KINDS = ("semantic", "instances")
INSTANCE_SETTINGS = {"steps": "training steps (default 400)", "pixel_scale": "scale of the corrected images"}
_FINISHED = ("done", "failed", "cancelled")
# managers of this process whose workers are running (a second manager in the same process, e.g. after a cache
# clear, must not mistake their jobs for orphans)
_LIVE_INSTANCES: set[str] = set()


def _process_token(pid: int) -> str:
    """The start time of process ``pid`` (Linux ``/proc``), so a reused pid is not taken for the old worker."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def _worker_alive(worker: dict) -> bool:
    pid = worker.get("pid")
    if pid is None or int(pid) == os.getpid() or not _pid_alive(int(pid)):
        return False
    token = worker.get("token", "")
    return not token or token == _process_token(int(pid))


def _actor(spec: dict) -> Identity:
    """The identity that submitted the job (checked then); older specs name only a local user."""
    a = spec.get("actor")
    if not a:
        return Identity.local(spec.get("created_by") or "unknown")
    return Identity(a["subject"], a["name"], a.get("email", ""), frozenset(a.get("roles", ())),
                    bool(a.get("authenticated")), a.get("issuer", ""))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass
class JobSpec:
    """What to fine-tune.

    Attributes
    ----------
    created_by : Identity or str
        Who started it: checked for the role that may fine-tune when submitted (a string is a self-declared
        local name), shown in the queue and recorded with the version the job writes.
    correction_ids : sequence of str
        Saved corrections to train on (:meth:`Workspace.list_corrections` ids).
    held_out_ids : sequence of str
        Saved corrections used only for the evaluation against the active model.
    base_version : str or None
        Version to start from; None: the active version when the job is submitted.
    settings : dict
        :class:`segcore.finetune.FineTuneSettings` overrides ("Advanced"); empty = automatic.
    class_names, class_colors : optional
        A new class set (background first) for :func:`segcore.finetune.retarget`, or new colours for the same
        classes; None keeps the model's. Every correction's labels must be classes of the set.
    new_head : bool
        Start the class head from scratch (:func:`segcore.finetune.retarget` ``new_head=True``).
    note : str
        Free text stored with the version.
    kind : str
        ``"semantic"`` (the segmentation model) or ``"instances"`` (the instance model: ``correction_ids`` are
        :meth:`InstanceWorkspace.list` ids, ``base_version`` an instance-model version, ``settings`` may hold
        ``steps`` and ``pixel_scale``; no held-out ids or class changes: the held-out split comes from the
        corrections, as :func:`~segcore.instances.train.fine_tune_instances` makes it).
    """

    created_by: Identity | str
    correction_ids: Sequence[str]
    held_out_ids: Sequence[str] = ()
    base_version: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    class_names: Sequence[str] | None = None
    class_colors: Sequence[Sequence[int]] | None = None
    note: str = ""
    new_head: bool = False
    kind: str = "semantic"

    def to_dict(self) -> dict:
        who = self.created_by
        d = dataclasses.asdict(dataclasses.replace(self, created_by=""))
        if isinstance(who, Identity):
            d["created_by"], d["created_by_id"] = who.name, who.subject
            d["actor"] = {"subject": who.subject, "name": who.name, "email": who.email, "roles": sorted(who.roles),
                          "authenticated": who.authenticated, "issuer": who.issuer}
        else:
            d["created_by"] = who
        d["correction_ids"] = list(self.correction_ids)
        d["held_out_ids"] = list(self.held_out_ids)
        d["class_names"] = list(self.class_names) if self.class_names else None
        d["class_colors"] = [list(c) for c in self.class_colors] if self.class_colors else None
        return d


@dataclasses.dataclass
class JobState:
    """One job as the page shows it (read from ``state.json``).

    ``progress`` is the last record of :func:`segcore.finetune.adapt` (``phase``, ``step``, ``epoch``, ``loss``,
    ``val_dice``, ``elapsed``) or, for an instance job, of :func:`~segcore.instances.train.train_instances`
    (``step``, ``steps``, ``fraction``, ``elapsed``); ``result`` holds ``version`` and, when done, the held-out
    Dice of the candidate and of its base (instance jobs: ``ap50_before``/``ap50_after`` and ``promotable``);
    ``elapsed_s`` counts from start to finish (or to now while running).
    """

    id: str
    state: str
    spec: dict
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: dict = dataclasses.field(default_factory=dict)
    result: dict = dataclasses.field(default_factory=dict)
    error: str = ""
    worker: dict = dataclasses.field(default_factory=dict)
    t_start: float | None = None
    t_end: float | None = None

    @property
    def created_by(self) -> str:
        return self.spec.get("created_by", "")

    @property
    def elapsed_s(self) -> float:
        if self.t_start is None:
            return 0.0
        return round((self.t_end if self.t_end is not None else time.time()) - self.t_start, 1)

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> JobState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def evaluate_against(candidate, candidate_config, baseline, baseline_config, images, masks, *,
                     baseline_version: str | None) -> dict:
    """Held-out metrics in the format :meth:`Workspace.gate` reads.

    ``{"held_out": {...}, "baseline_held_out": {...} | None, "baseline_version": ..., "n_eval_images": n}``.
    Classes that were only renamed (as many classes, so class *k* is still class *k* in the masks) are compared
    class by class under the candidate's names. When classes were added or removed the two cannot be compared on
    the same masks: ``baseline_held_out`` is None and the gate refuses promotion (activating a new class set is a
    separate, explicit decision: :meth:`Workspace.activate`).
    """
    from .train import evaluate_model

    if not len(images):
        raise ValueError("The held-out set is empty: give the evaluation at least one image with a mask.")
    cand = evaluate_model(candidate, candidate_config, list(images), list(masks))
    names, old = tuple(candidate_config.class_names), tuple(baseline_config.class_names)
    same = len(names) == len(old)
    base = evaluate_model(baseline, dataclasses.replace(baseline_config, class_names=names), list(images),
                          list(masks)) if same else None
    out = {"held_out": cand, "baseline_held_out": base, "baseline_version": baseline_version,
           "n_eval_images": len(images)}
    if same and names != old:
        out["renamed_from"] = list(old)
    if not same:
        out["gate_note"] = (f"class set {list(candidate_config.class_names)} differs from "
                            f"{list(baseline_config.class_names)} of {baseline_version}: not comparable")
    return out


class JobManager:
    """Runs fine-tune jobs in worker threads owned by this process; state lives on disk.

    Parameters
    ----------
    workspace : Workspace
        Where corrections, versions and ``jobs/`` live.
    max_workers : int
        Jobs trained at the same time (default 1: on 2 cores a second job only slows both; further jobs queue).
    sample_dir : path or None
        Folder with ``phantom/train`` (replay candidates) and ``phantom/test`` (shipped-domain evaluation);
        default: the repository's ``sample_data``. None: no replay set and no phantom evaluation.
    start : bool
        Start the workers (tests may inspect recovery without starting them).
    instance_model_dir : path, optional
        The shipped instance model (default: ``sample_data/models/maskrcnn``), version "shipped" of instance jobs.
    """

    def __init__(self, workspace: Workspace, *, max_workers: int = 1, sample_dir: str | Path | None = "default",
                 start: bool = True, instance_model_dir: str | Path | None = None):
        from .store import REPO_ROOT

        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1. Got {max_workers}.")
        self.workspace = workspace
        self.jobs_dir = workspace.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.sample_dir = (REPO_ROOT / "sample_data") if sample_dir == "default" else (
            Path(sample_dir) if sample_dir is not None else None)
        self.instance_model_dir = Path(instance_model_dir) if instance_model_dir is not None else (
            REPO_ROOT / "sample_data" / "models" / "maskrcnn")
        self._instances = None
        self.instance = uuid.uuid4().hex
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._shipped_classes = self._read_shipped_classes()
        self.recovered = self._recover()
        if start:
            _LIVE_INSTANCES.add(self.instance)
            for i in range(max_workers):
                t = threading.Thread(target=self._worker, name=f"segcore-finetune-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    # ----------------------------------------------------------------- public API
    def submit(self, spec: JobSpec) -> str:
        """Queue a fine-tune job; returns its id. Checks what can be checked now (author, corrections, version)."""
        if isinstance(spec.created_by, str) and not spec.created_by.strip():
            raise ValueError("A fine-tune job needs the name of who started it (created_by is empty).")
        who = require(spec.created_by, "start_finetune")
        if spec.kind not in JOB_KINDS:
            raise ValueError(f"Unknown job kind '{spec.kind}'. Accepted: {list(JOB_KINDS)}.")
        if spec.kind == "instances":
            return self._queue_job(self._checked_instance_spec(spec, who), who)
        ids = list(spec.correction_ids)
        _check_ids(ids + list(spec.held_out_ids), ids, {c.id for c in self.workspace.list_corrections()},
                   "correction")
        overlap = sorted(set(ids) & set(spec.held_out_ids))
        if overlap:
            raise ValueError(f"Corrections {overlap} are both trained on and held out; choose one.")
        from .finetune import FineTuneSettings

        FineTuneSettings.from_dict(spec.settings)  # unknown or invalid overrides fail now, not in the worker
        self._check_classes(spec)
        spec = dataclasses.replace(spec, created_by=who,
                                   base_version=spec.base_version or self.workspace.active_version())
        if spec.base_version not in self.workspace.versions():
            raise ValueError(f"Unknown base version '{spec.base_version}'. Known: {sorted(self.workspace.versions())}.")
        return self._queue_job(spec, who)

    @property
    def instances(self):
        """The :class:`segcore.store.InstanceWorkspace` instance jobs read corrections from and add versions to."""
        if self._instances is None:
            from .store import InstanceWorkspace

            self._instances = InstanceWorkspace(self.workspace, self.instance_model_dir)
        return self._instances

    def _checked_instance_spec(self, spec: JobSpec, who: Identity) -> JobSpec:
        iws = self.instances
        ids = list(spec.correction_ids)
        _check_ids(ids, ids, {r.id for r in iws.list()}, "instance correction")
        if spec.held_out_ids or spec.class_names or spec.class_colors or spec.new_head:
            raise ValueError("An instance fine-tune takes no held-out ids or class changes: it holds out part of "
                             "its corrections itself and keeps the instance model's classes.")
        unknown = sorted(set(spec.settings or {}) - set(INSTANCE_SETTINGS))
        if unknown:
            raise ValueError(f"Unknown instance fine-tune settings {unknown}. Accepted: {INSTANCE_SETTINGS}.")
        _instance_config(spec.settings or {})  # invalid values fail now, not in the worker
        base = spec.base_version or iws.active_version()
        if base not in iws.versions():
            raise ValueError(f"Unknown instance-model version '{base}'. Known: {sorted(iws.versions())}.")
        return dataclasses.replace(spec, created_by=who, base_version=base, settings=dict(spec.settings or {}))

    def _queue_job(self, spec: JobSpec, who: Identity) -> str:
        ids = list(spec.correction_ids)
        jid = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]
        state = JobState(id=jid, state="queued", spec=spec.to_dict(), created_at=_now(),
                         worker=self._worker_id())
        with self._lock:
            self._cancel[jid] = threading.Event()
        self._write(state)
        self._log(jid, f"queued by {who.name}: {spec.kind}, {len(ids)} corrections, base {spec.base_version}")
        self._queue.put(jid)
        return jid

    def _check_classes(self, spec: JobSpec) -> None:
        """A new class set must be valid and cover every label of the corrections it trains on."""
        from .finetune import correction_fits

        if spec.class_names is None:
            if spec.class_colors is not None:
                raise ValueError("class_colors without class_names: give the class names the colours belong to.")
            names = None
        else:
            names = [str(n).strip() for n in spec.class_names]
            if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"A class set needs at least 2 distinct, non-empty names, background first. "
                                 f"Got {list(spec.class_names)}.")
            if spec.class_colors is not None and (
                    len(spec.class_colors) != len(names)
                    or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in spec.class_colors)):
                raise ValueError(f"class_colors needs one RGB triple in [0, 255] per class ({len(names)}). "
                                 f"Got {[list(c) for c in spec.class_colors]}.")
        if names is None:
            return
        by_id = {c.id: c for c in self.workspace.list_corrections()}
        bad = [(cid, correction_fits(by_id[cid], names)) for cid in list(spec.correction_ids) + list(spec.held_out_ids)]
        bad = [(cid, why) for cid, why in bad if why]
        if bad:
            raise ValueError("These corrections do not fit the class set: "
                             + "; ".join(f"{by_id[c].scan_name} ({c}): {why}" for c, why in bad[:5])
                             + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
                             + ". Leave them out or keep a class for each of their labels.")

    def cancel(self, job_id: str, *, actor: Identity | str | None) -> JobState:
        """Ask a job to stop: a queued job is cancelled now, a running one before its next training step.

        ``actor`` needs the role that may fine-tune (the same as for starting a job).
        """
        who = require(actor, "start_finetune")
        st = self.get(job_id)
        if st.finished:
            return st
        (self.jobs_dir / job_id / "cancel").write_text(_now())
        with self._lock:
            ev = self._cancel.get(job_id)
        if ev is not None:
            ev.set()
        if st.state == "queued":
            return self._finish(st, "cancelled", error=f"cancelled by {who.name} before it started")
        self._log(job_id, f"cancel requested by {who.name}")
        return st

    def get(self, job_id: str) -> JobState:
        """The job's current state from disk."""
        path = self.jobs_dir / str(job_id) / "state.json"
        if not path.is_file():
            raise ValueError(f"No fine-tune job with id '{job_id}'.")
        return JobState.from_dict(json.loads(path.read_text()))

    def jobs(self) -> list[JobState]:
        """All jobs, newest first (for the queue on the page)."""
        out = []
        for d in sorted(self.jobs_dir.iterdir(), reverse=True) if self.jobs_dir.is_dir() else []:
            if d.name.startswith(".") or not (d / "state.json").is_file():
                continue
            try:
                out.append(JobState.from_dict(json.loads((d / "state.json").read_text())))
            except (json.JSONDecodeError, TypeError):
                continue
        return out

    def log(self, job_id: str) -> str:
        """The job's log text."""
        p = self.jobs_dir / str(job_id) / "log.txt"
        return p.read_text() if p.is_file() else ""

    def wait(self, job_id: str, timeout: float = 600.0) -> JobState:
        """Block until the job has finished (for the CLI and tests; the page polls :meth:`get` instead)."""
        end = time.monotonic() + timeout
        while True:
            st = self.get(job_id)
            if st.finished:
                return st
            if time.monotonic() > end:
                raise TimeoutError(f"Job {job_id} still {st.state} after {timeout} s.")
            time.sleep(0.05)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers after their current job (queued jobs stay queued on disk for the next start)."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()
        _LIVE_INSTANCES.discard(self.instance)

    def _worker_id(self) -> dict:
        return {"pid": os.getpid(), "token": _process_token(os.getpid()), "instance": self.instance}

    # ----------------------------------------------------------------- state on disk
    def _write(self, st: JobState) -> None:
        atomic_write(self.jobs_dir / st.id / "state.json", json.dumps(st.to_dict(), indent=1))

    def _log(self, job_id: str, line: str) -> None:
        with open(self.jobs_dir / job_id / "log.txt", "a") as f:
            f.write(f"{_now()} {line}\n")

    def _finish(self, st: JobState, state: str, *, error: str = "", result: dict | None = None) -> JobState:
        st.state, st.error, st.finished_at, st.t_end = state, error, _now(), time.time()
        if result is not None:
            st.result = result
        self._write(st)
        self._log(st.id, f"{state}{': ' + error if error else ''}")
        return st

    def _recover(self) -> list[str]:
        """Mark running jobs of dead workers failed; requeue queued jobs of dead servers. Returns the ids touched.

        Runs under a file lock: two servers (or a server and the CLI) starting together never both take over
        the same orphaned job.
        """
        from filelock import FileLock

        with FileLock(str(self.jobs_dir / ".recover.lock"), timeout=120):
            return self._recover_locked()

    def _recover_locked(self) -> list[str]:
        touched = []
        for st in reversed(self.jobs()):
            if st.finished:
                continue
            w = st.worker or {}
            alive = w.get("instance") in _LIVE_INSTANCES or _worker_alive(w)
            if alive:
                continue
            if st.state == "running":
                self._finish(st, "failed", error="the server stopped while this job was running (worker gone); "
                                                 "the active model was not changed")
                touched.append(st.id)
            elif st.state == "queued":
                st.worker = self._worker_id()
                self._write(st)
                self._log(st.id, "requeued after a server restart")
                with self._lock:
                    self._cancel[st.id] = threading.Event()
                self._queue.put(st.id)
                touched.append(st.id)
        return touched

    # ----------------------------------------------------------------- worker
    def _worker(self) -> None:
        while True:
            jid = self._queue.get()
            if jid is None or self._stopping:
                return
            try:
                st = self.get(jid)
            except ValueError:
                continue
            if st.state != "queued":
                continue
            try:
                self._run(st)
            except BaseException as exc:  # noqa: BLE001 - a job failure must never kill the worker
                from .finetune import FineTuneCancelled

                if isinstance(exc, FineTuneCancelled):
                    self._finish(st, "cancelled", error="cancelled by request")
                else:
                    self._log(jid, traceback.format_exc())
                    self._finish(st, "failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._cancel.pop(jid, None)

    def _cancelled(self, jid: str) -> bool:
        with self._lock:
            ev = self._cancel.get(jid)
        return (ev is not None and ev.is_set()) or (self.jobs_dir / jid / "cancel").exists()

    def _start(self, st: JobState) -> None:
        if self._cancelled(st.id):
            raise _cancelled_error()
        st.state, st.started_at, st.t_start = "running", _now(), time.time()
        st.worker = {**self._worker_id(), "thread": threading.current_thread().name}
        self._write(st)
        self._log(st.id, f"running in pid {os.getpid()}")

    def _progress_writer(self, st: JobState):
        """A progress callback: logs every record, rewrites state.json at most 4 times a second (and on every
        held-out evaluation)."""
        last_write = [0.0]

        def progress(rec: dict) -> None:
            st.progress = rec
            now = time.monotonic()
            self._log(st.id, "progress " + json.dumps(rec))
            if now - last_write[0] > 0.25 or "val_dice" in rec:
                last_write[0] = now
                self._write(st)

        return progress

    def _run(self, st: JobState) -> None:
        if st.spec.get("kind", "semantic") == "instances":
            return self._run_instances(st)
        from .finetune import FineTuneSettings, adapt, retarget

        jid, spec, ws = st.id, st.spec, self.workspace
        self._start(st)
        base_version = spec["base_version"]
        base, base_cfg = ws.validate_version(base_version)
        model, config = base, base_cfg
        names = tuple(spec.get("class_names") or base_cfg.class_names)
        if names != tuple(base_cfg.class_names) or spec.get("new_head"):
            model, config = retarget(base, base_cfg, names, spec.get("class_colors"),
                                     new_head=bool(spec.get("new_head")))
            self._log(jid, f"class set {list(config.class_names)} from {list(base_cfg.class_names)}"
                      + (" with a new head" if spec.get("new_head") else ""))
        elif spec.get("class_colors"):
            config = dataclasses.replace(base_cfg, class_colors=tuple(tuple(c) for c in spec["class_colors"]))
        pairs = [ws.load_correction(c) for c in spec["correction_ids"]]
        held = [ws.load_correction(c) for c in spec.get("held_out_ids", [])]
        # the phantom set (replay candidates and the shipped-domain test) only fits models with the shipped classes
        shipped = tuple(config.class_names) == self._shipped_classes
        replay = self._replay(config) if shipped else None
        res = adapt(model, config, [p[0] for p in pairs], [p[1] for p in pairs],
                    settings=FineTuneSettings.from_dict(spec.get("settings")), replay=replay,
                    progress=self._progress_writer(st), cancel=lambda: self._cancelled(jid))
        self._write(st)
        self._log(jid, f"trained {res.steps} steps ({res.epochs} epochs) in {res.seconds:.1f} s; evaluating")
        images, masks = [p[0] for p in held], [p[1] for p in held]
        n_phantom = 0
        if shipped and self.sample_dir is not None and (self.sample_dir / "phantom" / "test").is_dir():
            from .labels import load_gt_pairs

            t_im, t_m, _ = load_gt_pairs(self.sample_dir / "phantom" / "test")
            images, masks, n_phantom = t_im + images, t_m + masks, len(t_im)
        eval_set = (f"{n_phantom} phantom test image{'' if n_phantom == 1 else 's'} + {len(held)} held-out "
                    f"correction{'' if len(held) == 1 else 's'}")
        if not images:  # nothing else to judge on: the corrections themselves (said so in the metrics)
            images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
            eval_set = "the training corrections themselves (nothing was held out)"
        metrics = evaluate_against(res.model, res.config, base, base_cfg, images, masks,
                                   baseline_version=base_version)
        metrics.update(held_out_cases=list(spec.get("held_out_ids", [])), n_test_images=n_phantom, eval_set=eval_set,
                       finetune=res.decisions, settings=spec.get("settings") or {}, job_id=jid,
                       history=_compact_history(res.history))
        if self._cancelled(jid):
            raise _cancelled_error()
        res.config.card = {**(res.config.card or {}), "training_data": [
            {"source": "corrections", "ids": list(spec["correction_ids"]), "n_images": len(pairs)}],
            "intended_domain": {"notes": f"fine-tuned from {base_version} on {len(pairs)} corrections"}}
        version = ws.add_version(res.model, res.config, metrics=metrics, trained_on=list(spec["correction_ids"]),
                                 parent=base_version, note=spec.get("note") or f"fine-tune job {jid}",
                                 actor=_actor(spec))
        base_dice = (metrics["baseline_held_out"] or {}).get("mean_foreground_dice")
        self._finish(st, "done", result={"version": version,
                                         "held_out_dice": metrics["held_out"]["mean_foreground_dice"],
                                         "baseline_held_out_dice": base_dice, "steps": res.steps,
                                         "epochs": res.epochs, "replay": res.replay,
                                         "class_names": list(res.config.class_names)})

    def _run_instances(self, st: JobState) -> None:
        """Fine-tune the instance model on saved instance corrections; the candidate is a new inactive version
        with its held-out AP50 before and after (``InstanceWorkspace.promote`` gates on them)."""
        from .instances.maskrcnn import MaskRCNN
        from .instances.train import fine_tune_instances

        jid, spec, iws = st.id, st.spec, self.instances
        self._start(st)
        base = spec["base_version"]
        model = MaskRCNN.load(iws.model_dir(base))
        records = {r.id: r for r in iws.list()}
        missing = [c for c in spec["correction_ids"] if c not in records]
        if missing:
            raise ValueError(f"Instance corrections {missing} are gone from the workspace.")
        pairs = iws.training_pairs([records[c] for c in spec["correction_ids"]])
        settings = spec.get("settings") or {}
        res = fine_tune_instances(model, pairs, config=_instance_config(settings),
                                  pixel_scale=settings.get("pixel_scale"), log=lambda line: self._log(jid, line),
                                  progress=self._progress_writer(st), cancel=lambda: self._cancelled(jid))
        if self._cancelled(jid):
            raise _cancelled_error()
        version = iws.add_version(res.model, ap50_before=res.ap50_before, ap50_after=res.ap50_after,
                                  trained_on=list(spec["correction_ids"]), actor=_actor(spec), parent=base,
                                  note=spec.get("note") or f"fine-tune job {jid}")
        self._finish(st, "done", result={"version": version, "ap50_before": res.ap50_before,
                                         "ap50_after": res.ap50_after, "promotable": res.promote,
                                         "n_train_objects": res.n_train_objects, "n_val_objects": res.n_val_objects})

    def _read_shipped_classes(self) -> tuple | None:
        cfg = self.sample_dir / "models" / "default" / "config.json" if self.sample_dir is not None else None
        if cfg is None or not cfg.is_file():
            return None
        return tuple(json.loads(cfg.read_text()).get("class_names", ()))

    def _replay(self, config) -> tuple | None:
        if self.sample_dir is None or not (self.sample_dir / "phantom" / "train").is_dir():
            return None
        from .data import load_split

        return load_split(self.sample_dir / "phantom" / "train", config)


def _check_ids(ids: list, train_ids: list, known: set, what: str) -> None:
    """Something to train on, and every id (trained on or held out) a saved correction of this kind."""
    if not train_ids:
        raise ValueError("A fine-tune job needs at least one correction to train on.")
    missing = sorted(set(ids) - known)
    if missing:
        raise ValueError(f"Unknown {what} ids {missing}. Saved {what}s: {sorted(known)}.")


def _instance_config(settings: dict):
    """The instance fine-tune's training settings: :func:`fine_tune_config`, ``steps`` overridden when given."""
    from .instances.train import fine_tune_config

    steps = settings.get("steps")
    scale = settings.get("pixel_scale")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a whole number >= 1. Got {steps!r}.")
    if scale is not None and not (isinstance(scale, (int, float)) and 0 < scale <= 16):
        raise ValueError(f"pixel_scale must be a number in (0, 16]. Got {scale!r}.")
    return fine_tune_config() if steps is None else fine_tune_config(steps)


def _compact_history(history: list[dict], keep: int = 120) -> list[dict]:
    """Held-out evaluations and every tenth final step (the registry keeps this per version; keep it small)."""
    rows = [h for h in history if "val_dice" in h or (h.get("phase") == "final" and h["step"] % 10 == 0)]
    return rows[-keep:] + ([history[-1]] if history and (not rows or rows[-1] is not history[-1]) else [])


def _cancelled_error():
    from .finetune import FineTuneCancelled

    return FineTuneCancelled("cancelled by request")
