"""Correct: draw on the mask of the current scan and save it with who and which model."""

import numpy as np
import streamlit as st

import app_state
from segcore.viz import overlay

app_state.ensure_router()
st.title("Correct")

ws = app_state.workspace()
data = app_state.current_bytes()
name = st.session_state.get("sc_scan_name")
raw = st.session_state.get("sc_raw")
refined = st.session_state.get("sc_refined")
display = st.session_state.get("sc_display")
if data is None or raw is None or display is None:
    st.info("Open a scan on **Segment & compare** first; its raw and refined masks are corrected here.")
    st.page_link("pages/segment.py", label="← Segment & compare", icon=":material/biotech:")
    st.stop()

version = st.session_state.get("sc_version") or ws.active_version()
_, _, mconfig = app_state.model_for(version)
slice_index = st.session_state.get("sc_slice")
scan_tag = f"{st.session_state['sc_scan_key'][:12]}-{slice_index}"
previous = [c for c in ws.list_corrections() if c.scan_name == name and c.slice_index == slice_index]

starts = ["refined", "raw"] + (["previous"] if previous else [])
start = st.radio("Start from", starts, horizontal=True, key="sc_start",
                 help="'previous' reloads the last correction saved for this scan")
if start == "previous":
    _, base_mask = ws.load_correction(previous[-1])
    base_mask = base_mask.astype(np.uint8)
else:
    base_mask = (refined if start == "refined" else raw).astype(np.uint8)
h, w = base_mask.shape
corrected, n_objects, changed = app_state.correction_canvas(display, base_mask, mconfig.class_names,
                                                            key=f"sc_corr_{scan_tag}_{start}")

st.markdown(f"**{n_objects}** strokes · **{changed}** pixels changed from the {start} mask")
with st.expander("Preview of the corrected mask", expanded=changed > 0):
    st.image(overlay(display, corrected, 0.5), width=min(w, 720))

author = st.session_state.get("sc_reviewer", "").strip()
save = st.button("Save correction", type="primary", disabled=not author, key="sc_save")
if not author:
    st.warning("Enter your name in the sidebar to save: corrections record who made them.")
if save:
    try:
        rec = ws.save_correction(data, name, corrected, author=author, model_version=version,
                                 source="previous" if start == "previous" else start, slice_index=slice_index)
    except ValueError as exc:
        st.error(f"Not saved: {exc}")
    else:
        st.success(f"Saved correction {rec.id} ({changed} pixels changed) to {rec.path}")

saved = ws.list_corrections()
if saved:
    st.subheader(f"Saved corrections ({len(saved)})")
    st.dataframe([{"id": c.id, "scan": c.scan_name, "slice": c.slice_index, "by": c.author,
                   "model": c.model_version, "from": c.source, "at": c.created_at} for c in saved],
                 hide_index=True, width="stretch")
