"""Shared, cached resources and session state for the Streamlit pages.

Everything heavy is cached: the model per version (``st.cache_resource``, one
per process, read-only), scans, predictions and refinements (``st.cache_data``
with bounded entries). Session state keys are prefixed ``sc_``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import streamlit as st

from segcore.io import CT_PRESETS, Scan, ScanError, auto_window, load_scan, window
from segcore.store import Workspace

ROOT = Path(__file__).resolve().parent
SAMPLE_DIR = ROOT / "sample_data"
DEFAULT_MODEL_DIR = Path(os.environ.get("SEGCORE_DEFAULT_MODEL", SAMPLE_DIR / "models" / "default"))
ERASER = "#ffffff"


def ensure_router() -> None:
    """Send a page run that bypassed ``app.py`` through the router.

    On a freshly started server, a deep link (e.g. ``/review``) reaches a file
    in ``pages/`` before ``app.py`` has declared ``st.navigation``, and
    Streamlit runs the page on its own, without the shared sidebar. Pages call
    this first: such a run is redirected to ``app.py``, which then switches to
    the page that was asked for (query parameters included).
    """
    if not st.session_state.get("sc_router"):
        import inspect

        page = Path(inspect.stack()[1].filename).name
        st.session_state["sc_deeplink"] = (f"pages/{page}", dict(st.query_params))
        st.switch_page("app.py")


def init_state() -> None:
    defaults = {
        "sc_reviewer": "",
        "sc_scan_key": None,  # sha256 of the current scan's bytes
        "sc_scan_name": None,
        "sc_slice": None,
        "sc_refine": None,  # RefineConfig as dict
        "sc_candidate": None,  # fine-tune candidate version awaiting promotion
    }
    for k, v in defaults.items():
        st.session_state.setdefault(k, v)


@st.cache_resource
def workspace() -> Workspace:
    return Workspace(os.environ.get("SEGCORE_DATA_DIR", ROOT / "segcore_data"), default_model_dir=DEFAULT_MODEL_DIR)


@st.cache_resource(max_entries=4)
def _load_model(path: str, mtime: float):
    from segcore.models import load_model

    return load_model(path)


def model_for(version: str | None = None):
    """``(version, model, config)`` for a version (the active one by default)."""
    ws = workspace()
    version = version or ws.active_version()
    path = ws.model_dir(version)
    model, config = _load_model(str(path), (path / "model.keras").stat().st_mtime)
    return version, model, config


# ------------------------------------------------------------------ scans

def sample_files() -> dict[str, Path]:
    demo = sorted((SAMPLE_DIR / "demo").glob("*"), key=lambda p: (not p.name.startswith("phantom_ct_512"), p.name))
    files = {p.name: p for p in demo if "mask" not in p.name and "lesion" not in p.name}
    for p in sorted((SAMPLE_DIR / "phantom" / "test" / "images").glob("*.png"))[:10]:
        files[f"phantom test/{p.name}"] = p
    for p in sorted((SAMPLE_DIR / "instances" / "test" / "images").glob("*.png"))[:5]:
        files[f"instances test/{p.name}"] = p
    return files


def remember_bytes(data: bytes) -> str:
    key = hashlib.sha256(data).hexdigest()
    blobs = st.session_state.setdefault("sc_blobs", {})
    if key not in blobs:
        if len(blobs) >= 8:  # keep the session small: only the latest uploads
            blobs.pop(next(iter(blobs)))
        blobs[key] = data
    return key


def current_bytes() -> bytes | None:
    key = st.session_state.get("sc_scan_key")
    return st.session_state.get("sc_blobs", {}).get(key) if key else None


@st.cache_data(max_entries=16, show_spinner=False)
def load_scan_cached(key: str, name: str, _data: bytes) -> Scan:
    return load_scan(_data, name)


def try_load(data: bytes, name: str) -> Scan | None:
    key = remember_bytes(data)
    try:
        return load_scan_cached(key, name, data)
    except ScanError as exc:
        st.error(f"Could not open **{name}**: {exc}")
        return None


def display_window(scan: Scan, image: np.ndarray, choice: str, manual: tuple[float, float] | None):
    if choice == "manual" and manual:
        return manual
    if choice == "file default" and scan.default_window:
        return scan.default_window
    if choice in CT_PRESETS:
        return CT_PRESETS[choice]
    return auto_window(image)


def to_display(image: np.ndarray, win: tuple[float, float]) -> np.ndarray:
    return window(image if image.ndim == 2 else image.mean(-1), *win)


# ------------------------------------------------------------------ inference

@st.cache_data(max_entries=32, show_spinner=False)
def predict_cached(version: str, key: str, slice_index: int | None, _image: np.ndarray) -> np.ndarray:
    from segcore.infer import predict_proba

    _, model, config = model_for(version)
    return predict_proba(model, _image, config)


@st.cache_data(max_entries=32, show_spinner=False)
def refine_cached(version: str, key: str, slice_index: int | None, win: tuple, cfg_dict: dict,
                  _display: np.ndarray, _probs: np.ndarray, spacing: tuple | None):
    from segcore.refine import RefineConfig, Refiner

    cfg = RefineConfig(**{**cfg_dict, "order": tuple(cfg_dict["order"]),
                          "keep_largest_classes": tuple(cfg_dict["keep_largest_classes"])})
    return Refiner(cfg).run(_display, _probs, spacing=spacing if spacing else None)


@st.cache_data(max_entries=8, show_spinner="Sampling the model with dropout…")
def mc_dropout_cached(version: str, key: str, slice_index: int | None, _image: np.ndarray) -> np.ndarray:
    from segcore.infer import mc_dropout

    _, model, config = model_for(version)
    return mc_dropout(model, _image, config, samples=8)[1]


def correction_canvas(display: np.ndarray, base_mask: np.ndarray, class_names, key: str):
    """Brush / eraser / polygon tools over the scan; returns ``(corrected mask, n strokes, changed px)``.

    Strokes are rasterised from their vector form at full resolution (segcore.annotate).
    """
    from PIL import Image
    from streamlit_drawable_canvas import st_canvas

    from segcore.annotate import apply_strokes, class_color
    from segcore.viz import PALETTE, overlay

    c2, c3, c4 = st.columns([2, 2, 1])
    cls = c2.selectbox("Class", list(range(1, len(class_names))), format_func=lambda c: class_names[c],
                       key=f"{key}_class")
    tool = c3.radio("Tool", ["Brush", "Eraser", "Polygon fill"], horizontal=True, key=f"{key}_tool")
    size = c4.slider("Brush (px)", 1, 60, 12, key=f"{key}_brush")
    h, w = base_mask.shape
    canvas_w = min(720, w * 4)
    scale = w / canvas_w  # image pixels per canvas pixel (same on both axes)
    canvas_h = int(round(h / scale))
    stroke = ERASER if tool == "Eraser" else class_color(cls, PALETTE)
    bg = Image.fromarray(overlay(display, base_mask, 0.4)).resize((canvas_w, canvas_h), Image.NEAREST)
    st.caption("Draw on the scan; the canvas toolbar has undo, redo and clear. Polygon: click the vertices, then "
               "the first vertex again to close and fill it. Strokes are applied at full resolution "
               f"({w}×{h} px, {scale:.2f} image px per screen px).")
    result = st_canvas(fill_color=stroke, stroke_width=size, stroke_color=stroke, background_image=bg,
                       height=canvas_h, width=canvas_w,
                       drawing_mode="polygon" if tool == "Polygon fill" else "freedraw",
                       key=f"{key}_canvas", return_image_data=True, update_streamlit=True)
    objects = (result.json_data or {}).get("objects", []) if result is not None else []
    corrected = apply_strokes(base_mask, objects, scale, PALETTE, eraser_color=ERASER)
    return corrected, len(objects), int((corrected != base_mask).sum())


@st.cache_resource
def review_store():
    from segcore.review import ReviewStore

    return ReviewStore(data_dir=workspace().root)


MASKRCNN_DIR = SAMPLE_DIR / "models" / "maskrcnn"


@st.cache_resource
def maskrcnn():
    """The shipped compact Mask R-CNN, or None when it is not there."""
    from segcore.instances.maskrcnn import MaskRCNN

    if not (MASKRCNN_DIR / "config.json").is_file():
        return None
    return MaskRCNN.load(MASKRCNN_DIR)


@st.cache_data(max_entries=16, show_spinner="Detecting instances…")
def detect_cached(key: str, slice_index: int | None, win: tuple, _display: np.ndarray) -> dict:
    """Instances on the displayed (windowed) image, scaled to [0, 1] as the model was trained."""
    return maskrcnn().detect(_display.astype(np.float32) / 255.0)
