"""Reusable controls: display window, refinement settings, class legend, model card, drawing canvas."""

from __future__ import annotations

import dataclasses

import streamlit as st

from segcore.display import WindowChoice, default_window_choice, preset_note, resolve_window, window_options
from segcore.io import Scan, auto_window
from segcore.refine import RefineConfig
from segcore.viz import class_hex

ERASER = "#ffffff"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 stroke', '2 strokes'."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def class_legend(class_names, colors=None, *, skip_background: bool = True) -> str:
    """Coloured chips naming each class (markdown with HTML); ``colors``: the model's class colours."""
    chips = [f"<span style='display:inline-block;width:0.9em;height:0.9em;background:{class_hex(i, colors)};"
             f"border-radius:2px;margin:0 0.3em -0.1em 0.6em'></span>{name}"
             for i, name in enumerate(class_names) if not (skip_background and i == 0)]
    return "".join(chips)


def show_legend(class_names, colors=None, prefix: str = "") -> None:
    st.markdown(f"<div style='font-size:0.9rem'>{prefix}{class_legend(class_names, colors)}</div>",
                unsafe_allow_html=True)


def window_picker(scan: Scan, image, scan_key: str) -> tuple[WindowChoice, tuple[float, float]]:
    """Display-window control for this scan (its own widget state per scan), the resolved (centre, width)."""
    options = window_options(scan)
    default = default_window_choice(scan)
    name = st.selectbox("Display window", options, index=options.index(default), key=f"sc_window_{scan_key[:12]}",
                        help="Changes only what is drawn; masks and measurements do not depend on it.")
    note = preset_note(scan)
    if note:
        st.caption(note)
    choice = WindowChoice(name)
    if name == "manual":
        c0, w0 = auto_window(image)
        cols = st.columns(2)
        center = cols[0].number_input("Center", value=float(round(c0, 1)), key=f"sc_wc_{scan_key[:12]}")
        width = cols[1].number_input("Width", value=float(max(round(w0, 1), 1.0)), min_value=1.0,
                                     key=f"sc_ww_{scan_key[:12]}")
        choice = WindowChoice("manual", center, width)
    return choice, resolve_window(scan, image, choice)


def refine_controls(key: str = "sc", initial: RefineConfig | None = None) -> RefineConfig:
    """Switches and sliders for each refinement step, starting from ``initial`` (the settings in use, so they
    survive a visit to another page, whose rerun drops these widgets' state); returns the settings they describe."""
    base = initial or RefineConfig()
    on = {**RefineConfig().enabled, **base.enabled}
    crf_on = st.checkbox("Dense CRF", value=on["crf"], key=f"{key}_crf_on")
    crf_it = st.slider("CRF iterations", 1, 10, base.crf["iterations"], key=f"{key}_crf_it", disabled=not crf_on)
    crf_sxy = st.slider("CRF bilateral σ (px)", 10, 160, base.crf["sxy_bilateral"], key=f"{key}_crf_sxy",
                        disabled=not crf_on)
    crf_srgb = st.slider("CRF intensity σ", 1, 50, base.crf["srgb"], key=f"{key}_crf_srgb", disabled=not crf_on)
    crf_wb = st.slider("CRF bilateral weight", 0, 20, base.crf["compat_bilateral"], key=f"{key}_crf_wb",
                       disabled=not crf_on)
    open_on = st.checkbox("Opening", value=on["open"], key=f"{key}_open_on")
    open_k = st.slider("Opening kernel (px)", 1, 15, base.open_size, key=f"{key}_open_k", disabled=not open_on)
    close_on = st.checkbox("Closing", value=on["close"], key=f"{key}_close_on")
    close_k = st.slider("Closing kernel (px)", 1, 21, base.close_size, key=f"{key}_close_k", disabled=not close_on)
    fill_on = st.checkbox("Fill holes", value=on["fill_holes"], key=f"{key}_fill_on")
    small_on = st.checkbox("Remove small components", value=on["remove_small"], key=f"{key}_small_on")
    min_size = st.number_input("Minimum component size (px)", 0, 100000, int(base.min_size), key=f"{key}_min_size",
                               disabled=not small_on)
    largest_on = st.checkbox("Keep largest organ component", value=on["keep_largest"], key=f"{key}_largest_on")
    st.caption("Defaults chosen on the sample validation split (bench/tune_refine.py).")
    return dataclasses.replace(
        base,
        enabled={"crf": crf_on, "open": open_on, "close": close_on, "fill_holes": fill_on, "remove_small": small_on,
                 "keep_largest": largest_on},
        open_size=open_k, close_size=close_k, min_size=float(min_size),
        crf={**base.crf, "iterations": crf_it, "sxy_bilateral": crf_sxy, "srgb": crf_srgb, "compat_bilateral": crf_wb},
    )


