"""Correct: edit the mask of the scan open on Segment & compare and save it with who and which model."""

import streamlit as st

from segcore.display import display_image, resolve_window
from segcore.annotate import changed_pixels
from segcore.labels import load_mask
from segcore.viz import overlay
from ui import auth, catalogue, resources, state, widgets

st.title("Correct")
cur = state.current()
scan, error = catalogue.open_scan(cur.key, cur.name) if cur else (None, None)
if scan is None:
    if error:
        st.warning(error)
    st.info("Open a scan on **Segment & compare** first; its raw and refined masks are corrected here.")
    st.page_link("app_pages/segment.py", label="← Segment & compare", icon=":material/biotech:")
    st.stop()

ws = resources.workspace()
_, _, mconfig = resources.model_for(cur.model_version)
names = mconfig.class_names
seg = resources.segmentation(cur.key, scan, cur.model_version, cur.slice_index, cur.refine)
image = scan.slice(0, cur.slice_index)
display = display_image(image, resolve_window(scan, image, cur.window))

where = f"slice {cur.slice_index} of {scan.num_slices}" if scan.is_volume else "2-D image"
st.markdown(f"**Editing:** {cur.name} · {where} · {image.shape[1]}×{image.shape[0]} px · masks from model "
            f"**{cur.model_version}** ({widgets.refine_summary(cur.refine)})")
widgets.show_legend(names, prefix="Classes: ")

previous = [c for c in ws.list_corrections() if c.scan_name == cur.name and c.slice_index == cur.slice_index]
starts = ["refined", "raw"] + (["previous"] if previous else [])
start = st.radio("Start from", starts, horizontal=True, key="sc_start",
                 format_func=lambda s: {"refined": "refined mask", "raw": "raw mask",
                                        "previous": f"last saved correction ({previous[-1].created_at})"
                                        if previous else ""}[s])
base_mask = load_mask(previous[-1].mask_path) if start == "previous" else (seg.refined if start == "refined"
                                                                           else seg.raw)
tag = f"sc_corr_{cur.key[:12]}-{cur.slice_index}-{start}"


@st.fragment
def editor():
    """Edits rerun only this part of the page: the figure/canvas, the counter and Save."""
    corrected, edits = widgets.mask_editor(image, display, base_mask, names, key=tag)
    changed = changed_pixels(base_mask, corrected)
    st.markdown(f"**{edits}** · **{widgets.plural(changed, 'pixel')} changed** from the {start} mask")
    with st.expander("Preview of the corrected mask", expanded=False):
        st.image(overlay(display, corrected, 0.5), width=min(image.shape[1], 720))
    author = state.identity()
    refusal = auth.needs(author, "save_correction")
    save = st.button("Save correction", type="primary", disabled=refusal is not None or changed == 0, key="sc_save",
                     help="Enabled once you have changed at least one pixel (and are allowed to save corrections).")
    if refusal:
        st.warning(refusal if author else "Enter your name in the sidebar to save: corrections record who made them.")
    elif changed == 0:
        st.caption("Nothing to save yet: draw on the mask or add an object with Smart click first.")
    if save:
        try:
            rec = ws.save_correction(catalogue.scan_bytes(cur.key), cur.name, corrected, author=author,
                                     model_version=cur.model_version, source=start, slice_index=cur.slice_index,
                                     class_names=names)
        except (ValueError, OSError, PermissionError) as exc:
            st.error(f"Not saved: {exc}")
        else:
            st.success(f"Saved correction of {cur.name} ({widgets.plural(changed, 'pixel')} changed) to {rec.path}")


editor()
saved = ws.list_corrections()
if saved:
    st.subheader(f"Saved corrections ({len(saved)})")
    st.dataframe([{"scan": c.scan_name, "slice": c.slice_index, "by": c.author, "model": c.model_version,
                   "from": c.source, "saved at": c.created_at} for c in saved], hide_index=True, width="stretch")
