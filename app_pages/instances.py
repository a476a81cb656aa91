"""Instances: correct the instance model's objects on the open scan (delete, merge, split, add), save them as COCO,
and fine-tune the instance model on the corrections behind the same kind of gate as the semantic model."""

import streamlit as st

from segcore.auth import PermissionDenied
from segcore.display import display_image, resolve_window
from segcore.figures import image_panels
from segcore.instances import add_instance, delete_instance, ids_from_masks, merge_instances, split_instance
from segcore.measure import instance_table
from segcore.viz import instance_id_labels, instance_id_layer
from ui import auth, catalogue, resources, state, widgets

st.title("Instances")
cur = state.current()
scan, error = catalogue.open_scan(cur.key, cur.name, cur.series_uid) if cur else (None, None)
if scan is None:
    st.info("Open a scan on **Segment & compare** first; its objects are corrected here.")
    st.page_link("app_pages/segment.py", label="← Segment & compare", icon=":material/biotech:")
    st.stop()
iws = resources.instance_workspace()
version = iws.active_version()
model = resources.maskrcnn(version)
if model is None:
    st.error("No instance model found (expected sample_data/models/maskrcnn).")
    st.stop()
image = scan.slice(0, cur.slice_index)
display = display_image(image, resolve_window(scan, image, cur.window))
where = f"slice {cur.slice_index}" if scan.is_volume else "2-D image"
st.markdown(f"**Objects of:** {cur.name} · {where} · instance model **{version}**")
card = resources.instance_card()
widgets.model_card(card, [])
scale = st.slider("Object size (pixel scale)", 0.5, 4.0, float(model.config.pixel_scale), 0.25, key="sc_ic_scale",
                  help="Enlarges the image for the model: raise it when objects are smaller than ~11 px across.")
det = resources.detections(cur.scan_key, cur.slice_index, scale, version, image)
ids_key = f"sc_ic_ids_{cur.short}_{cur.slice_index}_{version}_{scale}"
if ids_key not in st.session_state or st.button("Reset to the model's objects", key="sc_ic_reset"):
    st.session_state[ids_key] = ids_from_masks(det["masks"], det["scores"])
st.session_state.setdefault(f"{ids_key}_n", 0)


@st.fragment
def editor():
    ss = st.session_state
    if "sc_ic_flash" in ss:
        st.success(ss.pop("sc_ic_flash"))
    ids = ss[ids_key]
    labels = [r["instance"] for r in instance_table(ids)]
    op = st.radio("Edit", ["Add with smart click", "Delete", "Merge", "Split with a line"], horizontal=True,
                  key="sc_ic_op")

    def changed(new_ids):
        ss[ids_key] = new_ids
        ss[f"{ids_key}_n"] += 1

    if op == "Add with smart click":
        widgets.smart_click(image, display, lambda prop: instance_id_layer(ids, proposal=prop), True,
                            f"{ids_key}_smart", accept=lambda obj: changed(add_instance(ss[ids_key], obj)[0]),
                            accept_label="Add as a new object", reset=str(ss[f"{ids_key}_n"]))
    else:
        pts_key = f"{ids_key}_pts"
        fig_key = f"{ids_key}_fig_{ss[f'{ids_key}_n']}"
        event = ss.get(fig_key)
        points = ((event or {}).get("selection") or {}).get("points", []) if event else []
        if op == "Split with a line" and points:
            ss[pts_key] = (ss.get(pts_key, []) + [(float(points[0]["x"]), float(points[0]["y"]))])[-2:]
        pts = ss.get(pts_key, [])
        c1, c2 = st.columns([3, 1])
        if op == "Delete":
            chosen = c1.multiselect("Objects to delete", labels, key="sc_ic_del")

            def delete():
                new = ids
                for lab in chosen:
                    new = delete_instance(new, lab)
                changed(new)

            c2.button("Delete", disabled=not chosen, key="sc_ic_del_go", on_click=delete)
        elif op == "Merge":
            chosen = c1.multiselect("Objects to merge (into the first)", labels, key="sc_ic_merge")
            c2.button("Merge", disabled=len(chosen) < 2, key="sc_ic_merge_go",
                      on_click=lambda: changed(merge_instances(ids, chosen[0], *chosen[1:])))
        else:
            target = c1.selectbox("Object to split", labels, key="sc_ic_split") if labels else None
            c1.caption(f"Click two points on the image to draw the cutting line ({len(pts)} of 2 placed).")

            def split():
                try:
                    changed(split_instance(ids, target, pts[0], pts[1])[0])
                    ss[pts_key] = []
                except ValueError as exc:
                    ss[f"{ids_key}_error"] = str(exc)

            c2.button("Split along the line", disabled=target is None or len(pts) < 2, key="sc_ic_split_go",
                      on_click=split)
            if ss.get(f"{ids_key}_error"):
                st.error(ss.pop(f"{ids_key}_error"))
        ids = ss[ids_key]
        marks = [(y, x, "#f1c40f") for x, y in pts] if op == "Split with a line" else ()
        fig = image_panels([("Objects (numbered)", display, instance_id_layer(ids))], clickable=True, marks=marks,
                           labels=instance_id_labels(ids, 560 / max(ids.shape)))
        st.plotly_chart(fig, key=fig_key, on_select="rerun", selection_mode="points", config={"displaylogo": False})
    rows = instance_table(ss[ids_key], scan.slice_spacing(0) if scan.spacing else None)
    st.caption(f"{widgets.plural(len(rows), 'object')} · {widgets.plural(ss[f'{ids_key}_n'], 'edit')}")
    st.dataframe(rows, hide_index=True, width="stretch")
    who = state.identity()
    refusal = auth.needs(who, "save_correction")
    if st.button("Save these objects (COCO)", type="primary", disabled=refusal is not None, key="sc_ic_save",
                 help=refusal):
        try:
            rec = iws.save(catalogue.scan_bytes(cur.key), cur.name, ss[ids_key], author=who,
                           slice_index=cur.slice_index, class_names=tuple(model.config.class_names),
                           model_version=version, series_uid=cur.series_uid)
        except (ValueError, OSError, PermissionDenied) as exc:
            st.error(f"Not saved: {exc}")
        else:
            # the whole page reruns: the fine-tune section below lists the new correction at once
            st.session_state["sc_ic_flash"] = (f"Saved {widgets.plural(rec.n_instances, 'object')} of {cur.name} "
                                               f"to {rec.coco_path}")
            st.rerun()


