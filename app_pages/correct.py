"""Correct: edit the mask of the scan open on Segment & compare and save it with who and which model."""

import streamlit as st

from segcore.annotate import changed_pixels
from segcore.dicomseg import seg_not_offered_reason
from segcore.display import display_image, resolve_window
from segcore.labels import content_digest, load_mask
from segcore.viz import nifti_bytes, overlay
from ui import auth, catalogue, resources, state, widgets

st.title("Correct")
cur = state.current()
scan, error = catalogue.open_scan(cur.key, cur.name, cur.series_uid) if cur else (None, None)
if scan is None:
    if error:
        st.warning(error)
    st.info("Open a scan on **Segment & compare** first; its raw and refined masks are corrected here.")
    st.page_link("app_pages/segment.py", label="← Segment & compare", icon=":material/biotech:")
    st.stop()

ws = resources.workspace()
_, _, mconfig = resources.model_for(cur.model_version)
names, colors = mconfig.class_names, mconfig.class_colors
if scan.is_volume:  # move through the volume here too: correct a few slices, fill the rest, review, repeat
    z = st.slider("Slice", 0, scan.num_slices - 1, cur.slice_index, key=f"sc_corr_slice_{cur.short}")
    cur = state.update_current(slice_index=z)
marked = st.session_state.setdefault("sc_marked", {}).setdefault(cur.scan_key, {})
filled = st.session_state.setdefault("sc_filled", {}).get(cur.scan_key)
seg = resources.segmentation(cur.scan_key, scan, cur.model_version, cur.slice_index, cur.refine)
image = scan.slice(0, cur.slice_index)
display = display_image(image, resolve_window(scan, image, cur.window))

where = f"slice {cur.slice_index} (of 0–{scan.num_slices - 1})" if scan.is_volume else "2-D image"
st.markdown(f"**Editing:** {cur.name} · {where} · {image.shape[1]}×{image.shape[0]} px · masks from model "
            f"**{cur.model_version}** ({widgets.refine_summary(cur.refine)})")
widgets.show_legend(names, colors, prefix="Classes: ")

previous = [c for c in ws.list_corrections()  # the same bytes (and series), not merely the same file name
            if c.scan_sha256 == cur.key and c.series_uid == cur.series_uid and c.slice_index == cur.slice_index]
starts = (["marked"] if cur.slice_index in marked else []) + (["filled"] if filled is not None else []) + \
    ["refined", "raw"] + (["previous"] if previous else [])
start = st.radio("Start from", starts, horizontal=True, key="sc_start",
                 format_func=lambda s: {"refined": "refined mask", "raw": "raw mask",
                                        "marked": "this slice as you marked it",
                                        "filled": "the volume filled from your corrected slices",
                                        "previous": f"last saved correction ({previous[-1].created_at})"
                                        if previous else ""}[s])
base_mask = {"previous": lambda: load_mask(previous[-1].mask_path), "refined": lambda: seg.refined,
             "raw": lambda: seg.raw, "marked": lambda: marked[cur.slice_index],
             "filled": lambda: filled[cur.slice_index]}[start]()
# the editor starts again whenever what it started from changes (scan, slice, start, model, refinement)
tag = f"sc_corr_{cur.short}-{cur.slice_index}-{start}-{resources.digest(cur.model_version, cur.refine)}"


