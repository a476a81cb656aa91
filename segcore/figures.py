"""Plotly figures for the viewer: image panels with linked zoom, a hover readout and a click/box layer.

Panels are RGB images (``H,W,3`` uint8) shown side by side with linked zoom and pan. A transparent point grid
on each panel carries the hover readout (row, column, value, raw and refined class, the model's probability)
and receives clicks and box selections (``st.plotly_chart(on_select="rerun")``): its x/y are image columns/rows.
Numbers travel as typed arrays (compact, fast); class names enter through one trace per (raw, refined) class
pair, so no per-pixel strings are sent.
"""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

from .labels import png_bytes

__all__ = ["image_panels", "line_plot", "uncertainty_colorscale", "CLICK_TRACE_NAME"]

CLICK_TRACE_NAME = "pixels"


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def uncertainty_colorscale() -> list:
    """Inferno with 0 fully transparent, so certain pixels show the image underneath."""
    return [[0.0, "rgba(0,0,4,0)"], [0.02, "rgba(0,0,4,0)"], [0.1, "rgba(40,11,84,0.55)"],
            [0.3, "rgba(101,21,110,0.75)"], [0.5, "rgba(159,42,99,0.85)"], [0.7, "rgba(212,72,66,0.9)"],
            [0.9, "rgba(245,125,21,0.95)"], [1.0, "rgba(252,255,164,1)"]]


def image_panels(
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    pixel_values: np.ndarray | None = None,
    raw: np.ndarray | None = None,
    refined: np.ndarray | None = None,
    prob: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    max_hover_points: int = 128 * 128,
    height: int | None = None,
    heat: np.ndarray | None = None,
    heat_title: str = "uncertainty",
    marks: Sequence[tuple[float, float, str]] = (),
    box: tuple[float, float, float, float] | None = None,
    labels: Sequence[tuple[float, float, str, str]] = (),
):
    """Side-by-side RGB panels with linked zoom/pan, a hover readout and a click/box layer.

    Parameters
    ----------
    panels : sequence of (title, rgb)
        ``H,W,3`` uint8 images of one size.
    pixel_values, raw, refined, prob : arrays ``H,W``, optional
        Hover readout: raw scan value, raw and refined class ids, probability of the raw class.
    heat : array ``H,W`` in [0, 1], optional
        An uncertainty layer over every panel (0 transparent) with a titled colour bar.
    marks : sequence of (row, col, colour)
        Points to draw (clicks, a comment's location).
    box : (row0, col0, row1, col1), optional
        A rectangle to draw.
    labels : sequence of (row, col, text, colour)
        Text labels on the first panel (e.g. instance numbers placed by :func:`segcore.viz.place_labels`):
        drawn by the browser, so they stay crisp at any zoom.

    The point grid is sampled every ``stride`` pixels to stay light (the title says so when ``stride > 1``).
    ``height`` defaults to what the panels' aspect needs in a ~700 px wide column (no empty band above them).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(panels)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[t for t, _ in panels], horizontal_spacing=0.015)
    h, w = panels[0][1].shape[:2]
    if height is None:
        height = int(min(720, max(320, 690 / n * h / w + 60)))
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_hover_points))))
    rr, cc = np.mgrid[0:h:stride, 0:w:stride]
    rr, cc = rr.ravel(), cc.ravel()
    names = list(class_names) or [str(i) for i in range(256)]
    groups: list[tuple[str, np.ndarray]] = []
    if pixel_values is not None:
        ra = raw[rr, cc] if raw is not None else np.zeros(rr.size, np.int64)
        rf = refined[rr, cc] if refined is not None else ra
        for a in np.unique(ra):
            for b in np.unique(rf[ra == a]):
                sel = np.flatnonzero((ra == a) & (rf == b))
                label = f"raw {names[int(a)] if a < len(names) else a}<br>refined {names[int(b)] if b < len(names) else b}"
                groups.append((label, sel))
    else:
        groups.append(("", np.arange(rr.size)))
    custom = np.stack([
        (pixel_values[rr, cc] if pixel_values is not None else np.zeros(rr.size)).astype(np.float32),
        (prob[rr, cc] if prob is not None else np.zeros(rr.size)).astype(np.float32)], -1)
    for i, (_, rgb) in enumerate(panels, start=1):
        fig.add_trace(go.Image(source=_data_uri(rgb), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1), row=1, col=i)
        if heat is not None:
            fig.add_trace(go.Heatmap(z=np.asarray(heat, np.float32)[::stride, ::stride],
                                     x=np.arange(0, w, stride), y=np.arange(0, h, stride),
                                     colorscale=uncertainty_colorscale(), zmin=0, zmax=1, showscale=(i == n),
                                     colorbar=dict(title=dict(text=heat_title, side="right"), thickness=12),
                                     hoverinfo="skip", name=heat_title), row=1, col=i)
        for label, sel in groups:
            fig.add_trace(go.Scattergl(
                x=cc[sel].astype(np.int32), y=rr[sel].astype(np.int32), customdata=custom[sel], mode="markers",
                marker=dict(size=max(4, stride * 2), opacity=0), name=CLICK_TRACE_NAME, showlegend=False,
                hovertemplate=("row %{y}, col %{x}<br>value %{customdata[0]:.1f}<br>" + label
                               + "<br>p(raw) %{customdata[1]:.2f}<extra></extra>") if pixel_values is not None
                else "row %{y}, col %{x}<extra></extra>"), row=1, col=i)
        if marks:
            fig.add_trace(go.Scatter(x=[m[1] for m in marks], y=[m[0] for m in marks], mode="markers",
                                     marker=dict(size=11, color=[m[2] for m in marks], symbol="circle",
                                                 line=dict(color="white", width=2)),
                                     hoverinfo="skip", showlegend=False), row=1, col=i)
        if box is not None:
            r0, c0, r1, c1 = box
            fig.add_shape(type="rect", x0=c0, x1=c1, y0=r0, y1=r1, line=dict(color="#f1c40f", width=2),
                          row=1, col=i)
    for r, c, text, colour in labels:
        fig.add_annotation(x=c, y=r, text=text, showarrow=False, xanchor="left", yanchor="top", xref="x", yref="y",
                           font=dict(size=11, color="white"), bgcolor="rgba(0,0,0,0.65)", bordercolor=colour,
                           borderwidth=1, borderpad=1)
    fig.update_xaxes(matches="x", showgrid=False, zeroline=False, range=[-0.5, w - 0.5], showticklabels=False,
                     ticks="", showline=False)
    fig.update_yaxes(matches="y", showgrid=False, zeroline=False, range=[h - 0.5, -0.5], scaleanchor="x",
                     showticklabels=False, ticks="", showline=False)
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=40, b=4), dragmode="pan", hovermode="closest",
                      modebar=dict(orientation="v"), uirevision="keep-zoom",
                      title=dict(text=f"hover readout every {stride} px" if stride > 1 else "",
                                 font=dict(size=11), x=0.0, xanchor="left", y=0.995))
    fig.update_annotations(font_size=13)
    return fig


def line_plot(history: Sequence[dict], keys: Sequence[str] = ("loss", "dice"), x: str = "epoch"):
    import plotly.graph_objects as go

    fig = go.Figure()
    for k in keys:
        xs = [r[x] for r in history if k in r]
        ys = [r[k] for r in history if k in r]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=k))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=20, b=10), xaxis_title=x)
    return fig
