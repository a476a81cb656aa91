"""On-disk workspace: saved corrections and model versions, written atomically.

Layout under the data directory (``SEGCORE_DATA_DIR``, default ``./segcore_data``)::

    corrections/<id>/scan.<ext>   the uploaded scan, byte for byte
    corrections/<id>/mask.png     the corrected label map (uint8)
    corrections/<id>/meta.json    who, when, model version, source mask, slice
    models/<version>/             model.keras + config.json (segcore.models.save_model)
    models/registry.json          versions, their metrics and training cases, the active one
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .auth import Identity, require

__all__ = ["Workspace", "Correction", "InstanceWorkspace", "InstanceCorrection", "atomic_write", "default_data_dir",
           "PROMOTION_TOLERANCE", "PromotionGate",
           "clean_stale_temporaries", "SCAN_EXTENSIONS"]

PROMOTION_TOLERANCE = 0.005  # mean Dice a candidate may lose on the held-out set and still be promoted
SCAN_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd",
                   ".zip")
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``SEGCORE_DATA_DIR`` or ``segcore_data/`` in the repository (the same for the app, the CLI and the library)."""
    return Path(os.environ.get("SEGCORE_DATA_DIR") or REPO_ROOT / "segcore_data").resolve()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


_TMP_PID = re.compile(r"\.tmp-(\d+)-")
STALE_AFTER_S = 3600  # temporaries without a writer pid (older versions) are removed after an hour


