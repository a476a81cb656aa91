"""Fine-tune: train a copy of the active model on saved corrections, compare, promote or roll back."""

import streamlit as st

import app_state
from segcore.figures import line_plot

app_state.ensure_router()
st.title("Fine-tune")

ws = app_state.workspace()
active = ws.active_version()
corrections = ws.list_corrections()


@st.cache_resource
def replay_set(path: str, input_size: tuple):
    """Preprocessed sample training split, mixed in so fine-tuning does not forget."""
    from segcore.data import load_split
    from segcore.models import ModelConfig

    return load_split(path, ModelConfig(input_size=input_size))


@st.cache_resource
def test_set(path: str):
    from segcore.data import list_pairs, load_mask
    from segcore.io import load_scan

    imgs, masks = list_pairs(path)
    return [load_scan(p).slice() for p in imgs], [load_mask(p) for p in masks]


if st.session_state.get("sc_ft_running"):
    st.warning("The last fine-tuning run was stopped before it finished; no version was saved.")
    st.session_state["sc_ft_running"] = False

# ---------------------------------------------------------------- data
st.subheader("Corrected cases")
if not corrections:
    st.info("No saved corrections yet. Correct a mask on the **Correct** page first.")
else:
    st.dataframe([{"id": c.id, "scan": c.scan_name, "slice": c.slice_index, "by": c.author,
                   "model": c.model_version, "at": c.created_at} for c in corrections],
                 hide_index=True, width="stretch")
ids = [c.id for c in corrections]
train_ids = st.multiselect("Train on", ids, default=ids, key="sc_ft_train",
                           help="Cases left out are held out and join the evaluation set.")
held_ids = [i for i in ids if i not in train_ids]
cols = st.columns(3)
epochs = cols[0].slider("Epochs", 1, 30, 5, key="sc_ft_epochs")
lr = cols[1].selectbox("Learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], index=2, key="sc_ft_lr",
                       format_func=lambda v: f"{v:g}")
replay_n = cols[2].slider("Replay samples per case", 0, 8, 2, key="sc_ft_replay",
                          help="Original training images mixed in per corrected case")

go = st.button("Fine-tune a copy of " + str(active), type="primary", disabled=not train_ids, key="sc_ft_go")
if go:
    from segcore.train import FineTuneCancelled, evaluate_model, fine_tune

    _, model, config = app_state.model_for(active)
    by_id = {c.id: c for c in corrections}
    pairs = [ws.load_correction(by_id[i]) for i in train_ids]
    held = [ws.load_correction(by_id[i]) for i in held_ids]
    test_imgs, test_masks = test_set(str(app_state.SAMPLE_DIR / "phantom" / "test"))
    eval_imgs = test_imgs + [p[0] for p in held]
    eval_masks = test_masks + [p[1] for p in held]
    rx, ry = replay_set(str(app_state.SAMPLE_DIR / "phantom" / "train"), tuple(config.input_size))
    st.button("Cancel", key="sc_ft_cancel", help="Stops after the current epoch; nothing is saved")
    bar = st.progress(0.0, text="Starting…")
    chart = st.empty()
    history = []

    def progress(rec):
        history.append(rec)
        bar.progress(rec["epoch"] / rec["total_epochs"],
                     text=f"epoch {rec['epoch']}/{rec['total_epochs']} · loss {rec['loss']:.4f} · "
                          f"Dice {rec['dice']:.4f}")
        chart.plotly_chart(line_plot(history), key=f"sc_ft_chart_{rec['epoch']}")

    st.session_state["sc_ft_running"] = True
    try:
        new_model, res = fine_tune(
            model, [p[0] for p in pairs], [p[1] for p in pairs], config=config, epochs=epochs,
            replay_images=rx, replay_masks=ry, replay_ratio=float(replay_n), learning_rate=float(lr),
            progress=progress, eval_images=eval_imgs, eval_masks=eval_masks)
    except FineTuneCancelled:
        st.session_state["sc_ft_running"] = False
        st.warning("Cancelled; no version was saved.")
        st.stop()
    with st.spinner("Evaluating the current version on the same held-out set…"):
        base_eval = evaluate_model(model, config, eval_imgs, eval_masks)
    metrics = {"held_out": res["eval"], "baseline_held_out": base_eval, "baseline_version": active,
               "history": res["history"],
               "held_out_cases": held_ids, "n_test_images": len(test_imgs),
               "settings": {"epochs": epochs, "learning_rate": float(lr), "replay_per_case": replay_n}}
    import copy

    new_config = copy.deepcopy(config)
    version = ws.add_version(new_model, new_config, metrics=metrics, trained_on=train_ids, parent=active,
                             note=f"fine-tuned on {len(train_ids)} corrections")
    st.session_state["sc_ft_running"] = False
    st.session_state["sc_candidate"] = version
    st.success(f"Saved candidate {version} (not active yet).")

# ---------------------------------------------------------------- gate
cand = st.session_state.get("sc_candidate")
versions = ws.versions()
if cand and cand in versions and cand != ws.active_version():
    m = versions[cand]["metrics"]
    new, old = m["held_out"], m["baseline_held_out"]
    st.subheader(f"Candidate {cand} vs active {ws.active_version()}")
    table = []
    for cname in new["per_class"]:
        table.append({"class": cname, f"Dice {ws.active_version()}": round(old["per_class"][cname]["dice"], 4),
                      f"Dice {cand}": round(new["per_class"][cname]["dice"], 4),
                      f"HD95 {ws.active_version()}": round(old["per_class"][cname]["hd95"], 2),
                      f"HD95 {cand}": round(new["per_class"][cname]["hd95"], 2)})
    st.dataframe(table, hide_index=True, width="stretch")
    b, c = old["mean_foreground_dice"], new["mean_foreground_dice"]
    st.metric("Held-out mean foreground Dice", f"{c:.4f}", f"{c - b:+.4f} vs {ws.active_version()}")
    from segcore.store import PROMOTION_TOLERANCE

    regress = c + PROMOTION_TOLERANCE < b
    if regress:
        st.error(f"The candidate scores more than {PROMOTION_TOLERANCE} mean Dice below the active model on the "
                 "held-out set; it cannot be promoted.")
    if st.button(f"Promote {cand}", type="primary", disabled=regress, key="sc_promote"):
        try:
            ws.promote(cand)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.session_state["sc_candidate"] = None
            st.success(f"{cand} is now the active model.")
            st.rerun()

# ---------------------------------------------------------------- versions
st.subheader("Model versions")
rows = []
for v, info in ws.versions().items():
    ho = info.get("metrics", {}).get("held_out") or info.get("metrics", {}).get("test") or {}
    rows.append({"version": v, "active": "✅" if v == ws.active_version() else "", "parent": info.get("parent"),
                 "held-out mean Dice": round(ho.get("mean_foreground_dice", float("nan")), 4),
                 "trained on": len(info.get("trained_on", [])), "created": info.get("created_at", ""),
                 "note": info.get("note", "")})
st.dataframe(rows, hide_index=True, width="stretch")
others = [v for v in ws.versions() if v != ws.active_version()]
if others:
    rc = st.columns([2, 1])
    target = rc[0].selectbox("Re-activate a previous version (rollback)", others, key="sc_rollback_pick")
    if rc[1].button("Activate", key="sc_rollback"):
        ws.activate(target)
        st.success(f"{target} is active again.")
        st.rerun()
