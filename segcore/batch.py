"""Batch segmentation of an archive: every scan under a folder through :mod:`segcore.pipeline`, on Ray or locally.

``python -m segcore predict INPUT --out OUT`` calls :func:`run_batch`. Each scan is read with
:func:`segcore.io.load_scan`, every axial slice is segmented with :func:`segcore.pipeline.predict` and refined
with :func:`segcore.pipeline.refine_prediction` (the defaults; ``refine=False`` keeps the raw argmax), and the
label map is written next to a per-scan manifest:

- ``OUT/<relative path>/<stem>_mask.nii.gz`` for volumes and NIfTI input (on the scan's grid, its affine),
  ``..._mask.png`` for 2-D images (``H,W`` uint8 labels);
- ``OUT/.manifests/<relative path>.json``: the input's SHA-256, the run identity (model file SHA-256 and version,
  runtime, refinement config hash), the output files' SHA-256 and the scan's table row;
- ``OUT/results.csv`` (or ``.parquet``): one row per scan with pixel counts, volumes (mm^3) or areas (mm^2) per
  class, timings in ms, and the error of each scan that failed.

Resumable: a scan whose manifest matches its input hash and the run identity, and whose outputs exist with the
recorded hashes, is skipped, so a crash or a killed worker loses at most the scans in flight. Outputs are written
atomically and the manifest last. A scan that cannot be read (:class:`~segcore.io.ScanError`) is recorded as
failed with its error and never stops the run (and is not retried while its bytes are unchanged); any other error
in one scan is recorded too and retried by the next run, and so is a scan whose worker died
:data:`MAX_ATTEMPTS` times while segmenting it (Ray restarts killed workers and retries their batches).

Engines: ``"ray"`` runs an actor pool on Ray Data (the model is loaded once per worker; a local Ray instance is
started unless ``address`` or ``RAY_ADDRESS`` names a cluster); ``"local"`` runs the same :class:`ScanWorker` in
this process (no Ray needed; the baseline).

Input: files under a folder (or one file). DICOM series folders are a later addition: a grouping function in
:data:`SOURCE_GROUPERS` may turn several files into one :class:`ScanSource` of kind ``"dicom_series"`` read by a
loader registered in :data:`SOURCE_LOADERS`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MANIFEST_DIR",
    "SOURCE_GROUPERS",
    "SOURCE_LOADERS",
    "BatchConfig",
    "BatchReport",
    "ScanSource",
    "ScanWorker",
    "discover",
    "run_batch",
]

MANIFEST_DIR = ".manifests"
MAX_ATTEMPTS = 3  # a scan whose worker died this often while segmenting it is recorded as failed
TAIL_COLUMNS = ["load_ms", "predict_ms", "refine_ms", "write_ms", "total_ms", "output", "runtime", "model_version",
                "worker"]
MANIFEST_FORMAT = 1
ENGINES = ("auto", "ray", "local")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Settings of a batch run.

    Parameters
    ----------
    model_dir : str
        Saved model version (``model.keras`` + ``config.json``).
    refine : bool
        Refine with the default :class:`~segcore.refine.RefineConfig` (True) or keep the raw argmax.
    runtime : str
        ``"auto"`` (:data:`segcore.runtime.DEFAULT_RUNTIME`), ``"keras"``, ``"openvino"``, ``"openvino-bf16"``
        or ``"onnxruntime"``.
    table : str
        File name of the results table in the output folder: ``*.csv`` or ``*.parquet``.
    scans_per_batch : int
        Scans handed to a worker per call (Ray Data batch size); slices of a volume always stay together.
    """

    model_dir: str = "sample_data/models/default"
    refine: bool = True
    runtime: str = "auto"
    table: str = "results.csv"
    scans_per_batch: int = 2

    def __post_init__(self):
        if not str(self.table).endswith((".csv", ".parquet")):
            raise ValueError(f"table must end with .csv or .parquet. Got '{self.table}'.")
        if int(self.scans_per_batch) < 1:
            raise ValueError(f"scans_per_batch must be >= 1. Got {self.scans_per_batch}.")


