"""Where scans come from: the shipped samples and this session's uploads (kept by content hash, bounded)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from segcore.io import Scan, ScanError, load_scan

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "sample_data"
MAX_UPLOADS_KEPT = 8


def sample_files() -> dict[str, Path]:
    """Shipped sample scans by display name: the demo scans first, then phantom and instance test images."""
    demo = sorted((SAMPLE_DIR / "demo").glob("*"), key=lambda p: (not p.name.startswith("phantom_ct_512"), p.name))
    files = {p.name: p for p in demo if "mask" not in p.name and "lesion" not in p.name}
    for p in sorted((SAMPLE_DIR / "phantom" / "test" / "images").glob("*.png"))[:10]:
        files[f"phantom test/{p.name}"] = p
    for p in sorted((SAMPLE_DIR / "instances" / "test" / "images").glob("*.png"))[:5]:
        files[f"instances test/{p.name}"] = p
    return files


def is_phantom_sample(display_name: str) -> bool:
    """Samples from the CT phantom generator: the shipped segmentation model's own domain (the instance samples
    are the instance model's, not this one's)."""
    return display_name.startswith("phantom")


def is_instance_sample(display_name: str) -> bool:
    """Samples from the instance phantom generator: the shipped instance model's own domain."""
    return display_name.startswith("instances test/")


def remember(data: bytes) -> str:
    """Keep ``data`` in this session under its SHA-256 (only the latest uploads are kept)."""
    key = hashlib.sha256(data).hexdigest()
    blobs = st.session_state.setdefault("sc_blobs", {})
    if key not in blobs:
        if len(blobs) >= MAX_UPLOADS_KEPT:
            blobs.pop(next(iter(blobs)))
        blobs[key] = data
    return key


def scan_bytes(key: str) -> bytes | None:
    return st.session_state.get("sc_blobs", {}).get(key)


@st.cache_data(max_entries=16, show_spinner="Reading the scan…")
def _load(key: str, name: str, series_uid: str | None, _data: bytes) -> Scan:
    if series_uid:
        from segcore.series import load_zip

        return load_zip(_data, name, series_uid=series_uid)
    return load_scan(_data, name)


def open_scan(key: str, name: str, series_uid: str | None = None) -> tuple[Scan | None, str | None]:
    """``(scan, None)`` or ``(None, error message)`` for a remembered upload or sample.

    Several series in one upload raise :class:`segcore.series.SeriesChoiceError` (a pick list), which the
    caller shows before calling again with ``series_uid``.
    """
    from segcore.series import SeriesChoiceError

    data = scan_bytes(key)
    if data is None:
        return None, f"{name} is no longer in this session; open it again."
    try:
        return _load(key, name, series_uid, data), None
    except SeriesChoiceError:
        raise
    except ScanError as exc:
        return None, str(exc)


def as_series(files: list[tuple[str, bytes]]) -> tuple[bytes, str] | None:
    """Several uploaded DICOM files as one series blob (a zip, read by segcore.series), or None when they are not
    all DICOM."""
    from segcore.io import detect_format
    from segcore.series import series_zip

    if len(files) < 2 or any(detect_format(data, name) != "dicom" for name, data in files):
        return None
    return series_zip(files), f"{len(files)} DICOM files.zip"