@st.fragment
def editor():
    """Edits rerun only this part of the page: the figure/canvas, the counter and Save."""
    corrected, edits = widgets.mask_editor(image, display, base_mask, names, key=tag, colors=colors)
    changed = changed_pixels(base_mask, corrected)
    st.markdown(f"**{edits}** · **{widgets.plural(changed, 'pixel')} changed** from the {start} mask")
    # a toggle, not an expander: a collapsed expander still builds and sends its image on every click
    if st.toggle("Preview of the corrected mask", key="sc_corr_preview"):
        st.image(overlay(display, corrected, 0.5, colors), width=min(image.shape[1], 720))
    author = state.identity()
    refusal = auth.needs(author, "save_correction")
    saved_key = f"{tag}_saved"  # the digest of the mask last saved from this editor: the same mask is not saved twice
    already = st.session_state.get(saved_key, (None,))[0] == content_digest(corrected)
    save = st.button("Save correction", type="primary", disabled=refusal is not None or changed == 0 or already,
                     key="sc_save", help="Enabled once you have changed at least one pixel (and are allowed to save "
                                         "corrections); disabled again once this mask is saved.")
    if refusal:
        st.warning(refusal if author else "Enter your name in the sidebar to save: corrections record who made them.")
    elif already:
        st.success(st.session_state[saved_key][1])
    elif changed == 0:
        st.caption("Nothing to save yet: draw on the mask or add an object with Smart click first.")
    if save and not already:
        try:
            rec = ws.save_correction(catalogue.scan_bytes(cur.key), cur.name, corrected, author=author,
                                     model_version=cur.model_version, source=start, slice_index=cur.slice_index,
                                     class_names=names, series_uid=cur.series_uid)
        except (ValueError, OSError, PermissionError) as exc:
            st.error(f"Not saved: {exc}")
        else:
            st.session_state[saved_key] = (content_digest(corrected), f"Saved correction of {cur.name} ("
                                           f"{widgets.plural(changed, 'pixel')} changed) to {rec.path}")
            st.rerun()


editor()

if scan.is_volume:
    st.subheader("Correct a few slices, fill the rest")
    done = sorted(marked)
    st.caption(f"Corrected slices: {', '.join(map(str, done)) or 'none yet'}. Mark the slices you corrected (spread "
               "over the object); *Fill* interpolates their shapes between them and follows the image beyond them, "
               "then you review any slice here, correct it, mark it and fill again.")
    c1, c2, c3 = st.columns(3)
    if c1.button(f"Mark slice {cur.slice_index} as corrected", key="sc_mark"):
        marked[cur.slice_index] = widgets.edited_mask(tag, base_mask)
        st.rerun()
    if c2.button("Unmark", disabled=cur.slice_index not in marked, key="sc_unmark"):
        marked.pop(cur.slice_index, None)
        st.rerun()
    if c3.button(f"Fill the other slices from {widgets.plural(len(done), 'corrected slice')}", type="primary",
                 disabled=not done, key="sc_fill"):
        from segcore.volume import propagate

        bar = st.progress(0.0, text="Filling…")
        st.session_state["sc_filled"][cur.scan_key] = propagate(scan.pixels, dict(marked), spacing=scan.spacing,
                                                           progress=lambda f, m: bar.progress(f, text=m))
        st.rerun()
    if filled is not None:
        from segcore.volume import class_volumes_ml

        vols = class_volumes_ml(filled, scan.spacing, names)
        st.success(f"Filled volume from {widgets.plural(len(done), 'corrected slice')}: "
                   + ", ".join(f"{n} {v} mL" for n, v in vols.items()) + ". Review other slices with the slider "
                   "and *Start from: the volume filled*.")
        stem = cur.name.split(".")[0]
        d1, d2 = st.columns(2)
        d1.download_button("Filled label volume (NIfTI)", nifti_bytes(filled, scan), f"{stem}_filled.nii.gz",
                           "application/gzip", key="sc_dl_filled")
        reason = seg_not_offered_reason(scan)
        if reason:
            d2.caption(reason)
        else:
            d2.download_button("Filled segmentation (DICOM SEG, semi-automatic)",
                               resources.seg_bytes(cur.scan_key, filled, scan, tuple(names), cur.model_version, True),
                               f"{stem}_seg.dcm", "application/dicom", key="sc_dl_filled_seg")
saved = ws.list_corrections()
if saved:
    st.subheader(f"Saved corrections ({len(saved)})")
    st.dataframe([{"scan": c.scan_name, "slice": c.slice_index, "by": c.author, "model": c.model_version,
                   "from": c.source, "saved at": c.created_at} for c in saved], hide_index=True, width="stretch")