@dataclasses.dataclass(frozen=True)
class ScanSource:
    """One scan to segment: ``rel`` (its path under the input root, the key of its outputs) and its file(s)."""

    rel: str
    paths: tuple[str, ...]
    kind: str = "file"
    sha256: str = ""
    stem: str = ""  # output path without the suffix, relative to the output folder (set by run_batch)

    def to_item(self) -> dict:
        return {"source": json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_item(cls, text: str) -> ScanSource:
        d = json.loads(text)
        return cls(rel=d["rel"], paths=tuple(d["paths"]), kind=d["kind"], sha256=d["sha256"], stem=d["stem"])


def _load_file(src: ScanSource):
    from .io import load_scan

    return load_scan(src.paths[0])


# kind -> loader; a DICOM series reader registers "dicom_series" here
SOURCE_LOADERS: dict[str, Callable[[ScanSource], Any]] = {"file": _load_file}
# functions (folder, files) -> (sources, remaining files), applied in order before the one-file-one-scan default
SOURCE_GROUPERS: list[Callable[[Path, list[Path]], tuple[list[ScanSource], list[Path]]]] = []


def _sha256_files(paths: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def discover(input_path: str | Path, exclude: str | Path | None = None) -> list[ScanSource]:
    """The scans under ``input_path`` (a folder, searched recursively, or one file), sorted, with input hashes.

    Hidden files and folders (names starting with ".") are left out, and so is ``exclude`` (the output folder,
    when it lies inside the input folder).
    """
    root = Path(input_path)
    skip = Path(exclude).resolve() if exclude is not None else None
    if root.is_file():
        files, base = [root], root.parent
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)
                       and not (skip is not None and p.resolve().is_relative_to(skip)))
        base = root
    else:
        raise FileNotFoundError(f"No such file or folder: '{root}'. Expected a scan file or a folder of scans.")
    sources: list[ScanSource] = []
    for group in SOURCE_GROUPERS:
        found, files = group(base, files)
        sources.extend(found)
    sources.extend(ScanSource(rel=p.relative_to(base).as_posix(), paths=(str(p),)) for p in files)
    return sorted((dataclasses.replace(s, sha256=_sha256_files(s.paths)) for s in sources), key=lambda s: s.rel)


