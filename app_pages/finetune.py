"""Fine-tune: queue a background job that adapts a copy of the active model to saved corrections (optionally with
new classes), follow it live, compare the candidate, promote, activate or roll back."""

import streamlit as st

from segcore.finetune import class_rows, class_set, correction_fits
from segcore.jobs import JobSpec
from segcore.measure import (candidate_table, correction_label, duplicate_groups, identical_copies, version_rows)
from ui import auth, resources, state, widgets

st.title("Fine-tune")
ws = resources.workspace()
jobs = resources.jobs()
who = state.identity()
active = ws.active_version()
_, _, active_cfg = resources.model_for(active)
corrections = ws.list_corrections()
by_id = {c.id: c for c in corrections}

# ---------------------------------------------------------------- data
st.subheader("Corrected cases")
copies = identical_copies(corrections)  # older exact repeats: left out of training and never held out
if not corrections:
    st.info("No saved corrections yet. Correct a mask on the **Correct** page first.")
else:
    st.dataframe([{"scan": c.scan_name, "slice": c.slice_index, "by": c.author, "saved at": c.created_at,
                   "model": c.model_version, "from": c.source,
                   "labels": ", ".join((c.class_names[v] if c.class_names and v < len(c.class_names) else str(v))
                                       for v in c.labels if v)} for c in corrections],
                 hide_index=True, width="stretch")
    for group in duplicate_groups(corrections):
        where = f" (slice {group[0].slice_index})" if group[0].slice_index is not None else ""
        same = sum(c.id in copies for c in group)
        st.info(f"**{group[0].scan_name}**{where} was corrected {len(group)} times "
                f"(by {', '.join(sorted({c.author for c in group}))}); "
                + (f"{widgets.plural(same, 'identical older copy', 'identical older copies')} left out by default, "
                   "the others are used unless you leave them out." if same else
                   "all are used unless you leave some out."))

# ---------------------------------------------------------------- new job
st.subheader(f"Fine-tune a copy of {active}")
with st.expander("Classes of the new version (rename, add, remove, colours)"):
    st.caption("The first row is the background. A correction's labels are class numbers: what was drawn as row 2 "
               "trains row 2, whatever its new name. Classes kept by name (or renamed in place) keep what the model "
               "learnt; new ones start fresh.")
    rows = st.data_editor(class_rows(active_cfg.class_names, active_cfg.class_colors), num_rows="dynamic",
                          key="sc_ft_classes", hide_index=True,
                          column_config={"class": st.column_config.TextColumn("class", required=True),
                                         "colour": st.column_config.TextColumn("colour (#rrggbb)", required=True)})
    new_head = st.checkbox("Start the class head from scratch (keep only the learnt image features)",
                           key="sc_ft_new_head")
try:
    names, colors = class_set(rows)
    class_error = None
except ValueError as exc:
    names, colors, class_error = active_cfg.class_names, active_cfg.class_colors, str(exc)
    st.error(class_error)
changed_classes = names != tuple(active_cfg.class_names) or colors != tuple(active_cfg.class_colors) or new_head
st.caption(f"The new version's classes: **{', '.join(names[1:])}**"
           + (f" (the active model has {', '.join(active_cfg.class_names[1:])})" if names != tuple(active_cfg.class_names)
              else " (as the active model)")
           + (" · new class head" if new_head else ""))

fits = {i: correction_fits(c, names) for i, c in by_id.items()}
usable = [i for i in by_id if fits[i] is None]
for i in by_id:
    if fits[i]:
        st.caption(f"Not offered: {correction_label(by_id[i])}: {fits[i]}.")
train_ids = st.multiselect("Train on", usable, default=[i for i in usable if i not in copies], key="sc_ft_train",
                           format_func=lambda i: correction_label(by_id[i]),
                           help="Cases left out are held out: they join the evaluation of the candidate.")
held_ids = [i for i in usable if i not in train_ids and i not in copies]  # a copy would score a trained image

with st.expander("Advanced: set the schedule by hand"):
    st.caption("Automatic (recommended): part of the corrections is held out to find how long to train (early "
               "stopping on held-out Dice), the learning rate and replay of the original training images follow "
               "from how well the model already does on your corrections, all within about a minute.")
    manual = st.checkbox("Override the automatic schedule", key="sc_ft_manual")
    cols = st.columns(3)
    epochs = cols[0].number_input("Epochs", 1, 400, 30, key="sc_ft_epochs", disabled=not manual)
    lr = cols[1].selectbox("Peak learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], index=4, key="sc_ft_lr",
                           format_func=lambda v: f"{v:g}", disabled=not manual)
    replay = cols[2].selectbox("Replay original training images", ["automatic", "on", "off"], key="sc_ft_replay",
                               disabled=not manual)
settings = {}
if manual:
    settings = {"epochs": int(epochs), "learning_rate": float(lr)}
    if replay != "automatic":
        settings["replay"] = replay == "on"

refusal = auth.needs(who, "start_finetune")
if refusal:
    st.caption(refusal)
