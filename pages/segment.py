"""Segment & compare: pick or upload a scan, see the raw and refined masks."""

import dataclasses

import numpy as np
import streamlit as st

import app_state
from segcore.figures import image_panels
from segcore.infer import entropy
from segcore.io import CT_PRESETS
from segcore.metrics import dice, iou
from segcore.refine import RefineConfig, component_table
from segcore.viz import contours, diff_image, instances_image, nifti_bytes, overlay, png_bytes

app_state.ensure_router()
st.title("Segment & compare")

ws = app_state.workspace()
versions = list(ws.versions())
if not versions:
    st.stop()

# ---------------------------------------------------------------- scan source
left, right = st.columns([2, 1])
with left:
    source = st.radio("Scan", ["Sample", "Upload"], horizontal=True, key="sc_source")
    if source == "Sample":
        samples = app_state.sample_files()
        name = st.selectbox("Sample scan", list(samples), key="sc_sample")
        data = samples[name].read_bytes()
        name = samples[name].name
    else:
        ups = st.file_uploader("Upload scans (PNG, JPEG, BMP, TIFF, DICOM, NIfTI, NRRD)", accept_multiple_files=True,
                               key="sc_uploads")
        if not ups:
            st.info("Upload one or more scans, or switch to a sample.")
            st.stop()
        # a new upload selects itself; earlier ones stay one click away
        pick = st.selectbox("Uploaded scan", [u.name for u in ups], index=len(ups) - 1,
                            key=f"sc_upload_pick_{len(ups)}")
        up = next(u for u in ups if u.name == pick)
        data, name = up.getvalue(), up.name
with right:
    version = st.selectbox("Model version", versions, index=versions.index(ws.active_version()), key="sc_version",
                           help="The active version is used unless you pick another.")

scan = app_state.try_load(data, name)
if scan is None:
    st.stop()
key = app_state.remember_bytes(data)
st.session_state["sc_scan_key"] = key
st.session_state["sc_scan_name"] = name