def _stem(rel: str) -> str:
    name = Path(rel).name
    for ext in (".nii.gz", ".nrrd", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _output_stems(sources: list[ScanSource]) -> dict[str, str]:
    """Relative output stem per source; scans that would share one (a.png, a.tif) keep their extensions."""
    stems = {s.rel: (Path(s.rel).parent / _stem(s.rel)).as_posix() for s in sources}
    counts = Counter(stems.values())
    return {rel: stem if counts[stem] == 1 else (Path(rel).parent / Path(rel).name.replace(".", "_")).as_posix()
            for rel, stem in stems.items()}


def run_identity(cfg: BatchConfig) -> dict:
    """What a scan's outputs depend on besides its bytes: model file, model version, runtime, refinement."""
    from .refine import RefineConfig
    from .runtime import RuntimeSpec, model_file_hash

    model_cfg = json.loads((Path(cfg.model_dir) / "config.json").read_text())
    refine = dataclasses.asdict(RefineConfig()) if cfg.refine else None
    refine_hash = hashlib.sha256(json.dumps(refine, sort_keys=True, default=list).encode()).hexdigest()[:16]
    return {"model_sha256": model_file_hash(cfg.model_dir), "model_version": str(model_cfg.get("version", "")),
            "runtime": RuntimeSpec.parse(cfg.runtime).label, "refine": refine_hash if cfg.refine else "none",
            "manifest_format": MANIFEST_FORMAT}


def manifest_path(out_dir: Path, rel: str) -> Path:
    return out_dir / MANIFEST_DIR / f"{rel}.json"


def attempts_path(out_dir: Path, rel: str) -> Path:
    """Counts starts on a scan not yet finished: a worker killed mid-scan (OOM, decoder crash) leaves it behind."""
    return out_dir / MANIFEST_DIR / f"{rel}.attempts"


def is_complete(out_dir: Path, src: ScanSource, identity: dict) -> bool:
    """True when the manifest of ``src`` matches its bytes and ``identity`` and every output has its hash."""
    try:
        m = json.loads(manifest_path(out_dir, src.rel).read_text())
    except (OSError, ValueError):
        return False
    if m.get("input_sha256") != src.sha256 or m.get("identity") != identity:
        return False
    if m.get("status") == "failed":
        return m.get("error_kind") == "scan"  # unreadable bytes stay unreadable; other errors are retried
    for out in m.get("outputs", {}).values():
        p = out_dir / out["path"]
        if not p.is_file() or _sha256_files([str(p)]) != out["sha256"]:
            return False
    return m.get("status") == "ok"


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow was already initialised in this process: keep its pools
        pass


class ScanWorker:
    """Loads the model once, then segments, refines and writes scans (:meth:`process`; ``__call__`` for Ray Data).

    Parameters
    ----------
    cfg : BatchConfig
    out_dir : str
    threads : int, optional
        Inference threads of this worker (TensorFlow / the compiled runtime).
    """

    def __init__(self, cfg: BatchConfig, out_dir: str, threads: int | None = None):
        _limit_threads(threads)
        from .pipeline import no_refinement
        from .refine import RefineConfig
        from .runtime import RuntimeSpec, load_predictor

        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.predictor, self.model, self.config = load_predictor(cfg.model_dir, RuntimeSpec.parse(cfg.runtime,
                                                                                                   threads))
        self.refine = RefineConfig() if cfg.refine else no_refinement()
        self.identity = run_identity(cfg)
        # load (or export) the compiled model and trace the network now, not inside the first scan
        h, w = self.config.input_size
        self.predictor(np.zeros((1, h, w, self.config.channels), np.float32), training=False)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [self.process(ScanSource.from_item(str(s))) for s in batch["source"]]  # {"row", "span"}
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}

    def process(self, src: ScanSource) -> dict:
        """Segment one scan, write its label map and manifest (never raises for one scan).

        Returns ``{"row": table row, "span": [start, end]}`` (wall-clock seconds, for throughput).
        """
        from .io import ScanError

        started = time.time()
        t0 = time.perf_counter()
        row: dict[str, Any] = {"file": src.rel, "status": "ok", "error": "", "worker": self.worker,
                               "model_version": self.identity["model_version"]}
        manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "source": src.rel, "input_sha256": src.sha256,
                                    "identity": self.identity}
        from .store import atomic_write

        tries = attempts_path(self.out_dir, src.rel)
        try:
            started_before = int(tries.read_text())
        except (OSError, ValueError):
            started_before = 0
        try:
            if started_before >= MAX_ATTEMPTS:  # a poison scan: Ray would retry it forever
                raise RuntimeError(f"the worker died {started_before} times while segmenting this scan (out of "
                                   "memory or a crash in a decoder); not retried again in this run")
            atomic_write(tries, str(started_before + 1))
            scan = SOURCE_LOADERS[src.kind](src)
            row["load_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            labels, timings = self._segment(scan)
            row.update(timings)
            row.update(self._measure(scan, labels))
            t1 = time.perf_counter()
            manifest["outputs"] = {"labels": self._write(src, scan, labels)}
            row["output"] = manifest["outputs"]["labels"]["path"]
            row["write_ms"] = round((time.perf_counter() - t1) * 1000, 2)
        except ScanError as exc:
            row.update(status="failed", error=str(exc))
            manifest["error_kind"] = "scan"
        except Exception as exc:  # noqa: BLE001 - one bad scan must not stop an archive run
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            manifest["error_kind"] = "other"
        row["runtime"] = getattr(self.predictor, "active", None) or "keras"
        row["total_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        manifest.update(status=row["status"], error=row["error"], row=row)
        atomic_write(manifest_path(self.out_dir, src.rel), json.dumps(manifest, indent=1, sort_keys=True))
        tries.unlink(missing_ok=True)  # the next run gives a crashed scan a fresh set of attempts
        return {"row": row, "span": [started, time.time()]}

    def _segment(self, scan) -> tuple[np.ndarray, dict]:
        from .pipeline import predict, refine_prediction

        slices, t_pred, t_ref = [], 0.0, 0.0
        for z in range(scan.num_slices) if scan.is_volume else [None]:
            pred = predict(scan, self.predictor, self.config, slice_index=z)
            seg = refine_prediction(pred, self.config, self.refine)
            t_pred += seg.timings.get("predict", 0.0)
            t_ref += sum(v for k, v in seg.timings.items() if k != "predict")
            slices.append(seg.refined)
        labels = np.stack(slices) if scan.is_volume else slices[0]
        return labels.astype(np.uint8), {"slices": len(slices), "predict_ms": round(t_pred, 2),
                                         "refine_ms": round(t_ref, 2)}

    def _measure(self, scan, labels: np.ndarray) -> dict:
        counts = np.bincount(labels.ravel(), minlength=self.config.num_classes)
        unit = None
        if scan.spacing is not None:
            unit = float(np.prod(scan.spacing))
        row: dict[str, Any] = {"format": scan.format, "shape": "x".join(map(str, labels.shape))}
        kind = "volume_mm3" if labels.ndim == 3 else "area_mm2"
        for c, name in enumerate(self.config.class_names):
            row[f"{name}_pixels"] = int(counts[c]) if c < len(counts) else 0
            row[f"{name}_{kind}"] = None if unit is None else round(row[f"{name}_pixels"] * unit, 3)
        return row

    def _write(self, src: ScanSource, scan, labels: np.ndarray) -> dict:
        from .labels import png_bytes
        from .store import atomic_write
        from .viz import nifti_bytes

        if labels.ndim == 3 or scan.format == "nifti":
            rel, data = src.stem + "_mask.nii.gz", nifti_bytes(labels, scan)
        else:
            rel, data = src.stem + "_mask.png", png_bytes(labels)
        atomic_write(self.out_dir / rel, data)
        return {"path": rel, "sha256": hashlib.sha256(data).hexdigest()}


@dataclasses.dataclass
class BatchReport:
    """What a run did: scans found, processed now, skipped as complete, failed; seconds; the table's path."""

    total: int
    processed: int
    skipped: int
    failed: int
    seconds: float
    table: Path
    engine: str
    workers: int

    steady_seconds: float = 0.0
    ok: int = 0  # scans with complete outputs after the run (this run's and earlier runs')

    @property
    def scans_per_second(self) -> float:
        """Scans processed per second of :attr:`steady_seconds` (starting workers and loading models excluded)."""
        return self.processed / self.steady_seconds if self.steady_seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"total": self.total, "processed": self.processed, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3), "steady_seconds": round(self.steady_seconds, 3),
                "scans_per_s": round(self.scans_per_second, 3), "ok": self.ok, "table": str(self.table),
                "engine": self.engine,
                "workers": self.workers}


