"""Fine-tune: train a copy of the active model on saved corrections, compare, promote or roll back."""

import streamlit as st

from segcore.figures import line_plot
from segcore.measure import candidate_table, correction_label, duplicate_groups, version_rows
from ui import auth, resources, state

st.title("Fine-tune")
ws = resources.workspace()
who = state.identity()
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
    from segcore.labels import load_gt_pairs

    images, masks, _ = load_gt_pairs(path)
    return images, masks


if st.session_state.get("sc_ft_running"):
    st.warning("The last fine-tuning run was stopped before it finished; no version was saved.")
    st.session_state["sc_ft_running"] = False

# ---------------------------------------------------------------- data
st.subheader("Corrected cases")
if not corrections:
    st.info("No saved corrections yet. Correct a mask on the **Correct** page first.")
else:
    st.dataframe([{"scan": c.scan_name, "slice": c.slice_index, "by": c.author, "saved at": c.created_at,
                   "model": c.model_version, "from": c.source} for c in corrections],
                 hide_index=True, width="stretch")
    for group in duplicate_groups(corrections):
        where = f" (slice {group[0].slice_index})" if group[0].slice_index is not None else ""
        st.info(f"**{group[0].scan_name}**{where} was corrected {len(group)} times "
                f"(by {', '.join(sorted({c.author for c in group}))}); all are used unless you leave some out.")
by_id = {c.id: c for c in corrections}
ids = list(by_id)
train_ids = st.multiselect("Train on", ids, default=ids, key="sc_ft_train", format_func=lambda i: correction_label(
    by_id[i]), help="Cases left out are held out and join the evaluation set.")
held_ids = [i for i in ids if i not in train_ids]
cols = st.columns(3)
epochs = cols[0].slider("Epochs", 1, 30, 5, key="sc_ft_epochs")
lr = cols[1].selectbox("Learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], index=2, key="sc_ft_lr",
                       format_func=lambda v: f"{v:g}")
replay_n = cols[2].slider("Replay samples per case", 0, 8, 2, key="sc_ft_replay",
                          help="Original training images mixed in per corrected case")

refusal = auth.needs(who, "start_finetune")
go = st.button("Fine-tune a copy of " + str(active), type="primary", disabled=not train_ids or refusal is not None,
               key="sc_ft_go")
if refusal:
    st.caption(refusal)
if go:
    from segcore.train import FineTuneCancelled, evaluate_model, fine_tune

    _, model, config = resources.model_for(active)
    pairs = [ws.load_correction(by_id[i]) for i in train_ids]
    held = [ws.load_correction(by_id[i]) for i in held_ids]
    test_imgs, test_masks = test_set(str(resources.SAMPLE_DIR / "phantom" / "test"))
    eval_imgs = test_imgs + [p[0] for p in held]
    eval_masks = test_masks + [p[1] for p in held]
    rx, ry = replay_set(str(resources.SAMPLE_DIR / "phantom" / "train"), tuple(config.input_size))
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
               "history": res["history"], "held_out_cases": held_ids, "n_test_images": len(test_imgs),
               "settings": {"epochs": epochs, "learning_rate": float(lr), "replay_per_case": replay_n}}
    import copy

    version = ws.add_version(new_model, copy.deepcopy(config), metrics=metrics, trained_on=train_ids, parent=active,
                             note=f"fine-tuned on {len(train_ids)} corrections", actor=who)
    st.session_state["sc_ft_running"] = False
    st.session_state["sc_candidate"] = version
    st.success(f"Saved candidate {version} (not active yet).")

# ---------------------------------------------------------------- gate


@st.dialog("Promote this version?")
def confirm_promote(version: str, summary: str):
    st.markdown(f"**{version}** becomes the active model for everyone using this server: new segmentations, "
                f"reviews and fine-tunes start from it. {summary}")
    st.caption("You can re-activate the previous version at any time under Model versions.")
    c1, c2 = st.columns(2)
    if c1.button(f"Yes, promote {version}", type="primary", key="sc_promote_yes"):
        try:
            ws.promote(version, actor=who)
        except (ValueError, PermissionError) as exc:
            st.error(str(exc))
        else:
            st.session_state["sc_candidate"] = None
            st.session_state["sc_promoted"] = version
            st.rerun()
    if c2.button("Cancel", key="sc_promote_no"):
        st.rerun()


promoted = st.session_state.pop("sc_promoted", None)
if promoted:
    st.success(f"{promoted} is now the active model.")
cand = st.session_state.get("sc_candidate")
versions = ws.versions()
if cand and cand in versions and cand != ws.active_version():
    gate = ws.gate(cand)
    st.subheader(f"Candidate {cand} vs active {ws.active_version()}")
    st.dataframe(candidate_table(versions[cand]["metrics"], cand, ws.active_version()), hide_index=True,
                 width="stretch")
    st.metric("Held-out mean foreground Dice", f"{gate.candidate:.4f}",
              f"{gate.candidate - gate.baseline:+.4f} vs {ws.active_version()}")
    if not gate.passed:
        st.error(gate.reason)
    promote_refusal = auth.needs(who, "promote")
    if promote_refusal:
        st.caption(promote_refusal)
    if st.button(f"Promote {cand}", type="primary", disabled=not gate.passed or promote_refusal is not None,
                 key="sc_promote"):
        confirm_promote(cand, gate.reason)

# ---------------------------------------------------------------- versions
st.subheader("Model versions")
st.dataframe(version_rows(ws.versions(), ws.active_version()), hide_index=True, width="stretch")
others = [v for v in ws.versions() if v != ws.active_version()]
if others:
    rc = st.columns([2, 1])
    target = rc[0].selectbox("Re-activate a previous version (rollback)", others, key="sc_rollback_pick")
    if rc[1].button("Activate", key="sc_rollback", disabled=auth.needs(who, "activate") is not None,
                    help=auth.needs(who, "activate")):
        try:
            ws.activate(target, actor=who)
        except (ValueError, PermissionError) as exc:
            st.error(str(exc))
        else:
            st.success(f"{target} is active again.")
            st.rerun()
