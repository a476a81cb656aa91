"""Segment & compare: pick or upload a scan, see the raw and refined masks side by side."""

import json

import streamlit as st

from segcore.annotate import plane_point
from segcore.cards import domain_warnings
from segcore.dicomseg import seg_not_offered_reason
from segcore.display import display_image, resolve_window
from segcore.export import coco_from_detections, instance_rows
from segcore.figures import image_panels, ortho_click, orthogonal_views
from segcore.infer import entropy
from segcore.measure import class_table, volume_table
from segcore.refine import RefineConfig, component_table
from segcore.series import SeriesChoiceError
from segcore.viz import VIEWS, diff_layer, instance_labels, mask_layer, nifti_bytes, overlay, png_bytes, view_panels
from segcore.viz import plane as plane_of
from ui import catalogue, resources, state, widgets

st.title("Segment & compare")
ws = resources.workspace()
versions = list(ws.versions())
if not versions:
    st.error("No model found. Expected the shipped model in sample_data/models/default.")
    st.stop()

# ---------------------------------------------------------------- which scan, which model
left, right = st.columns([2, 1])
with left:
    source = st.radio("Scan", ["Sample", "Upload"], horizontal=True, key="sc_source")
    if source == "Sample":
        samples = catalogue.sample_files()
        label = st.selectbox("Sample scan", list(samples), key="sc_sample")
        data, name, phantom = samples[label].read_bytes(), samples[label].name, catalogue.is_phantom_sample(label)
        instance_sample = catalogue.is_instance_sample(label)
    else:
        instance_sample = False
        ups = st.file_uploader("Upload scans (PNG, JPEG, BMP, TIFF, DICOM, NIfTI, NRRD)", accept_multiple_files=True,
                               key="sc_uploads")
        if not ups:
            st.info("Upload one or more scans, or switch to a sample.")
            st.stop()
        files = [(u.name, u.getvalue()) for u in ups]
        series = catalogue.as_series(files)
        if series and st.toggle(f"Open the {len(files)} DICOM files as one series (a volume)", value=True,
                                key="sc_as_series"):
            (data, name), phantom = series, False
        else:
            # a new upload selects itself; earlier ones stay one click away
            pick = st.selectbox("Uploaded scan", [u.name for u in ups], index=len(ups) - 1,
                                key=f"sc_upload_pick_{len(ups)}")
            up = next(u for u in ups if u.name == pick)
            data, name, phantom = up.getvalue(), up.name, False
with right:
    active = ws.active_version()
    version = st.selectbox("Model version", versions, index=versions.index(active), key="sc_version",
                           format_func=lambda v: f"{v} (active)" if v == active else v,
                           help="The active version is used unless you pick another.")

key = catalogue.remember(data)
series_uid = None
try:
    scan, error = catalogue.open_scan(key, name)
except SeriesChoiceError as choice:
    st.warning(f"**{name}** holds {len(choice.series)} series; they are never mixed. Pick one:")
    info = st.selectbox("Series", choice.series, format_func=lambda i: i.label(), key=f"sc_series_{key[:12]}")
    series_uid = info.uid
    scan, error = catalogue.open_scan(key, name, series_uid)
if scan is None:
    st.error(f"Could not open **{name}**: {error}")
    st.stop()
for note in scan.metadata.get("warnings", []):
    st.warning(note)
for skipped in scan.metadata.get("skipped", []):
    st.warning(f"Skipped {skipped.get('name', '?')}: {skipped.get('reason', '')}")
previous = state.current()
if previous is None or (previous.key, previous.name, previous.model_version, previous.series_uid) != (
        key, name, version, series_uid):
    state.set_current(state.CurrentScan(key=key, name=name, model_version=version,  # refinement settings carry over
                                        refine=previous.refine if previous is not None else RefineConfig(),
                                        slice_index=scan.num_slices // 2 if scan.is_volume else None,
                                        is_phantom_sample=phantom, is_instance_sample=instance_sample,
                                        series_uid=series_uid))
skey, short = state.current().scan_key, state.current().short  # the scan on screen (series included)
card = resources.model_card(version)
widgets.model_card(card, domain_warnings(card, scan, is_phantom_sample=phantom))


