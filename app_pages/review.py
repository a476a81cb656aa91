"""Review: work through a queue of cases, correct where needed, record a verdict; summary and export."""

import dataclasses
import time

import streamlit as st

from segcore.annotate import changed_pixels, set_slice
from segcore.display import WindowChoice, display_image, resolve_window
from segcore.figures import image_panels
from segcore.io import ScanError, load_scan
from segcore.measure import disagreement_map, label, review_rows
from segcore.refine import RefineConfig
from segcore.review import REASON_CODES, VERDICTS, queue_scan, submit_verdict
from segcore.viz import mask_layer, overlay
from ui import auth, catalogue, resources, state, widgets

st.title("Review")
ws = resources.workspace()
store = resources.review_store()
reviewer = state.identity()
if reviewer is None:
    st.warning("Enter your name in the sidebar to start or resume a review session.")
    st.stop()
refusal = auth.needs(reviewer, "view_verdicts")
if refusal:
    st.warning(f"{refusal} Reviews are open to reviewers and admins.")
    st.stop()
me = reviewer.subject
version, model, mconfig = resources.predictor_for()  # compiled runtime for segmenting the queue
names, colors = mconfig.class_names, mconfig.class_colors

# ---------------------------------------------------------------- session
sessions = store.sessions()
labels = {s["id"]: f"#{s['id']} {s['name']} (by {s['created_by']}, model {s['model_version']})" for s in sessions}
options = [None] + list(labels)
wanted = st.session_state.pop("sc_rv_select", None)  # a session just created: select it
if wanted is not None:
    st.session_state["sc_rv_session"] = wanted
elif "sc_rv_session" not in st.session_state:
    st.session_state["sc_rv_session"] = options[-1]
elif st.session_state["sc_rv_session"] not in options:
    st.session_state["sc_rv_session"] = None
choice = st.selectbox("Session", options, format_func=lambda i: "+ New session" if i is None else labels[i],
                      key="sc_rv_session")
if choice is None:
    sname = st.text_input("Session name", placeholder="e.g. Liver phantoms, batch 1", key="sc_rv_name")
    source = st.radio("Cases", ["Sample test scans (10)", "Upload"], horizontal=True, key="sc_rv_source")
    ups = st.file_uploader("Scans to review", accept_multiple_files=True, key="sc_rv_uploads",
                           disabled=source != "Upload")
    if st.button("Start session", type="primary", key="sc_rv_start"):
        if not sname.strip():
            st.error("Give the session a name.")
            st.stop()
        if source == "Upload" and not ups:
            st.error("Upload at least one scan, or choose the sample test scans.")
            st.stop()
        sid = store.create_session(sname, reviewer, version, dataclasses.asdict(RefineConfig()))
        if source == "Upload":
            files = [(u.name, u.getvalue()) for u in ups]
            series = catalogue.as_series(files)  # several DICOM files: one volume case
            items = [(series[0], series[1])] if series else [(data, name) for name, data in files]
        else:
            items = [(p.read_bytes(), p.name) for p in
                     sorted((catalogue.SAMPLE_DIR / "phantom" / "test" / "images").glob("*.png"))[:10]]
        bar = st.progress(0.0, text="Segmenting cases…")
        for i, (data, name) in enumerate(items, 1):
            try:
                queue_scan(store, sid, data, name, model, mconfig, who=reviewer)
            except ScanError as exc:
                st.error(f"Skipped {name}: {exc}")
            bar.progress(i / len(items), text=f"Segmented {i} of {len(items)}")
        st.session_state["sc_rv_select"] = sid
        st.rerun()
    st.stop()

sid = int(choice)
# the session's masks came from the model it was created with: its class names, colours and version go with them
session_version = next(s["model_version"] for s in sessions if s["id"] == sid)
if session_version in ws.versions():
    _, _, sconfig = resources.model_for(session_version)
    names, colors = sconfig.class_names, sconfig.class_colors
else:
    st.warning(f"Model {session_version}, which segmented this session, is no longer in the registry; class names "
               f"and colours are those of the active model {version}.")
tab_review, tab_summary = st.tabs(["Review", "Summary & export"])

