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
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["Workspace", "Correction", "atomic_write", "default_data_dir", "PROMOTION_TOLERANCE"]

PROMOTION_TOLERANCE = 0.005  # mean Dice a candidate may lose on the held-out set and still be promoted


def default_data_dir() -> Path:
    return Path(os.environ.get("SEGCORE_DATA_DIR", "segcore_data")).resolve()


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.png"

    @property
    def scan_path(self) -> Path:
        return next(p for p in self.path.iterdir() if p.name.startswith("scan"))


class Workspace:
    """Corrections and model versions under one data directory."""

    def __init__(self, root: str | Path | None = None, default_model_dir: str | Path | None = None):
        self.root = Path(root) if root is not None else default_data_dir()
        self.corrections_dir = self.root / "corrections"
        self.models_dir = self.root / "models"
        self.registry_path = self.models_dir / "registry.json"
        self.default_model_dir = Path(default_model_dir) if default_model_dir else None
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ corrections
    def save_correction(self, scan_bytes: bytes, scan_name: str, mask: np.ndarray, *, author: str,
                        model_version: str, source: str, slice_index: int | None = None,
                        note: str = "") -> Correction:
        """Persist a corrected mask with its scan; returns the saved record.

        The folder is assembled under a temporary name and renamed into place,
        so a crash leaves either the whole correction or nothing.
        """
        author = (author or "").strip()
        if not author:
            raise ValueError("A correction needs the name of who made it (author is empty).")
        if source not in ("raw", "refined", "blank", "previous"):
            raise ValueError(f"source must be 'raw', 'refined', 'blank' or 'previous'. Got '{source}'.")
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"A correction mask must be a non-empty 2-D label map. Got shape {mask.shape}.")
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(f"Mask labels must be in [0, 255]. Got range [{mask.min()}, {mask.max()}].")
        digest = hashlib.sha256(scan_bytes + mask.astype(np.uint8).tobytes()).hexdigest()[:10]
        cid = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + digest
        self.corrections_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.corrections_dir))
        try:
            ext = "".join(Path(scan_name).suffixes[-2:]) if scan_name.lower().endswith(".nii.gz") else Path(scan_name).suffix
            (tmp / f"scan{ext.lower()}").write_bytes(scan_bytes)
            ok, buf = cv2.imencode(".png", mask.astype(np.uint8))
            if not ok:
                raise ValueError("Could not encode the mask as PNG.")
            (tmp / "mask.png").write_bytes(buf.tobytes())
            meta = {"id": cid, "scan_name": scan_name, "author": author, "model_version": model_version,
                    "source": source, "created_at": _now(), "slice_index": slice_index,
                    "shape": list(mask.shape), "note": note,
                    "mask_sha256": hashlib.sha256(mask.astype(np.uint8).tobytes()).hexdigest()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, self.corrections_dir / cid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._correction_from_dir(self.corrections_dir / cid)

    def _correction_from_dir(self, d: Path) -> Correction:
        m = json.loads((d / "meta.json").read_text())
        return Correction(id=m["id"], scan_name=m["scan_name"], author=m["author"],
                          model_version=m["model_version"], source=m["source"], created_at=m["created_at"],
                          slice_index=m.get("slice_index"), shape=tuple(m["shape"]), path=d, note=m.get("note", ""))

    def list_corrections(self) -> list[Correction]:
        """Saved corrections, oldest first (half-written temporary folders are ignored)."""
        if not self.corrections_dir.is_dir():
            return []
        out = []
        for d in sorted(self.corrections_dir.iterdir()):
            if d.name.startswith(".") or not (d / "meta.json").is_file():
                continue
            try:
                out.append(self._correction_from_dir(d))
            except (json.JSONDecodeError, KeyError):
                continue
        return out

    def load_correction(self, correction: Correction | str):
        """``(2-D image, mask)`` of a saved correction."""
        from .io import load_scan

        c = correction if isinstance(correction, Correction) else self._correction_from_dir(self.corrections_dir / correction)
        scan = load_scan(c.scan_path, name=c.scan_name)
        image = scan.slice(0, c.slice_index)
        mask = cv2.imread(str(c.mask_path), cv2.IMREAD_UNCHANGED)
        return image, mask

    def delete_correction(self, cid: str) -> None:
        d = self.corrections_dir / cid
        if not (d / "meta.json").is_file():
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

    def model_dir(self, version: str | None = None) -> Path:
        reg = self._registry()
        version = version or reg["active"]
        if version is None or version not in reg["versions"]:
            raise ValueError(f"Unknown model version '{version}'. Known versions: {sorted(reg['versions'])}.")
        return Path(reg["versions"][version]["path"])

    def add_version(self, model, config, *, metrics: dict, trained_on: list[str], parent: str | None,
                    note: str = "") -> str:
        """Save a candidate model as a new (inactive) version; returns its name."""
        from .models import save_model

        reg = self._registry()
        n = 1 + max([int(v[1:]) for v in reg["versions"] if v[1:].isdigit()] or [0])
        version = f"v{n}"
        config.version = version
        config.parent_version = parent
        config.trained_on = list(trained_on)
        config.metrics = metrics
        config.created_at = _now()
        path = save_model(model, config, self.models_dir / version)
        reg["versions"][version] = {"path": str(path.resolve()), "created_at": config.created_at, "parent": parent,
                                    "metrics": metrics, "trained_on": list(trained_on), "note": note}
        self._write_registry(reg)
        return version

    def activate(self, version: str) -> None:
        """Make ``version`` active (promotion or rollback)."""
        reg = self._registry()
        if version not in reg["versions"]:
            raise ValueError(f"Unknown model version '{version}'. Known versions: {sorted(reg['versions'])}.")
        reg["active"] = version
        reg.setdefault("history", []).append({"active": version, "at": _now()})
        self._write_registry(reg)

    def promote(self, version: str, *, baseline: float, candidate: float, tolerance: float = PROMOTION_TOLERANCE) -> None:
        """Activate ``version`` only if its held-out score does not regress below the active one's.

        ``tolerance`` (mean Dice) absorbs evaluation noise: a candidate more than
        this far below the baseline is refused.
        """
        if candidate + tolerance < baseline:
            raise ValueError(
                f"Refusing to promote {version}: held-out mean Dice {candidate:.4f} is more than {tolerance} below "
                f"the active model's {baseline:.4f}."
            )
        self.activate(version)