class _Progress:
    """A progress bar on a terminal (one line redrawn), a line per tenth of the run in a log."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None

    def update(self, row: dict, span: list[float]) -> None:
        now = time.perf_counter()
        self.first = span[0] if self.first is None else min(self.first, span[0])
        self.last = span[1] if self.last is None else max(self.last, span[1])
        self.done += 1
        if row["status"] != "ok":
            self.failed += 1
            print(f"{chr(13) if self.tty else ''}skipped {row['file']}: {row['error']}", file=self.stream, flush=True)
        if not self.enabled:
            return
        tenth = max(1, self.total // 10)
        if self.tty or self.done % tenth == 0 or self.done == self.total:
            rate = self.done / max(now - self.t0, 1e-9)
            bar = "#" * int(30 * self.done / max(self.total, 1))
            print(f"{chr(13) if self.tty else ''}[{bar:<30}] {self.done}/{self.total} scans, {rate:.2f}/s, "
                  f"{self.failed} failed ", end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.total and self.tty:
            print(file=self.stream, flush=True)

    @property
    def steady_seconds(self) -> float:
        """From the start of the first scan to the end of the last (excludes starting workers, loading models)."""
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _run_local(todo: list[ScanSource], cfg: BatchConfig, out_dir: Path, threads: int | None) -> Iterator[dict]:
    worker = ScanWorker(cfg, str(out_dir), threads)
    for src in todo:
        yield worker.process(src)


def _ray_init(address: str | None, num_cpus: int | None) -> Path | None:
    """Connect to ``address`` or start a private local Ray; returns the local instance's temp dir (else None)."""
    import ray

    # the marker lets an operator (and bench/batch.py) find this run's worker processes
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "SEGCORE_BATCH_DRIVER": str(os.getpid())}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:  # an existing cluster: ship this segcore package to its workers
        ray.init(address=address, runtime_env={"py_modules": [str(Path(__file__).resolve().parent)],
                                               "env_vars": env}, logging_level="ERROR", log_to_driver=False)
        return None
    # a private local instance: no dashboard, small object store, its own temp dir (short: Ray's socket paths)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    temp = Path(f"/tmp/ray-segcore-{os.getpid()}")
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, object_store_memory=256 * 1024 ** 2, _temp_dir=str(temp),
             runtime_env={"env_vars": env})
    return temp