slice_index = None
if scan.is_volume:
    slice_index = st.slider("Slice", 0, scan.num_slices - 1, scan.num_slices // 2, key=f"sc_slice_{key[:8]}")
st.session_state["sc_slice"] = slice_index
image = scan.slice(0, slice_index)
spacing = scan.slice_spacing(0) if scan.spacing else None

# ---------------------------------------------------------------- display window
wcols = st.columns([2, 1, 1])
options = ["auto"] + (["file default"] if scan.default_window else []) + list(CT_PRESETS) + ["manual"]
default_win = "file default" if scan.default_window else "auto"
choice = wcols[0].selectbox("Display window", options, index=options.index(default_win), key="sc_window")
auto_c, auto_w = app_state.display_window(scan, image, "auto", None)
manual = None
if choice == "manual":
    manual = (wcols[1].number_input("Center", value=float(round(auto_c, 1)), key="sc_wc"),
              wcols[2].number_input("Width", value=float(max(round(auto_w, 1), 1.0)), min_value=1.0, key="sc_ww"))
win = app_state.display_window(scan, image, choice, manual)
display = app_state.to_display(image, win)

# ---------------------------------------------------------------- refinement controls
with st.sidebar:
    st.markdown("#### Refinement")
    base = RefineConfig()
    on = base.enabled
    crf_on = st.checkbox("Dense CRF", value=on["crf"], key="sc_crf_on")
    crf_it = st.slider("CRF iterations", 1, 10, base.crf["iterations"], key="sc_crf_it", disabled=not crf_on)
    crf_sxy = st.slider("CRF bilateral σ (px)", 10, 160, base.crf["sxy_bilateral"], key="sc_crf_sxy",
                        disabled=not crf_on)
    crf_srgb = st.slider("CRF intensity σ", 1, 50, base.crf["srgb"], key="sc_crf_srgb", disabled=not crf_on)
    crf_wb = st.slider("CRF bilateral weight", 0, 20, base.crf["compat_bilateral"], key="sc_crf_wb",
                       disabled=not crf_on)
    open_on = st.checkbox("Opening", value=on["open"], key="sc_open_on")
    open_k = st.slider("Opening kernel (px)", 1, 15, base.open_size, key="sc_open_k", disabled=not open_on)
    close_on = st.checkbox("Closing", value=on["close"], key="sc_close_on")
    close_k = st.slider("Closing kernel (px)", 1, 21, base.close_size, key="sc_close_k", disabled=not close_on)
    fill_on = st.checkbox("Fill holes", value=on["fill_holes"], key="sc_fill_on")
    small_on = st.checkbox("Remove small components", value=on["remove_small"], key="sc_small_on")
    min_size = st.number_input("Minimum component size (px)", 0, 100000, int(base.min_size), key="sc_min_size",
                               disabled=not small_on)
    largest_on = st.checkbox("Keep largest organ component", value=on["keep_largest"], key="sc_largest_on")
    st.caption("Defaults chosen on the sample validation split (bench/tune_refine.py).")
cfg = dataclasses.replace(
    base,
    enabled={"crf": crf_on, "open": open_on, "close": close_on, "fill_holes": fill_on, "remove_small": small_on,
             "keep_largest": largest_on},
    order=("crf", "open", "close", "fill_holes", "remove_small", "keep_largest"),
    open_size=open_k, close_size=close_k, min_size=float(min_size),
    crf={**base.crf, "iterations": crf_it, "sxy_bilateral": crf_sxy, "srgb": crf_srgb, "compat_bilateral": crf_wb},
)
st.session_state["sc_refine"] = dataclasses.asdict(cfg)

# ---------------------------------------------------------------- inference
_, model, mconfig = app_state.model_for(version)
with st.spinner("Segmenting…"):
    probs = app_state.predict_cached(version, key, slice_index, image)
raw = probs.argmax(-1).astype(np.uint8)
result = app_state.refine_cached(version, key, slice_index, tuple(win), dataclasses.asdict(cfg), display, probs,
                                 tuple(spacing) if spacing else None)
refined = result.labels
st.session_state["sc_raw"] = raw
st.session_state["sc_refined"] = refined
st.session_state["sc_display"] = display

# ---------------------------------------------------------------- views
vcols = st.columns([3, 1, 1])
views = ["Overlay", "Contours", "Side by side", "Difference"] + (["Instances"] if app_state.maskrcnn() else [])
view = vcols[0].radio("View", views, horizontal=True, key="sc_view",
                      help="Instances: the compact Mask R-CNN's objects, each in its own colour")
alpha = vcols[1].slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="sc_alpha")
unc_kind = vcols[2].selectbox("Uncertainty layer", ["off", "entropy", "MC dropout"], key="sc_unc",
                              help="Entropy of the softmax (0..1), or the spread of the winning class's probability "
                                   "over 8 dropout samples")
unc = None
if unc_kind == "entropy":
    unc = entropy(probs)
elif unc_kind == "MC dropout":
    try:
        unc = app_state.mc_dropout_cached(version, key, slice_index, image)
        unc = np.clip(unc / max(float(unc.max()), 1e-6), 0, 1)
    except ValueError as exc:
        st.warning(str(exc))
pv = image if image.ndim == 2 else image.mean(-1)
hover = dict(pixel_values=pv, raw=raw, refined=refined, prob=np.take_along_axis(probs, raw[..., None], -1)[..., 0],
             class_names=mconfig.class_names, heat=unc)
if view == "Overlay":
    panels = [("Raw", overlay(display, raw, alpha)), ("Refined", overlay(display, refined, alpha))]
elif view == "Contours":
    panels = [("Raw", contours(display, raw)), ("Refined", contours(display, refined))]
elif view == "Side by side":
    panels = [("Scan", np.repeat(display[..., None], 3, -1)), ("Raw", overlay(display, raw, alpha)),
              ("Refined", overlay(display, refined, alpha))]
elif view == "Difference":
    panels = [("Refined − raw (green added, red removed)", diff_image(display, raw, refined))]
else:
    det = app_state.detect_cached(key, slice_index, tuple(win), display)
    panels = [(f"Instances ({len(det['scores'])}, Mask R-CNN)",
               instances_image(display, det["masks"], det["boxes"], det["scores"], alpha)),
              ("Refined (semantic)", overlay(display, refined, alpha))]
