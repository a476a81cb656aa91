"""Review: work through a queue of cases, correct where needed, record a verdict; summary and export."""

import time

import numpy as np
import streamlit as st

import app_state
from segcore.figures import image_panels
from segcore.review import REASON_CODES, VERDICTS
from segcore.viz import overlay

app_state.ensure_router()
st.title("Review")

ws = app_state.workspace()
store = app_state.review_store()
reviewer = st.session_state.get("sc_reviewer", "").strip()
if not reviewer:
    st.warning("Enter your name in the sidebar to start or resume a review session.")
    st.stop()
version, model, mconfig = app_state.model_for()
names = mconfig.class_names


def build_case(data: bytes, name: str, sid: int) -> None:
    """Segment and refine one scan (middle slice for volumes) and queue it."""
    from segcore.infer import entropy, predict_proba
    from segcore.io import ScanError, load_scan
    from segcore.refine import RefineConfig, Refiner

    try:
        scan = load_scan(data, name)
    except ScanError as exc:
        st.error(f"Skipped {name}: {exc}")
        return
    idx = scan.num_slices // 2 if scan.is_volume else None
    img = scan.slice(0, idx)
    disp = scan.default_display(img)
    probs = predict_proba(model, img, mconfig)
    spacing = scan.slice_spacing(0) if scan.spacing else None
    refined = Refiner(RefineConfig()).run(disp, probs, spacing).labels
    store.add_case(sid, data, name, probs.argmax(-1).astype(np.uint8), refined, slice_index=idx,
                   uncertainty=float(entropy(probs).mean()), spacing=spacing, who=reviewer)


# ---------------------------------------------------------------- session
sessions = store.sessions()
if "sc_rv_select" in st.session_state:  # a session just created: select it (before the widget exists)
    st.session_state["sc_rv_session"] = st.session_state.pop("sc_rv_select")
labels = {s["id"]: f"#{s['id']} {s['name']} (by {s['created_by']}, model {s['model_version']})" for s in sessions}
choice = st.selectbox("Session", [None] + list(labels), format_func=lambda i: "+ New session" if i is None
                      else labels[i], index=len(labels) if labels else 0, key="sc_rv_session")
if choice is None:
    with st.form("sc_rv_new"):
        sname = st.text_input("Session name", placeholder="e.g. Liver phantoms, batch 1", key="sc_rv_name")
        source = st.radio("Cases", ["Sample test scans (10)", "Upload"], horizontal=True, key="sc_rv_source")
        ups = st.file_uploader("Scans to review", accept_multiple_files=True)
        go = st.form_submit_button("Start session", type="primary", key="sc_rv_start")
    if go:
        if not sname.strip():
            st.error("Give the session a name.")
            st.stop()
        if source == "Upload" and not ups:
            st.error("Upload at least one scan, or choose the sample test scans.")
            st.stop()
        import dataclasses

        from segcore.refine import RefineConfig

        sid = store.create_session(sname, reviewer, version, dataclasses.asdict(RefineConfig()))
        items = ([(u.getvalue(), u.name) for u in ups] if source == "Upload" else
                 [(p.read_bytes(), p.name) for p in
                  sorted((app_state.SAMPLE_DIR / "phantom" / "test" / "images").glob("*.png"))[:10]])
        bar = st.progress(0.0, text="Segmenting cases…")
        for i, (data, name) in enumerate(items, 1):
            build_case(data, name, sid)
            bar.progress(i / len(items), text=f"Segmented {i} of {len(items)}")
        st.session_state["sc_rv_select"] = sid
        st.rerun()
    st.stop()

sid = int(choice)
tab_review, tab_summary = st.tabs(["Review", "Summary & export"])