def clean_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove what killed writers left in ``folder``: ``.tmp-<pid>-*`` entries whose process is gone.

    A ``.<name>.old`` folder (a model being replaced when the writer died) is put back when
    ``<name>`` is missing, and removed otherwise. Returns the names removed or restored.
    """
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    now = time.time()
    for p in folder.iterdir():
        if not p.name.startswith("."):
            continue
        m = _TMP_PID.search(p.name)
        if m:
            stale = not _pid_alive(int(m.group(1)))
        elif p.name.endswith(".old"):
            target = folder / p.name[1:-4]
            if not target.exists():
                os.replace(p, target)
                done.append(p.name)
                continue
            stale = True
        elif p.name.startswith(".tmp") or ".tmp" in p.name:
            try:
                stale = now - p.stat().st_mtime > STALE_AFTER_S
            except FileNotFoundError:
                continue
        else:
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            done.append(p.name)
    return done


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_records(folder: Path, read) -> list:
    """``read(d)`` for every saved record folder ``d`` (one with ``meta.json``) in ``folder``, oldest first.

    Half-written temporaries (hidden names) are ignored, and a damaged record is skipped so it cannot hide the rest.
    """
    if not folder.is_dir():
        return []
    out = []
    for d in sorted(folder.iterdir()):
        if d.name.startswith(".") or not (d / "meta.json").is_file():
            continue
        try:
            out.append(read(d))
        except (json.JSONDecodeError, KeyError, ValueError, OSError):
            continue
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class Correction:
    id: str
    scan_name: str
    author: str
    model_version: str
    source: str
    created_at: str
    slice_index: int | None
    shape: tuple[int, int]
    path: Path
    note: str = ""
    scan_sha256: str = ""
    class_names: tuple[str, ...] | None = None
    labels: tuple[int, ...] = ()
    series_uid: str | None = None
    mask_sha256: str = ""

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.png"

    @property
    def scan_path(self) -> Path:
        return next(p for p in self.path.iterdir() if p.name.startswith("scan"))


def _scan_extension(scan_name: str) -> str:
    """A safe file extension for a stored scan: one of :data:`SCAN_EXTENSIONS`, else ``.bin``."""
    lower = scan_name.lower()
    for ext in sorted(SCAN_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return ".bin"


@dataclasses.dataclass(frozen=True)
class PromotionGate:
    """The promotion decision for a candidate version, from the metrics stored with it."""

    version: str
    candidate: float
    baseline: float
    baseline_version: str | None
    tolerance: float
    passed: bool
    reason: str


class Workspace:
    """Corrections and model versions under one data directory.

    Every read-modify-write of the model registry (version numbering, activation) holds an
    inter-process file lock (``models/.registry.lock``), so concurrent processes and the
    threads of one Streamlit server never lose each other's updates. Temporaries left by
    killed writers are removed when a workspace is opened.
    """

    def __init__(self, root: str | Path | None = None, default_model_dir: str | Path | None = None):
        self.root = Path(root) if root is not None else default_data_dir()
        self.corrections_dir = self.root / "corrections"
        self.models_dir = self.root / "models"
        self.registry_path = self.models_dir / "registry.json"
        self.default_model_dir = Path(default_model_dir) if default_model_dir else None
        self.root.mkdir(parents=True, exist_ok=True)
        self.cleaned = clean_stale_temporaries(self.corrections_dir) + clean_stale_temporaries(self.models_dir)

    def _lock(self):
        from filelock import FileLock

        self.models_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.models_dir / ".registry.lock"), timeout=600)

    # ------------------------------------------------------------ corrections
    def save_correction(self, scan_bytes: bytes, scan_name: str, mask: np.ndarray, *, author: Identity | str,
                        model_version: str, source: str, slice_index: int | None = None,
                        note: str = "", class_names: tuple[str, ...] | None = None,
                        series_uid: str | None = None) -> Correction:
        """Persist a corrected mask with its scan; returns the saved record.

        The folder is assembled under a temporary name and renamed into place,
        so a crash leaves either the whole correction or nothing.
        """
        staged = self.stage_correction(scan_bytes, scan_name, mask, author=author, model_version=model_version,
                                       source=source, slice_index=slice_index, note=note, class_names=class_names,
                                       series_uid=series_uid)
        return self.commit_correction(staged)

    def stage_correction(self, scan_bytes: bytes, scan_name: str, mask: np.ndarray, *, author: Identity | str,
                         model_version: str, source: str, slice_index: int | None = None, note: str = "",
                         class_names: tuple[str, ...] | None = None, series_uid: str | None = None) -> Path:
        """Validate and write a correction into a hidden temporary folder; :meth:`commit_correction` publishes it.

        Callers that must store something else first (a review verdict) stage, store, then commit:
        every check that can fail runs before anything is stored. ``series_uid`` names the series when the
        scan is an upload holding several (a zip of DICOM series); it is kept so the correction reopens.
        """
        from .labels import png_bytes

        if not isinstance(author, Identity) and not (author or "").strip():
            raise ValueError("A correction needs the name of who made it (author is empty).")
        who = require(author, "save_correction")
        if source not in ("raw", "refined", "blank", "previous", "review"):
            raise ValueError(f"source must be 'raw', 'refined', 'blank', 'previous' or 'review'. Got '{source}'.")
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"A correction mask must be a non-empty 2-D label map. Got shape {mask.shape}.")
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(f"Mask labels must be in [0, 255]. Got range [{mask.min()}, {mask.max()}].")
        digest = hashlib.sha256(scan_bytes + mask.astype(np.uint8).tobytes()).hexdigest()[:10]
        cid = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + digest
        self.corrections_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.corrections_dir))
        try:
            (tmp / f"scan{_scan_extension(scan_name)}").write_bytes(scan_bytes)
            (tmp / "mask.png").write_bytes(png_bytes(mask.astype(np.uint8)))
            meta = {"id": cid, "scan_name": scan_name, "author": who.name, "author_id": who.subject,
                    "authenticated": who.authenticated, "model_version": model_version,
                    "source": source, "created_at": _now(), "slice_index": slice_index,
                    "shape": list(mask.shape), "note": note,
                    "class_names": list(class_names) if class_names else None,
                    "labels": sorted(int(v) for v in np.unique(mask)), "series_uid": series_uid,
                    "scan_sha256": hashlib.sha256(scan_bytes).hexdigest(),
                    "mask_sha256": hashlib.sha256(mask.astype(np.uint8).tobytes()).hexdigest()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def commit_correction(self, staged: Path) -> Correction:
        """Rename a staged correction into place (atomic); returns the record."""
        cid = json.loads((staged / "meta.json").read_text())["id"]
        try:
            os.replace(staged, self.corrections_dir / cid)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return self._correction_from_dir(self.corrections_dir / cid)

    @staticmethod
    def discard_staged(staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def _correction_from_dir(self, d: Path) -> Correction:
        m = json.loads((d / "meta.json").read_text())
        labels = m.get("labels")
        if labels is None:  # saved before the labels were recorded: read them from the mask
            from .labels import load_mask

            labels = sorted(int(v) for v in np.unique(load_mask(d / "mask.png")))
        return Correction(id=m["id"], scan_name=m["scan_name"], author=m["author"],
                          model_version=m["model_version"], source=m["source"], created_at=m["created_at"],
                          slice_index=m.get("slice_index"), shape=tuple(m["shape"]), path=d, note=m.get("note", ""),
                          scan_sha256=m.get("scan_sha256", ""),
                          class_names=tuple(m["class_names"]) if m.get("class_names") else None,
                          labels=tuple(labels), series_uid=m.get("series_uid"), mask_sha256=m.get("mask_sha256", ""))

    def list_corrections(self) -> list[Correction]:
        """Saved corrections, oldest first (half-written temporary folders are ignored)."""
        return _read_records(self.corrections_dir, self._correction_from_dir)

    def load_correction(self, correction: Correction | str):
        """``(2-D image, mask)`` of a saved correction."""
        from .labels import load_mask

        c = correction if isinstance(correction, Correction) else self._correction_from_dir(self.corrections_dir / correction)
        image = open_stored_scan(c.scan_path, c.scan_name, c.series_uid).slice(0, c.slice_index)
        return image, load_mask(c.mask_path)

    def delete_correction(self, cid: str, actor: Identity | str | None = None) -> None:
        """Delete a saved correction (admin role)."""
        require(actor, "delete_correction")
        d = self.corrections_dir / cid
        if not re.fullmatch(r"[0-9T]+-[0-9a-f]+", cid or "") or not (d / "meta.json").is_file():
            raise ValueError(f"No saved correction with id '{cid}'.")
        shutil.rmtree(d)

    # ------------------------------------------------------------ models
    def _registry(self) -> dict:
        if self.registry_path.is_file():
            return json.loads(self.registry_path.read_text())
        reg: dict[str, Any] = {"active": None, "versions": {}}
        if self.default_model_dir is not None and (self.default_model_dir / "config.json").is_file():
            cfg = json.loads((self.default_model_dir / "config.json").read_text())
            reg["versions"]["v1"] = {"path": str(self.default_model_dir.resolve()), "created_at": cfg.get("created_at", ""),
                                     "parent": None, "metrics": cfg.get("metrics", {}), "trained_on": [],
                                     "note": "shipped default model"}
            reg["active"] = "v1"
        return reg

    def _write_registry(self, reg: dict) -> None:
        atomic_write(self.registry_path, json.dumps(reg, indent=1))

    def versions(self) -> dict[str, dict]:
        return self._registry()["versions"]

    def active_version(self) -> str | None:
        return self._registry()["active"]

    def candidates(self) -> list[str]:
        """Versions the promotion gate can compare with the active one: inactive, evaluated on a held-out set;
        newest first (one registry read)."""
        reg = self._registry()
        return [v for v in reversed(list(reg["versions"])) if v != reg["active"]
                and "held_out" in (reg["versions"][v].get("metrics") or {})]

    def rollback_order(self) -> list[str]:
        """Versions other than the active one: those active before first (most recent first), then the rest."""
        reg = self._registry()
        before = [h["active"] for h in reversed(reg.get("history", []))]
        first = next(iter(reg["versions"]), None)  # the shipped version was active before any history was kept
        order = list(dict.fromkeys(before + ([first] if first else []) + list(reg["versions"])))
        return [v for v in order if v != reg["active"] and v in reg["versions"]]

    def model_dir(self, version: str | None = None) -> Path:
        reg = self._registry()
        version = version or reg["active"]
        if version is None or version not in reg["versions"]:
            raise ValueError(f"Unknown model version '{version}'. Known versions: {sorted(reg['versions'])}.")
        return Path(reg["versions"][version]["path"])

    def add_version(self, model, config, *, metrics: dict, trained_on: list[str], parent: str | None,
                    note: str = "", actor: Identity | str | None = None) -> str:
        """Save a candidate model as a new (inactive) version; returns its name (admin role: fine-tuning).

        The version number is chosen and the folder written under the registry lock, so
        concurrent callers (processes or threads) always get distinct versions.
        """
        from .models import save_model

        who = require(actor, "start_finetune")
        with self._lock():
            reg = self._registry()
            taken = {int(v[1:]) for v in reg["versions"] if v[1:].isdigit()}
            taken |= {int(p.name[1:]) for p in self.models_dir.glob("v*") if p.name[1:].isdigit()}
            version = f"v{1 + max(taken or {0})}"
            config.version = version
            config.parent_version = parent
            config.trained_on = list(trained_on)
            config.metrics = metrics
            config.created_at = _now()
            path = save_model(model, config, self.models_dir / version)
            reg["versions"][version] = {"path": str(path.resolve()), "created_at": config.created_at,
                                        "parent": parent, "metrics": metrics, "trained_on": list(trained_on),
                                        "note": note, "created_by": who.name, "created_by_id": who.subject}
            self._write_registry(reg)
        return version

    def validate_version(self, version: str):
        """Load ``version`` (``safe_mode=True``) and check it against its config; returns ``(model, config)``.

        Raises
        ------
        ValueError
            Unknown version, missing folder, corrupt model file, or channels/classes that differ from the config.
        """
        from .models import load_model

        path = self.model_dir(version)
        if not path.is_dir():
            raise ValueError(f"Model version '{version}' has no folder at '{path}'; it cannot be activated.")
        try:
            return load_model(path)
        except FileNotFoundError as exc:
            raise ValueError(f"Model version '{version}' cannot be activated: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"Model version '{version}' cannot be activated: {exc}") from exc

    def activate(self, version: str, *, actor: Identity | str | None = None,
                 expected_active: str | None = None) -> None:
        """Make ``version`` active (promotion or rollback; admin role) after validating that it loads and matches
        its config. With ``expected_active``, refuse if another version became active meanwhile (checked under
        the registry lock, so a decision made against one active version is never applied to another)."""
        who = require(actor, "activate")
        if version not in self.versions():
            raise ValueError(f"Unknown model version '{version}'. Known versions: {sorted(self.versions())}.")
        self.validate_version(version)
        with self._lock():
            reg = self._registry()
            if expected_active is not None and reg["active"] != expected_active:
                raise ValueError(f"{reg['active']} became active while {version} was being checked against "
                                 f"{expected_active}; evaluate {version} again before promoting.")
            reg["active"] = version
            reg.setdefault("history", []).append({"active": version, "at": _now(), "by": who.name,
                                                  "by_id": who.subject, "authenticated": who.authenticated})
            self._write_registry(reg)

    def gate(self, version: str, tolerance: float = PROMOTION_TOLERANCE) -> PromotionGate:
        """The promotion decision for ``version`` from the held-out evaluation stored with it.

        The candidate must have been evaluated against the version that is active now, on the
        same held-out set, and may lose at most ``tolerance`` mean foreground Dice.
        """
        info = self.versions().get(version)
        if info is None:
            raise ValueError(f"Unknown model version '{version}'. Known versions: {sorted(self.versions())}.")
        m = info.get("metrics", {})
        try:
            cand = float(m["held_out"]["mean_foreground_dice"])
            base = float(m["baseline_held_out"]["mean_foreground_dice"])
        except (KeyError, TypeError):
            why = m.get("gate_note") or "it has no held-out evaluation against a baseline"
            return PromotionGate(version, float("nan"), float("nan"), None, tolerance, False,
                                 f"{version} cannot be promoted through the gate: {why}.")
        base_version = m.get("baseline_version", info.get("parent"))
        active = self.active_version()
        if base_version != active:
            return PromotionGate(version, cand, base, base_version, tolerance, False,
                                 f"{version} was evaluated against {base_version}, but {active} is active now; "
                                 "evaluate it again before promoting.")
        if cand + tolerance < base:
            return PromotionGate(version, cand, base, base_version, tolerance, False,
                                 f"Refusing to promote {version}: held-out mean Dice {cand:.4f} is more than "
                                 f"{tolerance} below the active model's {base:.4f}.")
        return PromotionGate(version, cand, base, base_version, tolerance, True,
                             f"{version}: held-out mean Dice {cand:.4f} vs {base:.4f} for {base_version}.")

    def promote(self, version: str, *, tolerance: float = PROMOTION_TOLERANCE,
                actor: Identity | str | None = None) -> PromotionGate:
        """Activate ``version`` (admin role) if its own stored evaluation passes :meth:`gate`; ValueError otherwise."""
        require(actor, "promote")
        decision = self.gate(version, tolerance)
        if not decision.passed:
            raise ValueError(decision.reason)
        self.activate(version, actor=actor, expected_active=decision.baseline_version)
        return decision


# ---------------------------------------------------------------- instance corrections and instance-model versions

def open_stored_scan(path: Path, name: str, series_uid: str | None = None):
    """A saved scan file as a :class:`~segcore.io.Scan`; ``series_uid`` picks one series of a multi-series zip."""
    if series_uid:
        from .series import load_zip

        return load_zip(Path(path).read_bytes(), name, series_uid=series_uid)
    from .io import load_scan

    return load_scan(path, name=name)


@dataclasses.dataclass
class InstanceCorrection:
    id: str
    scan_name: str
    slice_index: int | None
    author: str
    created_at: str
    n_instances: int
    path: Path
    series_uid: str | None = None

    @property
    def coco_path(self) -> Path:
        return self.path / "annotations.json"


class InstanceWorkspace:
    """Instance corrections (COCO with RLE masks beside the scan) and versions of the instance model.

    Layout under the data directory::

        instance_corrections/<id>/scan.<ext>, annotations.json (COCO), meta.json
        models/instances/<version>/        MaskRCNN.save output
        models/instances/registry.json     versions, their AP50 before/after, the active one
    """

    def __init__(self, workspace: Workspace, shipped_dir: str | Path):
        self.ws = workspace
        self.dir = workspace.root / "instance_corrections"
        self.models_dir = workspace.models_dir / "instances"
        self.registry_path = self.models_dir / "registry.json"
        self.shipped_dir = Path(shipped_dir)
        clean_stale_temporaries(self.dir)
        clean_stale_temporaries(self.models_dir)

    # ------------------------------------------------------------ corrections
    def save(self, scan_bytes: bytes, scan_name: str, ids: np.ndarray, *, author: Identity | str,
             slice_index: int | None, class_names: tuple[str, ...], model_version: str,
             series_uid: str | None = None) -> InstanceCorrection:
        """Store corrected instances of one slice (annotator role); atomic like semantic corrections.
        ``series_uid`` names the series of an upload holding several (kept so the correction reopens)."""
        from .instances.coco import build_coco

        who = require(author, "save_correction")
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.size == 0:
            raise ValueError(f"Instances must be an H,W id map. Got shape {ids.shape}.")
        cid = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + \
            hashlib.sha256(scan_bytes + ids.astype(np.int32).tobytes()).hexdigest()[:10]
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.dir))
        try:
            scan_file = f"scan{_scan_extension(scan_name)}"
            (tmp / scan_file).write_bytes(scan_bytes)
            coco = build_coco([{"file_name": scan_file, "ids": ids}], class_names)
            n = len(coco["annotations"])
            (tmp / "annotations.json").write_text(json.dumps(coco))
            meta = {"id": cid, "scan_name": scan_name, "slice_index": slice_index, "author": who.name,
                    "author_id": who.subject, "authenticated": who.authenticated, "created_at": _now(),
                    "n_instances": n, "model_version": model_version, "series_uid": series_uid,
                    "scan_sha256": hashlib.sha256(scan_bytes).hexdigest()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self.dir / cid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._record(self.dir / cid)

    def _record(self, d: Path) -> InstanceCorrection:
        m = json.loads((d / "meta.json").read_text())
        return InstanceCorrection(m["id"], m["scan_name"], m.get("slice_index"), m["author"], m["created_at"],
                                  int(m["n_instances"]), d, m.get("series_uid"))

    def list(self) -> list[InstanceCorrection]:
        return _read_records(self.dir, self._record)

    def training_pairs(self, records: list[InstanceCorrection] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(2-D image, instance ids)`` of saved corrections (the slice they were made on)."""
        from .instances.coco import decode_segmentation

        out = []
        for r in records if records is not None else self.list():
            coco = json.loads(r.coco_path.read_text())
            img = coco["images"][0]
            image = open_stored_scan(r.path / img["file_name"], r.scan_name, r.series_uid).slice(0, r.slice_index)
            ids = np.zeros((img["height"], img["width"]), np.int32)
            for k, ann in enumerate(coco["annotations"], 1):
                ids[decode_segmentation(ann["segmentation"], img["height"], img["width"])] = k
            out.append((image, ids))
        return out

    # ------------------------------------------------------------ model versions
    def _registry(self) -> dict:
        if self.registry_path.is_file():
            return json.loads(self.registry_path.read_text())
        return {"active": "shipped", "versions": {"shipped": {"path": str(self.shipped_dir.resolve()),
                                                              "note": "shipped instance model"}}}

    def versions(self) -> dict:
        return self._registry()["versions"]

    def active_version(self) -> str:
        return self._registry()["active"]

    def candidates(self) -> list[str]:
        """Versions :meth:`promote` can take: fine-tuned from the active one, with held-out AP50 before/after;
        newest first (a job may have finished while nobody watched; one registry read)."""
        reg = self._registry()
        found = [v for v, i in reg["versions"].items() if v != reg["active"] and i.get("parent") == reg["active"]
                 and "ap50_after" in i]
        return sorted(found, key=lambda v: reg["versions"][v].get("created_at", ""), reverse=True)

    def model_dir(self, version: str | None = None) -> Path:
        reg = self._registry()
        version = version or reg["active"]
        if version not in reg["versions"]:
            raise ValueError(f"Unknown instance-model version '{version}'. Known: {sorted(reg['versions'])}.")
        return Path(reg["versions"][version]["path"])

    def add_version(self, model, *, ap50_before: float, ap50_after: float, trained_on: list[str],
                    actor: Identity | str | None, parent: str | None = None, note: str = "") -> str:
        """Save a fine-tuned instance model (admin role) as a new inactive version, under the registry lock.

        ``parent``: the version it was fine-tuned from and compared with (default: the active one); a job passes
        its base version, which may no longer be active when it finishes, so :meth:`promote` refuses it then."""
        who = require(actor, "start_finetune")
        with self.ws._lock():
            reg = self._registry()
            if parent is not None and parent not in reg["versions"]:
                raise ValueError(f"Unknown parent version '{parent}'. Known: {sorted(reg['versions'])}.")
            n = 1 + max([int(v[1:]) for v in reg["versions"] if v[1:].isdigit()] or [1])
            version = f"v{n}"
            path = model.save(self.models_dir / version)
            reg["versions"][version] = {"path": str(Path(path).resolve()), "created_at": _now(),
                                        "parent": parent or reg["active"], "ap50_before": ap50_before,
                                        "ap50_after": ap50_after, "trained_on": list(trained_on),
                                        "created_by": who.name, "created_by_id": who.subject, "note": note}
            atomic_write(self.registry_path, json.dumps(reg, indent=1))
        return version

    def promote(self, version: str, *, actor: Identity | str | None) -> None:
        """Activate ``version`` (admin role) if its held-out AP50 did not drop below its parent's."""
        require(actor, "promote")
        info = self.versions().get(version)
        if info is None:
            raise ValueError(f"Unknown instance-model version '{version}'.")
        if info.get("ap50_after", -1) < info.get("ap50_before", 0):
            raise ValueError(f"Refusing to promote {version}: held-out AP50 {info['ap50_after']:.3f} is below "
                             f"{info['ap50_before']:.3f} before fine-tuning.")
        parent = info.get("parent")
        if parent is not None and parent != self.active_version():
            raise ValueError(f"{version} was compared with {parent}, but {self.active_version()} is active now; "
                             f"fine-tune again from the active model before promoting.")
        self.activate(version, actor=actor, expected_active=parent)

    def activate(self, version: str, *, actor: Identity | str | None, expected_active: str | None = None) -> None:
        """Make ``version`` the active instance model (admin role) after checking that it loads; recorded in the
        registry's history (who and when)."""
        from .instances.maskrcnn import MaskRCNN

        who = require(actor, "activate")
        MaskRCNN.load(self.model_dir(version))
        with self.ws._lock():
            reg = self._registry()
            if expected_active is not None and reg["active"] != expected_active:
                raise ValueError(f"{reg['active']} became active while {version} was being checked against "
                                 f"{expected_active}; compare {version} again before promoting.")
            reg["active"] = version
            reg.setdefault("history", []).append({"active": version, "at": _now(), "by": who.name,
                                                  "by_id": who.subject, "authenticated": who.authenticated})
            atomic_write(self.registry_path, json.dumps(reg, indent=1))
