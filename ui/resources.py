"""Shared resources (one per server process) and cached pipeline results.

Models are cached with ``st.cache_resource`` (read-only, shared); predictions, refinements and detections with
bounded ``st.cache_data`` keyed on what really determines them: the scan's content hash, the slice, the model
version and, for refinement, the refinement settings. A display choice (window, view, opacity) is never part of
a key, because it never changes what is computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import streamlit as st

from segcore.io import Scan
from segcore.pipeline import Prediction, Segmentation, predict, refine_prediction
from segcore.refine import RefineConfig
from segcore.store import Workspace, default_data_dir

from .catalogue import SAMPLE_DIR
from .heap import settle_heap

DEFAULT_MODEL_DIR = Path(os.environ.get("SEGCORE_DEFAULT_MODEL", SAMPLE_DIR / "models" / "default"))
MASKRCNN_DIR = SAMPLE_DIR / "models" / "maskrcnn"


@st.cache_resource
def workspace() -> Workspace:
    return Workspace(default_data_dir(), default_model_dir=DEFAULT_MODEL_DIR)


@st.cache_resource
def jobs():
    """The server's fine-tune job manager: jobs run in its worker threads, not in a page script, so they go on
    while people switch pages; ``SEGCORE_FINETUNE_WORKERS`` jobs at once (default 1: the others queue)."""
    from segcore.jobs import JobManager

    return JobManager(workspace(), max_workers=int(os.environ.get("SEGCORE_FINETUNE_WORKERS", "1")),
                      sample_dir=SAMPLE_DIR, instance_model_dir=MASKRCNN_DIR)


@st.cache_resource
def review_store():
    from segcore.review import ReviewStore

    return ReviewStore(data_dir=workspace().root)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _load_model(path: str, mtime: float):
    """``(keras model, compiled predictor, config)``: the predictor (segcore.runtime, OpenVINO f32 by default:
    Keras' masks, several times faster) runs the pipeline; the Keras model serves MC dropout and fine-tuning."""
    from segcore.runtime import load_predictor

    predictor, model, config = load_predictor(path)
    settle_heap()
    return model, predictor, config


@st.cache_resource(show_spinner="Loading the Smart click model…")
def click_model():
    """The shipped click-prompt network (segcore.interactive)."""
    from segcore.interactive import load_model

    model = load_model()
    settle_heap()
    return model


def _loaded(version: str | None):
    """``(version, keras model, predictor, config)`` for a version (the active one by default)."""
    ws = workspace()
    version = version or ws.active_version()
    path = ws.model_dir(version)
    return (version, *_load_model(str(path), (path / "model.keras").stat().st_mtime))


def model_for(version: str | None = None):
    """``(version, keras model, config)`` for a version (the active one by default)."""
    version, model, _, config = _loaded(version)
    return version, model, config


def predictor_for(version: str | None = None):
    """``(version, predictor, config)``: what segments in the app (compiled runtime, Keras as fallback)."""
    version, _, predictor, config = _loaded(version)
    return version, predictor, config


@st.cache_data(max_entries=8, show_spinner=False)
def model_card(version: str) -> dict:
    from segcore.cards import load_card

    return load_card(workspace().model_dir(version))


def refine_key(cfg: RefineConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def digest(*parts) -> str:
    """12 hex characters naming a combination of values (model version, settings) in widget keys."""
    text = "|".join(refine_key(p) if isinstance(p, RefineConfig) else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _refine_from_key(key: str) -> RefineConfig:
    d = json.loads(key)
    return RefineConfig(**{**d, "order": tuple(d["order"]), "keep_largest_classes": tuple(d["keep_largest_classes"])})


@st.cache_data(max_entries=32, show_spinner="Segmenting…")
def prediction(scan_key: str, version: str, slice_index: int | None, _scan: Scan) -> Prediction:
    _, predictor, config = predictor_for(version)
    return predict(_scan, predictor, config, slice_index=slice_index)


@st.cache_data(max_entries=64, show_spinner=False)
def _refined(scan_key: str, version: str, slice_index: int | None, refine: str, _pred: Prediction) -> Segmentation:
    _, _, config = model_for(version)
    return refine_prediction(_pred, config, _refine_from_key(refine))


def segmentation(scan_key: str, scan: Scan, version: str, slice_index: int | None,
                 refine: RefineConfig) -> Segmentation:
    """The pipeline's result for one slice; the model runs once per (scan, slice, version)."""
    pred = prediction(scan_key, version, slice_index, scan)
    return _refined(scan_key, version, slice_index, refine_key(refine), pred)


@st.cache_data(max_entries=8, show_spinner="Sampling the model with dropout…")
def mc_dropout(scan_key: str, version: str, slice_index: int | None, _image) -> object:
    from segcore.infer import mc_dropout_map

    _, model, config = model_for(version)
    return mc_dropout_map(model, _image, config, samples=8)


@st.cache_resource
def instance_workspace():
    from segcore.store import InstanceWorkspace

    return InstanceWorkspace(workspace(), MASKRCNN_DIR)


@st.cache_resource(max_entries=4, show_spinner="Loading the instance model…")
def _load_maskrcnn(path: str, mtime: float):
    from segcore.instances.maskrcnn import MaskRCNN

    model = MaskRCNN.load(path)
    settle_heap()
    return model


def maskrcnn(version: str | None = None):
    """The active (or named) instance model, or None when the shipped one is not there."""
    path = instance_workspace().model_dir(version)
    if not (path / "config.json").is_file():
        return None
    return _load_maskrcnn(str(path), (path / "config.json").stat().st_mtime)


@st.cache_data(max_entries=16, show_spinner="Detecting instances…")
def detections(scan_key: str, slice_index: int | None, pixel_scale: float, version: str, _image) -> dict:
    """Instances on a slice (raw values, normalised by the detector itself)."""
    from segcore.pipeline import detect_instances

    return detect_instances(maskrcnn(version), _image, pixel_scale)


@st.cache_data(max_entries=4, show_spinner=False)
def instance_card() -> dict:
    from segcore.cards import load_card

    return load_card(MASKRCNN_DIR)


@st.cache_data(max_entries=2, show_spinner="Segmenting every slice…")
def _all_slices(scan_key: str, version: str, refine: str, _scan: Scan):
    from segcore.pipeline import segment_all_slices

    _, predictor, config = predictor_for(version)
    return segment_all_slices(_scan, predictor, config, _refine_from_key(refine))


def all_slices(scan_key: str, scan: Scan, version: str, refine: RefineConfig):
    """Refined label map of every axial slice (``D,H,W``, or ``H,W`` for 2-D scans)."""
    return _all_slices(scan_key, version, refine_key(refine), scan)


def whole_volume(scan_key: str, scan: Scan, version: str, refine: RefineConfig, progress=None):
    """``segment_volume`` of the open scan (kept for this session: one volume at a time, without probabilities)."""
    from segcore.pipeline import segment_volume

    tag = (scan_key, version, refine_key(refine))
    held = st.session_state.get("sc_volume")
    if held is not None and held[0] == tag:
        return held[1]
    if progress is None:
        return None
    _, predictor, config = predictor_for(version)
    result = segment_volume(scan, predictor, config, refine, progress=progress, keep_probs=False)
    st.session_state["sc_volume"] = (tag, result)
    return result


def seg_bytes(scan_key: str, labels, scan: Scan, class_names: tuple, version: str, corrected: bool = False) -> bytes:
    """A DICOM SEG of ``labels`` (cached by their content, so a new fill or run is never served stale)."""
    from segcore.labels import content_digest

    return _seg_bytes(scan_key, content_digest(labels), labels, scan, class_names, version, corrected)


@st.cache_data(max_entries=2, show_spinner="Writing the DICOM SEG…")
def _seg_bytes(scan_key: str, labels_sha256: str, _labels, _scan: Scan, class_names: tuple, version: str,
               corrected: bool) -> bytes:
    from segcore.dicomseg import write_seg

    return write_seg(_labels, _scan, class_names, version, corrected)