with tab_review:
    order = st.radio("Queue order", ["uncertainty", "upload"], horizontal=True, key="sc_rv_order",
                     format_func=lambda o: "Most uncertain first" if o == "uncertainty" else "Upload order")
    queue = store.cases(sid, order)
    latest = store.latest_verdicts(sid)
    done = [c for c in queue if (c.id, me) in latest]
    st.progress(len(done) / max(len(queue), 1), text=f"{reviewer.name}: {len(done)} of {len(queue)} reviewed")
    if not queue:
        st.info("This session has no cases.")
        st.stop()
    pending = [c for c in queue if (c.id, me) not in latest]
    default = queue.index(pending[0]) if pending else 0
    case = st.selectbox("Case", queue, index=default, key=f"sc_rv_case_{sid}_{len(done)}",
                        format_func=lambda c: f"{'✓' if (c.id, me) in latest else '•'} #{c.id} "
                                              f"{c.scan_name} · uncertainty {c.uncertainty:.3f}")
    st.subheader(f"Case #{case.id} · {case.scan_name}")
    timer_key = f"sc_rv_t0_{case.id}"
    st.session_state.setdefault(timer_key, time.time())

    scan = load_scan(store.scan_bytes(case.id), case.scan_name)
    raw_all, refined_all = store.mask(case.id, "raw"), store.mask(case.id, "refined")
    mine = latest.get((case.id, me))
    working = store.working_mask(case.id, mine["id"] if mine else None, reviewer)
    z = None
    if case.is_volume:  # one case per volume: look at any slice, edit any slice, one verdict for the volume
        z = st.slider("Slice", 0, scan.num_slices - 1, scan.num_slices // 2, key=f"sc_rv_slice_{case.id}")
        st.caption(f"Volume case: {scan.num_slices} slices; edits on any slice are kept as mask versions and the "
                   "verdict covers the whole volume.")
    img = scan.slice(0, z if case.is_volume else case.slice_index)
    disp = display_image(img, resolve_window(scan, img, WindowChoice("file default")))
    raw = raw_all[z] if case.is_volume else raw_all
    refined = refined_all[z] if case.is_volume else refined_all
    point_key = f"sc_rv_point_{case.id}"
    point = st.session_state.get(point_key)
    fig = image_panels([("Raw", disp, mask_layer(raw, colors=colors)),
                         ("Refined (model)", disp, mask_layer(refined, colors=colors))],
                       pixel_values=img, raw=raw, refined=refined, class_names=names,
                       marks=[(point[0], point[1], "#f1c40f")] if point else (), clickable=True)
    event = st.plotly_chart(fig, key=f"sc_rv_fig_{case.id}", on_select="rerun", selection_mode="points",
                            config={"displaylogo": False})
    clicked = (event or {}).get("selection", {}).get("points", []) if event else []
    if clicked and (clicked[0].get("y"), clicked[0].get("x")) != point:
        st.session_state[point_key] = (int(clicked[0]["y"]), int(clicked[0]["x"]))
        st.rerun()
    widgets.show_legend(names, colors, prefix="Overlay colours: ")
    base = working[z] if case.is_volume else working
    edit_key = f"sc_rv_{case.id}_{me}_{z}"

    @st.fragment
    def review_editor():
        with st.expander("Correct the mask", expanded=False):
            mask, edits = widgets.mask_editor(img, disp, base, names, key=edit_key, colors=colors)
            st.caption(f"{edits} · {widgets.plural(changed_pixels(base, mask), 'pixel')} changed")

    review_editor()
    corrected = widgets.edited_mask(edit_key, base)
    changed = changed_pixels(base, corrected)
    if case.is_volume:
        if st.button(f"Keep the edit of slice {z}", disabled=changed == 0, key=f"sc_rv_keep_{case.id}_{z}"):
            store.add_mask_version(case.id, reviewer, set_slice(working, z, corrected))
            st.rerun()
        corrected = set_slice(working, z, corrected)  # the verdict covers the whole volume
        changed = changed_pixels(refined_all, corrected)
    cols = st.columns([2, 2, 3])
    verdict = cols[0].radio("Verdict", VERDICTS, index=1 if changed else 0, format_func=label,
                            key=f"sc_rv_verdict_{case.id}")
    reason = cols[1].selectbox("Reason", REASON_CODES, format_func=label, key=f"sc_rv_reason_{case.id}")
    comment = cols[2].text_area("Comment", height=90, key=f"sc_rv_comment_{case.id}")
    pcols = st.columns([3, 1])
    if point:
        pcols[0].caption(f"The comment refers to row {point[0]}, column {point[1]} (marked on the image; click "
                         "elsewhere on the image to move it).")
        if pcols[1].button("Clear point", key=f"sc_rv_clear_{case.id}"):
            st.session_state.pop(point_key, None)
            st.rerun()
    else:
        pcols[0].caption("Click on the image to attach the comment to a point (optional).")
    problem = None
    try:
        store.check_verdict(verdict, reason, reviewer)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        st.error(problem)
    if st.button("Record verdict and go to the next case", type="primary", disabled=problem is not None,
                 key=f"sc_rv_submit_{case.id}"):
        try:  # the verdict and (unless rejected) the correction for fine-tuning, in a safe order
            submit_verdict(store, ws, case.id, reviewer, verdict, model_version=session_version, mask=corrected,
                           class_names=names, reason_code=reason, comment=comment,
                           point=(point[1], point[0]) if point else None,
                           seconds_spent=time.time() - st.session_state[timer_key], spacing=case.spacing)
        except (ValueError, OSError, PermissionError) as exc:
            st.error(f"Not recorded: {exc}")
        else:
            st.session_state.pop(timer_key, None)
            st.session_state.pop(point_key, None)
            st.toast(f"Recorded {label(verdict).lower()} for case #{case.id}")
            st.rerun()
    if mine:
        m = mine["metrics"]
        st.caption(f"Your last verdict: **{label(mine['verdict'])}** · Dice model↔accepted "
                   + ", ".join(f"{names[c]} {m['dice'][c]:.3f}" for c in range(1, min(len(names), len(m['dice']))))
                   + f" · edited {widgets.plural(m['edited_pixels'], 'pixel')} · {mine['seconds_spent']:.0f} s")
    agree = store.agreement(case.id, reviewer) if me in store.reviewers_of(sid) or reviewer.may(
        "view_all_verdicts") else []
    if agree:
        st.subheader("Inter-rater agreement")
        st.dataframe(agree, hide_index=True, width="stretch")
        others = {sub: v for (cid, sub), v in latest.items() if cid == case.id and v["verdict"] != "reject"}
        # reviewers of this session may compare masks (agreement() checked that above)
        if len(others) >= 2:
            a, b = (others[k] for k in sorted(others)[:2])
            dis = disagreement_map(store.accepted_mask(a["id"]), store.accepted_mask(b["id"]))
            dis = dis[z] if case.is_volume else dis
            st.image(overlay(disp, dis, 0.7), caption=f"Disagreement between {a['reviewer']} and {b['reviewer']} "
                     "(red)", width=420)

with tab_summary:
    import plotly.express as px_

    vs = store.visible_verdicts(sid, reviewer)
    queue = store.cases(sid, "upload")
    scope = "any reviewer" if reviewer.may("view_all_verdicts") else "by you"
    st.metric(f"Cases reviewed ({scope})", f"{len({v['case_id'] for v in vs})} of {len(queue)}")
    if not vs:
        st.info("No verdicts yet.")
    else:
        rows = review_rows(vs, names)
        st.dataframe(rows, hide_index=True, width="stretch")
        c1, c2 = st.columns(2)
        c1.plotly_chart(px_.histogram(rows, x="verdict", color="reviewer", title="Verdicts", height=320),
                        key="sc_rv_p1", width="stretch")
        c2.plotly_chart(px_.bar(rows, x="case", y="seconds", color="reviewer", title="Time per case (s)",
                                height=320).update_xaxes(type="category"), key="sc_rv_p2", width="stretch")
        st.plotly_chart(px_.box(rows, y=[k for k in rows[0] if k.startswith("Dice ")],
                                title="Model vs accepted: Dice per class (rejected cases left out)", height=320)
                        .update_yaxes(range=[0, 1.02], title="Dice"), key="sc_rv_p3", width="stretch")
        multi = sorted({v["case_id"] for v in vs if len({w["reviewer"] for w in vs if w["case_id"] == v["case_id"]}) > 1})
        if multi:
            st.subheader("Inter-rater agreement")
            st.dataframe([{"case": cid, **{k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()
                                           if k != "dice_per_class"}}
                          for cid in multi for r in store.agreement(cid, reviewer)], hide_index=True, width="stretch")
        rejected = [r for r in rows if r["verdict"] == label("reject")]
        st.subheader(f"Rejected ({len(rejected)}): not used for fine-tuning")
        st.dataframe(rejected, hide_index=True, width="stretch")
    from segcore.export import export_session

    if st.button("Prepare export", key="sc_rv_export"):
        st.session_state["sc_rv_zip"] = (sid, export_session(store, sid, names, reviewer))
    z = st.session_state.get("sc_rv_zip")
    if z and z[0] == sid:
        st.download_button("Download session export (zip: PNG + NIfTI masks, COCO JSON, CSV, HTML report)", z[1],
                           f"review_session_{sid}.zip", "application/zip", key="sc_rv_dl")
    n_audit = store.audit_count()
    st.caption(f"Audit trail: {n_audit} records; every session, case, mask version and verdict row is vouched "
               "for by a keyed hash chain.")
    if st.button("Verify the audit trail", key="sc_rv_verify"):  # reads every audited row: on demand only
        st.session_state["sc_rv_verified"] = (n_audit, store.audit_problems())
    checked = st.session_state.get("sc_rv_verified")
    if checked:
        if checked[1]:
            st.error("The audit trail does not verify: " + "; ".join(checked[1][:5]))
        else:
            st.success(f"Verified: all {checked[0]} audit records and the rows they vouch for are intact.")