# ---------------------------------------------------------------- whole volume: 3-D refinement, volumes, views, exports
def volume_panel(scan, skey):
    cur = state.current()
    st.subheader(f"Whole volume ({scan.num_slices} slices)")
    vol = resources.whole_volume(skey, scan, cur.model_version, cur.refine)
    if vol is None:
        st.caption("Segment every slice (batched through the model), refine each slice, then refine in 3-D "
                   "(26-connected components, hole filling, small components in mm³); volumes in mL, 3-D views, "
                   "NIfTI and DICOM SEG exports follow.")
        if not st.button(f"Segment all {scan.num_slices} slices", type="primary", key="sc_vol_go"):
            return
        bar = st.progress(0.0, text="Starting…")
        vol = resources.whole_volume(skey, scan, cur.model_version, cur.refine,
                                     progress=lambda f, m: bar.progress(f, text=m))
        bar.empty()
    t = vol.timings
    st.caption(f"Segmented in {t['total']:.1f} s (model {t['predict']:.1f} s, per-slice refinement "
               f"{t['refine_2d']:.1f} s, 3-D {t['refine_3d']:.1f} s).")
    st.dataframe(volume_table(vol), hide_index=True, width="stretch")
    comps = vol.components()
    with st.expander(f"3-D components ({len(comps)})"):
        st.dataframe(comps, hide_index=True, width="stretch")
    orthogonal_viewer(scan, vol)
    stem = cur.name.split(".")[0]
    c1, c2 = st.columns(2)
    c1.download_button("Refined label volume (NIfTI, on the scan's grid)", nifti_bytes(vol.refined, scan),
                       f"{stem}_mask.nii.gz", "application/gzip", key="sc_dl_vol_nifti")
    reason = seg_not_offered_reason(scan)
    if reason:
        c2.caption(reason)
    else:
        _, _, mconfig = resources.model_for(cur.model_version)
        c2.download_button("Refined segmentation (DICOM SEG)",
                           resources.seg_bytes(skey, vol.refined, scan, tuple(mconfig.class_names), cur.model_version),
                           f"{stem}_seg.dcm", "application/dicom", key="sc_dl_vol_seg")