if st.button(f"Start fine-tuning ({widgets.plural(len(train_ids), 'correction')})", type="primary", key="sc_ft_go",
             disabled=not train_ids or refusal is not None or class_error is not None):
    try:
        jid = jobs.submit(JobSpec(who, train_ids, held_out_ids=held_ids, settings=settings,
                                  class_names=names if changed_classes else None,
                                  class_colors=colors if changed_classes else None, new_head=new_head))
    except (ValueError, PermissionError) as exc:
        st.error(str(exc))
    else:
        st.success(f"Job {jid[-13:]} queued. It runs on the server: you can leave this page and come back.")


# ---------------------------------------------------------------- queue
widgets.job_queue(jobs, who, "semantic", candidate_key="sc_candidate")


# ---------------------------------------------------------------- gate
def _confirm_buttons(version: str, verb: str, apply, key: str) -> None:
    """'Yes, <verb> <version>' runs ``apply(version, actor=who)`` and makes it the active model; Cancel closes."""
    c1, c2 = st.columns(2)
    if c1.button(f"Yes, {verb} {version}", type="primary", key=f"{key}_yes"):
        try:
            apply(version, actor=who)
        except (ValueError, PermissionError) as exc:
            st.error(str(exc))
        else:
            st.session_state["sc_candidate"] = None
            st.session_state["sc_promoted"] = version
            st.rerun()
    if c2.button("Cancel", key=f"{key}_no"):
        st.rerun()


@st.dialog("Promote this version?")
def confirm_promote(version: str, summary: str):
    st.markdown(f"**{version}** becomes the active model for everyone using this server: new segmentations, "
                f"reviews and fine-tunes start from it. {summary}")
    st.caption("You can re-activate the previous version at any time under Model versions.")
    _confirm_buttons(version, "promote", ws.promote, "sc_promote")


@st.dialog("Activate without the gate?")
def confirm_activate(version: str, why: str):
    st.markdown(f"**{version}** cannot pass the promotion gate: {why}. Activating it anyway makes it the model "
                "everyone segments, corrects and reviews with, including its classes.")
    _confirm_buttons(version, "activate", ws.activate, "sc_activate")


promoted = st.session_state.pop("sc_promoted", None)
if promoted:
    st.success(f"{promoted} is now the active model.")
versions = ws.versions()
candidates = ws.candidates()
if candidates:
    st.subheader("Candidate vs active")
    default = st.session_state.get("sc_candidate")
    cand = st.selectbox("Candidate", candidates, index=candidates.index(default) if default in candidates else 0,
                        key="sc_ft_cand_pick")
    metrics = versions[cand]["metrics"]
    gate = ws.gate(cand)
    _, _, cand_cfg = resources.model_for(cand)
    st.caption(f"{cand}: classes {', '.join(cand_cfg.class_names[1:])} · evaluated on "
               f"{metrics.get('eval_set', 'the held-out set')}" +
               (f" · {metrics['finetune']['total_steps']} training steps" if (metrics.get("finetune") or {})
                .get("total_steps") else ""))
    if metrics.get("baseline_held_out"):
        st.dataframe(candidate_table(metrics, cand, ws.active_version()), hide_index=True, width="stretch")
        st.metric("Held-out mean foreground Dice", f"{gate.candidate:.4f}",
                  f"{gate.candidate - gate.baseline:+.4f} vs {ws.active_version()}")
    else:
        st.metric("Held-out mean foreground Dice", f"{metrics['held_out']['mean_foreground_dice']:.4f}")
    if not gate.passed:
        st.error(gate.reason)
    promote_refusal = auth.needs(who, "promote")
    if promote_refusal:
        st.caption(promote_refusal)
    b1, b2 = st.columns(2)
    if b1.button(f"Promote {cand}", type="primary", disabled=not gate.passed or promote_refusal is not None,
                 key="sc_promote"):
        confirm_promote(cand, gate.reason)
    if not gate.passed and b2.button(f"Activate {cand} without the gate…", key="sc_activate_anyway",
                                     disabled=auth.needs(who, "activate") is not None):
        confirm_activate(cand, gate.reason)

# ---------------------------------------------------------------- versions
st.subheader("Model versions")
st.dataframe(version_rows(ws.versions(), ws.active_version()), hide_index=True, width="stretch")
others = ws.rollback_order()  # the versions active before first
if others:
    rc = st.columns([2, 1])
    target = rc[0].selectbox("Re-activate a previous version (rollback)", others, key="sc_rollback_pick",
                             format_func=lambda v: f"{v} (parent {ws.versions()[v].get('parent') or '—'})")
    if rc[1].button("Activate", key="sc_rollback", disabled=auth.needs(who, "activate") is not None,
                    help=auth.needs(who, "activate")):
        try:
            ws.activate(target, actor=who)
        except (ValueError, PermissionError) as exc:
            st.error(str(exc))
        else:
            st.success(f"{target} is active again.")
            st.rerun()