def _run_ray(todo: list[ScanSource], cfg: BatchConfig, out_dir: Path, workers: int, address: str | None
             ) -> Iterator[dict]:
    import logging
    import shutil

    import ray
    import ray.data

    address = address or os.environ.get("RAY_ADDRESS") or None
    owned = not ray.is_initialized()  # a caller's own Ray session is used as it is, and left running
    temp = _ray_init(address, None) if owned else None

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run's own progress line instead
    ctx.enable_operator_progress_bars = False
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_worker = max(1, int(cpus // workers)) if temp is not None else 1
    ds = ray.data.from_items([s.to_item() for s in todo],
                             override_num_blocks=max(1, min(len(todo), -(-len(todo) // cfg.scans_per_batch))))
    ds = ds.map_batches(ScanWorker, fn_constructor_kwargs={"cfg": cfg, "out_dir": str(out_dir), "threads": per_worker},
                        batch_size=cfg.scans_per_batch, batch_format="numpy", num_cpus=per_worker,
                        compute=ray.data.ActorPoolStrategy(size=workers))
    # Ray Data restarts a killed actor and retries its batch (max_restarts=-1, max_task_retries=-1 by default)
    finished = False
    try:
        for row in ds.iter_rows():
            yield json.loads(row["record"])
        finished = True
    finally:
        if owned:
            ray.shutdown()
        if temp is not None and finished:  # keep the logs of a failed run
            shutil.rmtree(temp, ignore_errors=True)


def _write_table(out_dir: Path, cfg: BatchConfig, sources: list[ScanSource]) -> tuple[Path, int]:
    """Write the results table from the manifests of ``sources``; returns its path and the number of scans ok."""
    from .export import csv_safe
    from .store import atomic_write

    rows = []
    for s in sources:
        try:
            rows.append(json.loads(manifest_path(out_dir, s.rel).read_text())["row"])
        except (OSError, ValueError, KeyError):
            rows.append({"file": s.rel, "status": "missing", "error": "no result (the run was interrupted)"})
    path = out_dir / cfg.table
    n_ok = sum(r.get("status") == "ok" for r in rows)
    if cfg.table.endswith(".parquet"):
        import pandas as pd

        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)  # needs pyarrow
        atomic_write(path, buf.getvalue())
        return path, n_ok
    columns = ["file", "status", "error", "format", "shape", "slices"]
    for r in rows:
        columns.extend(k for k in r if k not in columns and k not in TAIL_COLUMNS)
    columns += TAIL_COLUMNS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else csv_safe(r.get(k))) for k in columns})
    atomic_write(path, buf.getvalue())
    return path, n_ok


def run_batch(input_path: str | Path, out_dir: str | Path, cfg: BatchConfig | None = None, *, engine: str = "ray",
              workers: int | None = None, address: str | None = None, progress: bool = True) -> BatchReport:
    """Segment every scan under ``input_path`` into ``out_dir``, skipping scans already complete.

    Parameters
    ----------
    engine : str
        ``"ray"`` (an actor pool of ``workers`` model replicas), ``"local"`` (this process) or ``"auto"``
        (Ray when the ``ray`` package is installed, else local).
    workers : int, optional
        Ray workers (default: the machine's CPU count; ignored by ``"local"``).
    address : str, optional
        Ray cluster (``ray://host:10001`` or ``auto``); default ``RAY_ADDRESS``, else a private local instance.
    """
    cfg = cfg or BatchConfig()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}. Got '{engine}'.")
    if engine == "auto":
        engine = "ray" if ray_available() else "local"
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    sources = discover(input_path, exclude=out_dir)
    identity = run_identity(cfg)
    stems = _output_stems(sources)
    sources = [dataclasses.replace(s, stem=stems[s.rel]) for s in sources]
    todo = [s for s in sources if not is_complete(out_dir, s, identity)]
    workers = int(workers or os.cpu_count() or 1)
    bar = _Progress(len(todo), enabled=progress)
    if todo:
        records = (_run_local(todo, cfg, out_dir, None) if engine == "local"
                   else _run_ray(todo, cfg, out_dir, workers, address))
        for rec in records:
            bar.update(rec["row"], rec["span"])
    bar.close()
    table, n_ok = _write_table(out_dir, cfg, sources)
    return BatchReport(total=len(sources), processed=bar.done, skipped=len(sources) - len(todo),
                       failed=bar.failed, seconds=time.perf_counter() - t0, table=table, engine=engine,
                       workers=1 if engine == "local" else workers, steady_seconds=bar.steady_seconds, ok=n_ok)