st.plotly_chart(image_panels(panels, **hover), width="stretch", key="sc_fig")
if view == "Instances":
    from segcore.export import rle_encode

    mr = app_state.maskrcnn()
    st.caption("The instance model was trained on the instance phantoms (samples 'instances test/…', touching "
               "lesion-like blobs); on other kinds of scan its detections are not meaningful.")
    inst_rows = [{"instance": k + 1, "class": mr.config.class_names[int(c)], "score": round(float(s), 3),
                  "box (x, y, w, h)": tuple(round(float(v), 1) for v in b), "area (px)": int(m.sum()),
                  "area (mm²)": round(int(m.sum()) * spacing[0] * spacing[1], 1) if spacing else None}
                 for k, (b, s, c, m) in enumerate(zip(det["boxes"], det["scores"], det["classes"], det["masks"]))]
    counts = {n: sum(r["class"] == n for r in inst_rows) for n in mr.config.class_names[1:]}
    st.markdown("**Instances per class:** " + ", ".join(f"{n}: {v}" for n, v in counts.items()))
    st.dataframe(inst_rows, hide_index=True, width="stretch")
    coco = {"images": [{"id": 1, "file_name": name, "height": int(display.shape[0]), "width": int(display.shape[1])}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(mr.config.class_names) if i],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": int(c), "score": float(s), "iscrowd": 0,
                             "bbox": [float(v) for v in b], "area": int(m.sum()), "segmentation": rle_encode(m)}
                            for k, (b, s, c, m) in enumerate(zip(det["boxes"], det["scores"], det["classes"],
                                                                 det["masks"]))]}
    import json as _json

    st.download_button("Instances (COCO JSON)", _json.dumps(coco), f"{name.split('.')[0]}_instances.json",
                       "application/json", key="sc_dl_coco")

legend = " · ".join(f":{c}[■] {n}" for c, n in zip(["gray", "green", "red", "blue", "orange", "violet"],
                                                    mconfig.class_names))
steps = "  ".join(f"{s} {v:.0f} ms" for s, v in result.timings_ms.items())
st.caption(f"{name}  ·  {legend}  ·  window {win[0]:.0f}/{win[1]:.0f}  ·  model {version}  ·  "
           f"open {open_k}px, close {close_k}px, CRF {crf_it} it  ·  step times: {steps}")

# ---------------------------------------------------------------- tables
k = mconfig.num_classes
d, j = dice(raw, refined, k), iou(raw, refined, k)
px_area = float(spacing[0] * spacing[1]) if spacing else None
comps = component_table(refined, mconfig.class_names, spacing)
rows = []
for c in range(1, k):
    a_raw, a_ref = int((raw == c).sum()), int((refined == c).sum())
    rows.append({
        "class": mconfig.class_names[c],
        "raw area (px)": a_raw,
        "refined area (px)": a_ref,
        "refined area (mm²)": round(a_ref * px_area, 1) if px_area else None,
        "components (refined)": sum(r["class"] == c for r in comps),
        "Dice raw↔refined": round(float(d[c]), 4),
        "IoU raw↔refined": round(float(j[c]), 4),
    })
st.subheader("Per class")
st.dataframe(rows, hide_index=True, width="stretch")
with st.expander(f"Connected components ({len(comps)})"):
    st.dataframe(comps, hide_index=True, width="stretch")

# ---------------------------------------------------------------- downloads
stem = name.split(".")[0]
dcols = st.columns(3)
dcols[0].download_button("Refined mask (PNG label map)", png_bytes(refined), f"{stem}_mask.png", "image/png",
                         key="sc_dl_png")
dcols[1].download_button("Overlay image (PNG)", png_bytes(overlay(display, refined, alpha)), f"{stem}_overlay.png",
                         "image/png", key="sc_dl_overlay")
if scan.affine is not None:
    if dcols[2].button("Segment all slices for NIfTI", key="sc_nifti_go"):
        from segcore.infer import predict_batch
        from segcore.refine import Refiner

        vol = scan.pixels if scan.is_volume else scan.pixels[None]
        all_probs = predict_batch(model, list(vol), mconfig)
        labels = np.stack([Refiner(cfg).run(app_state.to_display(s, win), p, spacing).labels
                           for s, p in zip(vol, all_probs)])
        st.session_state["sc_nifti"] = (key, nifti_bytes(labels if scan.is_volume else labels[0], scan))
    nif = st.session_state.get("sc_nifti")
    if nif and nif[0] == key:
        dcols[2].download_button("Refined mask (NIfTI)", nif[1], f"{stem}_mask.nii.gz", "application/gzip",
                                 key="sc_dl_nifti")

st.page_link("pages/correct.py", label="Correct this mask →", icon=":material/edit:")