with tab_review:
    order = st.radio("Queue order", ["uncertainty", "upload"], horizontal=True, key="sc_rv_order",
                     format_func=lambda o: "Most uncertain first" if o == "uncertainty" else "Upload order")
    queue = store.cases(sid, order)
    latest = store.latest_verdicts(sid)
    done = [c for c in queue if (c.id, reviewer) in latest]
    st.progress(len(done) / max(len(queue), 1), text=f"{reviewer}: {len(done)} of {len(queue)} reviewed")
    if not queue:
        st.info("This session has no cases.")
        st.stop()
    pending = [c for c in queue if (c.id, reviewer) not in latest]
    default = queue.index(pending[0]) if pending else 0
    case = st.selectbox("Case", queue, index=default, key=f"sc_rv_case_{sid}_{len(done)}",
                        format_func=lambda c: f"{'✓' if (c.id, reviewer) in latest else '•'} #{c.id} "
                                              f"{c.scan_name} · uncertainty {c.uncertainty:.3f}")
    st.subheader(f"Case #{case.id} · {case.scan_name}")
    timer_key = f"sc_rv_t0_{case.id}"
    st.session_state.setdefault(timer_key, time.time())

    from segcore.io import load_scan

    scan = load_scan(store.scan_bytes(case.id), case.scan_name)
    img = scan.slice(0, case.slice_index)
    disp = scan.default_display(img)
    raw, refined = store.mask(case.id, "raw"), store.mask(case.id, "refined")
    st.plotly_chart(image_panels([("Raw", overlay(disp, raw)), ("Refined (model)", overlay(disp, refined))],
                                 pixel_values=img if img.ndim == 2 else img.mean(-1), raw=raw, refined=refined,
                                 class_names=names, height=420), key=f"sc_rv_fig_{case.id}")
    mine = latest.get((case.id, reviewer))
    base = store.accepted_mask(mine["id"]) if mine else refined
    with st.expander("Correct the mask", expanded=False):
        corrected, n_obj, changed = app_state.correction_canvas(disp, base, names, key=f"sc_rv_{case.id}_{reviewer}")
        st.caption(f"{n_obj} strokes · {changed} pixels changed")
    with st.form(f"sc_rv_form_{case.id}"):
        cols = st.columns([2, 2, 3])
        verdict = cols[0].radio("Verdict", VERDICTS, index=1 if changed else 0, horizontal=False,
                                format_func=lambda v: v.replace("_", " "))
        reason = cols[1].selectbox("Reason", REASON_CODES, format_func=lambda r: r.replace("_", " "))
        comment = cols[2].text_area("Comment", height=90)
        pcols = st.columns(3)
        use_point = pcols[0].checkbox("Comment refers to a point")
        px = pcols[1].number_input("x (col)", 0, int(raw.shape[1]) - 1, int(raw.shape[1]) // 2)
        py = pcols[2].number_input("y (row)", 0, int(raw.shape[0]) - 1, int(raw.shape[0]) // 2)
        submit = st.form_submit_button("Record verdict and go to the next case", type="primary")
    if submit:
        from segcore.review import submit_verdict

        try:  # the verdict and (unless rejected) the correction for fine-tuning, in a safe order
            vid, _ = submit_verdict(store, ws, case.id, reviewer, verdict, model_version=version, mask=corrected,
                                    class_names=names, reason_code=reason, comment=comment,
                                    point=(px, py) if use_point else None,
                                    seconds_spent=time.time() - st.session_state[timer_key], spacing=case.spacing)
        except (ValueError, OSError) as exc:
            st.error(f"Not recorded: {exc}")
        else:
            st.session_state.pop(timer_key, None)
            st.toast(f"Recorded {verdict.replace('_', ' ')} for case #{case.id}")
            st.rerun()
    if mine:
        m = mine["metrics"]
        st.caption(f"Your last verdict: **{mine['verdict'].replace('_', ' ')}** · Dice model↔accepted "
                   f"{np.round(m['dice'][1:], 3).tolist()} · edited {m['edited_pixels']} px · "
                   f"{mine['seconds_spent']:.0f} s")
    agree = store.agreement(case.id)
    if agree:
        st.subheader("Inter-rater agreement")
        st.dataframe(agree, hide_index=True, width="stretch")
        others = {v["reviewer"]: v for (cid, _), v in latest.items() if cid == case.id and v["verdict"] != "reject"}
        if len(others) >= 2:
            a, b = sorted(others)[:2]
            ma, mb = store.accepted_mask(others[a]["id"]), store.accepted_mask(others[b]["id"])
            dis = (ma != mb).astype(np.uint8) * 2
            st.image(overlay(disp, dis, 0.7), caption=f"Disagreement between {a} and {b} (red)", width=420)

with tab_summary:
    import plotly.express as px_

    vs = store.verdicts(sid)
    queue = store.cases(sid, "upload")
    st.metric("Cases reviewed (any reviewer)", f"{len({v['case_id'] for v in vs})} of {len(queue)}")
    if not vs:
        st.info("No verdicts yet.")
    else:
        rows = [{"case": v["case_id"], "scan": v["scan_name"], "reviewer": v["reviewer"],
                 "verdict": v["verdict"], "reason": v["reason_code"], "comment": v["comment"],
                 "seconds": round(v["seconds_spent"], 1), "edited px": v["metrics"]["edited_pixels"],
                 **{f"Dice {names[c]}": round(v["metrics"]["dice"][c], 4)
                    for c in range(1, min(len(names), len(v["metrics"]["dice"])))}} for v in vs]
        st.dataframe(rows, hide_index=True, width="stretch")
        c1, c2, c3 = st.columns(3)
        c1.plotly_chart(px_.histogram(rows, x="verdict", color="reviewer", title="Verdicts", height=300),
                        key="sc_rv_p1")
        c2.plotly_chart(px_.bar(rows, x="case", y="seconds", color="reviewer", title="Time per case (s)",
                                height=300), key="sc_rv_p2")
        c3.plotly_chart(px_.box(rows, y=[k for k in rows[0] if k.startswith("Dice ")],
                                title="Model vs accepted: Dice per class", height=300), key="sc_rv_p3")
        multi = sorted({v["case_id"] for v in vs if len({w["reviewer"] for w in vs if w["case_id"] == v["case_id"]}) > 1})
        if multi:
            st.subheader("Inter-rater agreement")
            st.dataframe([{"case": cid, **{k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()
                                           if k != "dice_per_class"}}
                          for cid in multi for r in store.agreement(cid)], hide_index=True, width="stretch")
        rejected = [r for r in rows if r["verdict"] == "reject"]
        st.subheader(f"Rejected ({len(rejected)}): not used for fine-tuning")
        st.dataframe(rejected, hide_index=True, width="stretch")
    from segcore.export import export_session

    if st.button("Prepare export", key="sc_rv_export"):
        st.session_state["sc_rv_zip"] = (sid, export_session(store, sid, names))
    z = st.session_state.get("sc_rv_zip")
    if z and z[0] == sid:
        st.download_button("Download session export (zip: PNG + NIfTI masks, COCO JSON, CSV, HTML report)", z[1],
                           f"review_session_{sid}.zip", "application/zip", key="sc_rv_dl")
    n = store.verify_audit()
    st.caption(f"Audit trail: {n} records, hash chain verified.")