@st.fragment
def orthogonal_viewer(scan, vol):
    """Axial, coronal and sagittal planes with a linked crosshair: sliders per plane, or click a plane."""
    d, h, w = scan.pixels.shape
    ss = st.session_state
    colors = resources.model_for(state.current().model_version)[2].class_colors
    pk = f"sc_ortho_{state.current().short}"
    for axis, v in zip("zyx", (d // 2, h // 2, w // 2)):
        ss.setdefault(f"{pk}_{axis}", v)
    event = ss.get(f"{pk}_fig")
    pts = ((event or {}).get("selection") or {}).get("points", []) if event else []
    if pts and repr(pts) != ss.get(f"{pk}_seen"):
        ss[f"{pk}_seen"] = repr(pts)
        click = ortho_click(pts[0])
        if click is not None:  # the sliders follow the click
            moved = plane_point(*click, (ss[f"{pk}_z"], ss[f"{pk}_y"], ss[f"{pk}_x"]))
            for axis, v in zip("zyx", moved):
                ss[f"{pk}_{axis}"] = int(v)
    cols = st.columns(4)
    which = cols[0].radio("Labels", ["refined", "raw", "difference"], key="sc_ortho_which")
    z = cols[1].slider("Axial slice", 0, d - 1, key=f"{pk}_z")
    y = cols[2].slider("Coronal row", 0, h - 1, key=f"{pk}_y")
    x = cols[3].slider("Sagittal column", 0, w - 1, key=f"{pk}_x")
    win = resolve_window(scan, scan.slice(0, z), state.current().window)

    def layer(name, index):
        if which == "difference":
            return diff_layer(plane_of(vol.raw, name, index), plane_of(vol.refined, name, index))
        return mask_layer(plane_of(getattr(vol, which), name, index), 0.45, colors)

    fig = orthogonal_views(scan.pixels, win, layer, scan.spacing, (z, y, x))
    st.plotly_chart(fig, key=f"{pk}_fig", on_select="rerun", selection_mode="points", config={"displaylogo": False})
    st.caption("Click a plane to move the crosshair there; each plane is drawn with its true aspect "
               f"(spacing {tuple(round(s, 2) for s in scan.spacing) if scan.spacing else 'unknown'} mm).")


# ---------------------------------------------------------------- the viewer: reruns alone when its controls change
@st.fragment
def viewer():
    cur = state.current()
    _, _, mconfig = resources.model_for(cur.model_version)
    names = mconfig.class_names
    fig_col, ctl_col = st.columns([3, 1])
    with ctl_col:
        slice_index = None
        if scan.is_volume:
            slice_index = st.slider("Slice", 0, scan.num_slices - 1, cur.slice_index, key=f"sc_slice_{short}")
        image = scan.slice(0, slice_index)
        views = list(VIEWS) + (["Instances"] if resources.maskrcnn() else [])
        view = st.radio("View", views, horizontal=True, key="sc_view",
                        help="Instances: the compact Mask R-CNN's objects, each in its own colour")
        alpha = st.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="sc_alpha")
        choice, win = widgets.window_picker(scan, image, short)
        unc_kind = st.selectbox("Uncertainty layer", ["off", "entropy", "MC dropout"], key="sc_unc",
                                help="Entropy of the softmax (0..1), or the spread of the winning class's "
                                     "probability over 8 dropout samples (scaled to its maximum)")
        with st.expander("Refinement", expanded=True):
            refine = widgets.refine_controls(initial=cur.refine)
    cur = state.update_current(slice_index=slice_index, refine=refine, window=choice)
    seg = resources.segmentation(skey, scan, cur.model_version, slice_index, refine)
    display = display_image(image, win)
    heat, heat_title = None, ""
    if unc_kind == "entropy":
        heat, heat_title = entropy(seg.probs), "entropy"
    elif unc_kind == "MC dropout":
        try:
            heat, heat_title = resources.mc_dropout(skey, cur.model_version, slice_index, image), "MC-dropout spread"
        except ValueError as exc:
            st.warning(str(exc))
    det = None
    if view == "Instances":
        with ctl_col:
            scale = st.slider("Object size (pixel scale)", 0.5, 4.0, float(resources.maskrcnn().config.pixel_scale),
                              0.25, key="sc_inst_scale",
                              help="Enlarges the image for the instance model: raise it when objects are smaller "
                                   "than about 11 px across (the model's trained range is 11-25 px).")
        iversion = resources.instance_workspace().active_version()
        det = resources.detections(skey, slice_index, scale, iversion, image)
    panels = view_panels(view, display, seg.raw, seg.refined, alpha, det, colors=mconfig.class_colors)
    labels = instance_labels(det, display.shape, 560 / display.shape[0]) if det is not None else ()
    with fig_col:
        st.plotly_chart(image_panels(panels, pixel_values=image, raw=seg.raw, refined=seg.refined,
                                     prob=seg.max_probability, class_names=names, heat=heat, heat_title=heat_title,
                                     labels=labels),
                        width="stretch", key="sc_fig", config={"displaylogo": False})
        steps = "  ".join(f"{s} {v:.0f} ms" for s, v in seg.timings.items())
        widgets.show_legend(names, mconfig.class_colors)
        st.caption(f"{name}  ·  window {win[0]:.0f}/{win[1]:.0f}  ·  model {cur.model_version}  ·  "
                   f"{widgets.refine_summary(refine)}  ·  step times: {steps}")
    if det is not None:
        icard = resources.instance_card()
        widgets.model_card(icard, domain_warnings(icard, scan, is_phantom_sample=cur.is_instance_sample))
        if len(det.get("boxes", ())) == 0:
            st.caption("The instance model found no objects on this slice. It detects separate small objects "
                       "(cells, nuclei, blobs 11-25 px across at the chosen object size); try the Instances "
                       "samples, or change the object size.")
        rows = instance_rows(det, resources.maskrcnn().config.class_names, seg.spacing)
        counts = {n: sum(r["class"] == n for r in rows) for n in resources.maskrcnn().config.class_names[1:]}
        st.markdown("**Instances per class:** " + ", ".join(f"{n}: {v}" for n, v in counts.items()))
        st.dataframe(rows, hide_index=True, width="stretch")
        coco = coco_from_detections(det, resources.maskrcnn().config.class_names, name, display.shape)
        st.download_button("Instances (COCO JSON)", json.dumps(coco), f"{name.split('.')[0]}_instances.json",
                           "application/json", key="sc_dl_coco")

    st.subheader("Per class")
    st.dataframe(class_table(seg.raw, seg.refined, names, seg.spacing), hide_index=True, width="stretch")
    comps = component_table(seg.refined, names, seg.spacing)
    with st.expander(f"Connected components ({len(comps)})"):
        st.dataframe(comps, hide_index=True, width="stretch")

    stem = name.split(".")[0]
    dcols = st.columns(3)
    dcols[0].download_button("Refined mask (PNG label map)", png_bytes(seg.refined), f"{stem}_mask.png", "image/png",
                             key="sc_dl_png")
    overlay_png = png_bytes(overlay(display, seg.refined, alpha, mconfig.class_colors))
    dcols[1].download_button("Overlay image (PNG)", overlay_png, f"{stem}_overlay.png", "image/png", key="sc_dl_overlay")
    if not scan.is_volume and scan.affine is not None:
        dcols[2].download_button("Refined mask (NIfTI)", nifti_bytes(seg.refined, scan), f"{stem}_mask.nii.gz",
                                 "application/gzip", key="sc_dl_nifti")

viewer()
if scan.is_volume:
    volume_panel(scan, skey)
st.page_link("app_pages/correct.py", label="Correct this mask →", icon=":material/edit:")