def refine_summary(cfg: RefineConfig) -> str:
    """'open 3px, close 5px, CRF 5 it' (off steps say so)."""
    e = cfg.enabled
    return ", ".join([f"open {cfg.open_size}px" if e.get("open") else "open off",
                      f"close {cfg.close_size}px" if e.get("close") else "close off",
                      f"CRF {cfg.crf['iterations']} it" if e.get("crf") else "CRF off"])


def model_card(card: dict, warnings: list[str], *, expanded: bool = False) -> None:
    """Warnings about the scan vs the model's domain, and the card itself in an expander."""
    for w in warnings:
        st.warning(w, icon=":material/warning:")
    with st.expander(f"Model card: {card.get('name', 'model')}", expanded=expanded):
        st.markdown(f"**Task:** {card.get('task', '—')}  \n**Classes:** {', '.join(card.get('classes', []))}  \n"
                    f"**Trained on:** {card.get('training_data', '—')}  \n"
                    f"**Intended domain:** {(card.get('intended_domain') or {}).get('description', '—')}  \n"
                    f"**Limitations:** {card.get('limitations', '—')}")
        if card.get("version"):
            st.caption(f"Version {card['version']}" + (f", fine-tuned from {card['parent_version']}"
                                                       if card.get("parent_version") else ""))
        if card.get("fine_tuning"):
            st.caption("Fine-tuning: " + ", ".join(f"{k} {v}" for k, v in card["fine_tuning"].items()
                                                    if isinstance(v, (int, float, str, bool))))
        for split, values in (card.get("metrics") or {}).items():
            if isinstance(values, dict):
                st.caption(f"{split}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in values.items() if isinstance(v, (int, float, str))))


BRUSH_TOOLS = ("Brush", "Eraser", "Polygon fill")
TOOLS = ("Smart click",) + BRUSH_TOOLS


def mask_editor(image, display, base_mask, class_names, key: str, colors=None):
    """Smart click (click/box prompts), brush, eraser and polygon tools on one working mask.

    ``class_names`` and ``colors`` are the active model's classes (``ModelConfig.class_names``/``class_colors``).

    Returns ``(mask, edits)``: the edited label map and a sentence counting the edits. The working mask lives in
    session state under ``key`` (strokes drawn with the canvas are folded into it when switching to Smart click,
    so nothing drawn is lost); :func:`edited_mask` reads it back.
    """
    ss = st.session_state
    wk, ver, last = f"{key}_work", f"{key}_ver", f"{key}_last"
    if wk not in ss:
        ss[wk], ss[ver], ss[f"{key}_objects"] = base_mask, 0, 0
    c1, c2, c3 = st.columns([2, 4, 2])
    cls = c1.selectbox("Class", list(range(1, len(class_names))), format_func=lambda c: class_names[c],
                       key=f"{key}_class")
    tool = c2.radio("Tool", TOOLS, horizontal=True, key=f"{key}_tool",
                    help="Smart click: click inside an object (or drag a box) and the network outlines it; "
                         "'Remove' clicks take back a leak. Polygon: click the vertices, close on the first one.")
    before = ss.get(f"{key}_prev_tool")
    if before is not None and (before in BRUSH_TOOLS) != (tool in BRUSH_TOOLS) and last in ss:
        ss[wk], ss[ver] = ss[last], ss[ver] + 1  # keep what the canvas drew; it restarts from the working mask
    ss[f"{key}_prev_tool"] = tool
    if tool == "Smart click":
        from segcore.annotate import apply_object
        from segcore.viz import proposal_layer

        positive = c3.radio("Click", ["Add", "Remove"], horizontal=True, key=f"{key}_sign") == "Add"

        def accept(obj):
            ss[wk] = apply_object(ss[wk], obj, cls)
            ss[f"{key}_objects"] += 1

        smart_click(image, display, lambda prop: proposal_layer(ss[wk], prop, cls, colors=colors), positive, key,
                    accept=accept, accept_label=f"Accept as {class_names[cls]}",
                    reset=f"{ss[ver]}_{ss[f'{key}_objects']}")
        mask = ss[wk]
        edits = plural(ss[f"{key}_objects"], "object") + " added by smart click"
    else:
        size = c3.slider("Brush (px)", 1, 60, 12, key=f"{key}_brush")
        mask, n = _canvas(display, ss[wk], cls, class_names, colors, tool, size, f"{key}_canvas_{ss[ver]}")
        edits = plural(n, "stroke")
    ss[last] = mask
    return mask, edits


def edited_mask(key: str, default):
    """The editor's current mask (what Save stores), or ``default`` before any edit."""
    return st.session_state.get(f"{key}_last", default)


def smart_click(image, display, layer, positive: bool, key: str, *, accept, accept_label: str,
                reset: str = "") -> None:
    """Click/box prompts on the scan; ``accept(object mask)`` takes the proposed object.

    ``layer(proposal)`` draws the RGBA layer over the scan. A click or box runs the network in the canvas's
    callback, before the rerun that draws it, and the buttons act in callbacks too, so each interaction costs one
    rerun of the editor. A shift-click has the opposite sign of ``positive``. ``reset`` changes when the caller's
    content changes (the prompt starts again).
    """
    from segcore.interactive import segment
    from ui.click_canvas import click_canvas
    from ui.resources import click_model

    ss = st.session_state
    pk = f"{key}_prompt"

    def fresh() -> dict:
        return {"clicks": [], "box": None, "proposal": None, "reset": reset}

    if pk not in ss or ss[pk].get("reset") != reset:
        ss[pk] = fresh()
    prompt = ss[pk]

    def run(previous=True):
        try:
            prompt["proposal"] = (segment(image, prompt["clicks"], box=prompt["box"],
                                          previous=prompt["proposal"] if previous else None, model=click_model())
                                  if prompt["clicks"] or prompt["box"] else None)
        except ValueError as exc:
            prompt["error"] = str(exc)
        else:
            prompt.pop("error", None)

    def on_click(row, col, shift):
        prompt["clicks"].append((row, col, positive != shift))
        run()

    def on_box(r0, c0, r1, c1):
        prompt["box"] = (r0, c0, r1, c1)
        run()

    def take():
        accept(prompt["proposal"])
        ss[pk] = fresh()

    def undo():  # the remaining prompts from scratch: the previous mask held the undone click
        prompt["clicks"].pop()
        run(previous=False)

    def discard():
        ss[pk] = fresh()

    b1, b2, b3 = st.columns(3)
    has = prompt["proposal"] is not None
    b1.button(accept_label, type="primary", disabled=not has, key=f"{key}_accept", on_click=take)
    b2.button("Undo last click", disabled=not prompt["clicks"], key=f"{key}_undo", on_click=undo)
    b3.button("Discard object", disabled=not (has or prompt["clicks"]), key=f"{key}_discard", on_click=discard)
    if prompt.get("error"):
        st.error(prompt["error"])
    click_canvas(display, layer(prompt["proposal"]), key=f"{key}_canvas",
                 title=f"Smart click: a click {'adds' if positive else 'removes'} (shift-click: the opposite) · "
                       "drag a box around an object",
                 marks=[(r, c, "#2ecc71" if pos else "#e74c3c") for r, c, pos in prompt["clicks"]],
                 box=prompt["box"], on_click=on_click, on_box=on_box)
    st.caption(f"{plural(len(prompt['clicks']), 'click')}{' + a box' if prompt['box'] else ''} on this object · "
               "green: add, red: remove, yellow outline: the proposed object (not kept until accepted) · "
               "zoom: + / − or ctrl + wheel, pan: right-drag.")


def _canvas(display, base_mask, cls: int, class_names, colors, tool: str, size: int, key: str):
    """The drawing canvas over the working mask; returns ``(mask with strokes, n strokes)``."""
    from streamlit_drawable_canvas import st_canvas

    from segcore.annotate import apply_strokes
    from segcore.viz import canvas_background, palette

    h, w = base_mask.shape
    canvas_w = min(720, w * 4)
    scale = w / canvas_w  # image pixels per canvas pixel (same on both axes)
    canvas_h = int(round(h / scale))
    stroke = ERASER if tool == "Eraser" else class_hex(cls, colors)
    st.caption(f"Drawing **{class_names[cls] if tool != 'Eraser' else 'background (eraser)'}** · canvas toolbar: "
               f"undo, redo, clear · applied at full resolution ({w}×{h} px, {scale:.2f} image px per screen px).")
    polygon = tool == "Polygon fill"
    # a polygon is drawn with a hairline outline, so what is seen is its filled interior: what is saved
    result = st_canvas(fill_color=stroke, stroke_width=1 if polygon else size, stroke_color=stroke,
                       background_image=canvas_background(display, base_mask, canvas_w, canvas_h, colors=colors),
                       height=canvas_h, width=canvas_w, drawing_mode="polygon" if polygon else "freedraw",
                       key=key, update_streamlit=True)
    objects = (result.json_data or {}).get("objects", []) if result is not None else []
    return apply_strokes(base_mask, objects, scale, palette(colors), eraser_color=ERASER), len(objects)


def job_queue(jobs, who, kind: str, *, candidate_key: str) -> None:
    """The live queue of fine-tune jobs of ``kind`` (``segcore.jobs.JOB_KINDS``): progress, Cancel, the table, the
    log of the last failure. Progress lives on the server, so leaving the page and coming back shows it again.

    It refreshes every second only while such a job is queued or running (a timer would otherwise rerun forever
    and can swallow clicks in dialogs); when the last one ends the page reruns once with
    ``st.session_state[candidate_key]`` set to the newest finished job's version, which stops the timer.
    """
    from segcore.measure import job_rows
    from ui import auth

    def mine():
        return [j for j in jobs.jobs() if (j.spec or {}).get("kind", "semantic") == kind]

    live = any(not j.finished for j in mine())

    @st.fragment(run_every=1.0 if live else None)
    def queue():
        all_jobs = mine()
        st.subheader("Fine-tune jobs")
        if not all_jobs:
            st.caption("No fine-tune jobs yet.")
            return
        for j in [j for j in all_jobs if j.state in ("running", "queued")]:
            p = j.progress or {}
            c1, c2 = st.columns([5, 1])
            label = (f"{j.created_by}'s job on {plural(len(j.spec.get('correction_ids', [])), 'correction')} · "
                     f"{j.state} · {j.elapsed_s:.0f} s")
            c1.progress(float(p.get("fraction", 0.0)), text=label)
            if c2.button("Cancel", key=f"sc_job_cancel_{j.id}", disabled=auth.needs(who, "start_finetune") is not None):
                try:
                    jobs.cancel(j.id, actor=who)
                except PermissionError as exc:
                    st.error(str(exc))
        st.dataframe(job_rows(all_jobs), hide_index=True, width="stretch")
        failed = [j for j in all_jobs if j.state == "failed"]
        if failed:
            with st.expander(f"Log of the last failed job ({failed[0].id[-13:]})"):
                st.code(jobs.log(failed[0].id)[-4000:])
        if live and not any(not j.finished for j in all_jobs):  # the last job just ended: show its candidate
            done = [j.result["version"] for j in all_jobs if j.state == "done" and j.result.get("version")]
            if done:
                st.session_state[candidate_key] = done[0]
            st.rerun(scope="app")

    queue()

