"""The Smart click canvas: the scan, the proposal layer, click marks and a box, with exact pixel clicks.

A Streamlit components-v2 element (``click_canvas.js``): it stays mounted while its data changes, so a click costs
one small message and an image swap. A ``st.plotly_chart`` with selections gets a new identity whenever its figure
changes, so every click rebuilt the whole chart in the browser (its WebGL contexts included: ~0.25 s without a
GPU), and it reports clicks only on points, which snapped a click to a 6 px grid.

Coordinate contract (as ``segcore.annotate``): ``on_click(row, col, shift)`` gets the image pixel under the
pointer; ``on_box(row0, col0, row1, col1)`` the pixels at the drag's two corners (inclusive, row0 < row1,
col0 < col1). The scan image travels once per scan and window: it is registered with Streamlit's media endpoint
(same origin) and the element keeps its URL; only the layer (a mostly transparent PNG) and the marks travel on
each click.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import streamlit as st
from streamlit.components.v2 import component

from segcore.figures import image_digest, image_png, png_data_uri, png_uri

_HERE = Path(__file__).parent
_CSS = """
.sc-root { font-family: var(--st-font, sans-serif); font-size: 0.85rem; }
.sc-bar { display: flex; justify-content: space-between; align-items: center; gap: 0.5rem; margin-bottom: 0.2rem; }
.sc-tools button { min-width: 2rem; margin-left: 0.2rem; border: 1px solid rgba(128,128,128,0.5);
  border-radius: 4px; background: transparent; color: inherit; cursor: pointer; }
.sc-zoom { margin-left: 0.4rem; opacity: 0.7; }
.sc-view { position: relative; width: 100%; overflow: hidden; cursor: crosshair; background: #000;
  touch-action: none; user-select: none; }
.sc-stage { position: absolute; inset: 0; transform-origin: 0 0; }
.sc-stage img, .sc-stage svg { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated; }
.sc-rubber { position: absolute; display: none; border: 1px dashed #f1c40f; background: rgba(241,196,15,0.12);
  pointer-events: none; }
"""
_canvas = component("segcore_click_canvas", js=(_HERE / "click_canvas.js").read_text(), css=_CSS)


def image_url(png: bytes, slot: str) -> str:
    """A URL for ``png`` that the browser fetches once: Streamlit's media endpoint (files are content-addressed;
    ``slot`` names the element for this session, so a new image at the same slot lets the old one go), under the
    server's ``baseUrlPath``; a data URI when no Streamlit runtime runs (a bare script)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return png_data_uri(png)
    url = Runtime.instance().media_file_mgr.add(png, "image/png", f"segcore-click-canvas-{slot}")
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}{url}" if base and url.startswith("/") else url


_PNG_SLOT = "sc_click_canvas_png"  # one encoded scan per session (the canvas on screen), not one per slice visited


def _scan_url(display, key: str) -> str:
    """The scan's URL, encoded once per displayed image (a PNG of a 512x512 slice takes ~10 ms)."""
    digest = image_digest(display)
    cached = st.session_state.get(_PNG_SLOT)
    if cached is None or cached[0] != digest:
        cached = st.session_state[_PNG_SLOT] = (digest, image_png(display))
    return image_url(cached[1], key)


_COLOUR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")


def click_canvas(display, layer, *, key: str, title: str,
                 marks: Sequence[tuple[int, int, str]] = (), box: tuple[int, int, int, int] | None = None,
                 on_click: Callable[[int, int, bool], None], on_box: Callable[[int, int, int, int], None],
                 max_width: int = 720) -> None:
    """Show the canvas; ``on_click`` / ``on_box`` run (as callbacks, before the rerun) when the user prompts.

    ``display``: the windowed scan, ``H,W`` gray or ``H,W,3`` uint8; ``layer``: an ``H,W,4`` RGBA image drawn over
    it (or None); ``marks``: ``(row, col, colour)`` circles; ``box``: ``(row0, col0, row1, col1)``.
    """
    h, w = display.shape[:2]

    def clicked():
        v = (st.session_state.get(key) or {}).get("click")
        if v:
            on_click(int(v["row"]), int(v["col"]), bool(v.get("shift")))

    def boxed():
        v = (st.session_state.get(key) or {}).get("box")
        if v:
            on_box(int(v["row0"]), int(v["col0"]), int(v["row1"]), int(v["col1"]))

    bad = [c for _, _, c in marks if not _COLOUR.fullmatch(str(c))]
    if bad:
        raise ValueError(f"Mark colours must be '#rgb' or '#rrggbb'. Got {bad}.")
    seq = st.session_state["sc_click_canvas_seq"] = st.session_state.get("sc_click_canvas_seq", 0) + 1
    data = {"base": _scan_url(display, key), "layer": png_uri(layer) if layer is not None else "",
            "width": int(w), "height": int(h), "title": title, "max_width": int(max_width), "seq": seq,
            "marks": [[int(r), int(c), str(col)] for r, c, col in marks],
            "box": [int(v) for v in box] if box is not None else None}
    _canvas(key=key, data=data, on_click_change=clicked, on_box_change=boxed)