editor()

# ---------------------------------------------------------------- fine-tune the instance model
st.subheader("Fine-tune the instance model")
saved = iws.list()
if not saved:
    st.info("No saved object corrections yet.")
else:
    st.dataframe([{"scan": r.scan_name, "slice": r.slice_index, "objects": r.n_instances, "by": r.author,
                   "saved at": r.created_at} for r in saved], hide_index=True, width="stretch")
    who = state.identity()
    refusal = auth.needs(who, "start_finetune")
    if refusal:
        st.caption(refusal)
    jobs = resources.jobs()
    if st.button(f"Fine-tune a copy of {version} on {widgets.plural(len(saved), 'correction')}",
                 disabled=refusal is not None, key="sc_ic_ft",
                 help="Runs as a background job on the server: you can leave this page and come back."):
        from segcore.jobs import JobSpec

        try:
            jobs.submit(JobSpec(who, [r.id for r in saved], base_version=version, kind="instances",
                                settings={"pixel_scale": scale}))
        except (ValueError, OSError, PermissionDenied) as exc:
            st.error(f"Fine-tuning was not started: {exc}")
        else:
            st.rerun()  # the queue below starts refreshing
    widgets.job_queue(jobs, who, "instances", candidate_key="sc_ic_candidate")
    versions, cands = iws.versions(), iws.candidates()
    last = st.session_state.get("sc_ic_candidate")
    cand = st.selectbox("Candidate", cands, index=cands.index(last) if last in cands else 0, key="sc_ic_cand_pick",
                        format_func=lambda v: f"{v} · by {versions[v].get('created_by', '?')} · "
                                              f"{versions[v].get('created_at', '')[:19].replace('T', ' ')}") \
        if cands else None
    info = versions.get(cand) if cand else None
    if info:
        st.metric("Held-out AP50", f"{info['ap50_after']:.3f}", f"{info['ap50_after'] - info['ap50_before']:+.3f} "
                  f"vs {info['parent']}")
        ok = info["ap50_after"] >= info["ap50_before"]
        if not ok:
            st.error(f"{cand} lost AP50 on the held-out objects; it cannot be promoted.")
        if st.button(f"Promote {cand}", disabled=not ok or auth.needs(who, "promote") is not None,
                     key="sc_ic_promote"):
            try:
                iws.promote(cand, actor=who)
            except (ValueError, OSError, PermissionDenied) as exc:
                st.error(f"{cand} was not promoted: {exc}")
            else:
                st.rerun()
