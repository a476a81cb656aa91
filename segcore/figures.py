"""Plotly figures for the viewer: synchronised image panels with per-pixel hover."""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

from .viz import png_bytes

__all__ = ["image_panels", "line_plot"]


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def image_panels(
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    pixel_values: np.ndarray | None = None,
    raw: np.ndarray | None = None,
    refined: np.ndarray | None = None,
    prob: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    max_hover_points: int = 160 * 160,
    height: int = 560,
    heat: np.ndarray | None = None,
    heat_opacity: float = 0.5,
):
    """Side-by-side RGB panels with linked zoom/pan and a hover readout.

    Hover shows pixel (row, col), value, raw class, refined class and the
    model's probability of the raw class. For large images the readout is
    sampled on a grid (``max_hover_points``) to keep the page light; the title
    says the stride.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(panels)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[t for t, _ in panels], horizontal_spacing=0.02)
    h, w = panels[0][1].shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_hover_points))))
    rows = np.arange(0, h, stride)
    cols = np.arange(0, w, stride)
    custom = None
    if pixel_values is not None:
        layers = [pixel_values[::stride, ::stride]]
        names = np.asarray(list(class_names) or [str(i) for i in range(256)], dtype=object)
        for lab in (raw, refined):
            layers.append(names[np.clip(lab[::stride, ::stride], 0, len(names) - 1)] if lab is not None
                          else np.full((len(rows), len(cols)), "", object))
        layers.append(prob[::stride, ::stride] if prob is not None else np.zeros((len(rows), len(cols))))
        custom = np.stack([np.asarray(x, dtype=object) for x in layers], -1)
    for i, (_, rgb) in enumerate(panels, start=1):
        fig.add_trace(go.Image(source=_data_uri(rgb), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1), row=1, col=i)
        if heat is not None:
            fig.add_trace(go.Heatmap(z=heat[::stride, ::stride], x=cols, y=rows, colorscale="Inferno",
                                     opacity=heat_opacity, showscale=(i == n), zmin=0, zmax=1,
                                     hoverinfo="skip", name="uncertainty"), row=1, col=i)
        if custom is not None:
            fig.add_trace(go.Heatmap(
                z=np.zeros((len(rows), len(cols))), x=cols, y=rows, customdata=custom, opacity=0, showscale=False,
                hovertemplate=("row %{y}, col %{x}<br>value %{customdata[0]:.1f}<br>raw %{customdata[1]}"
                               "<br>refined %{customdata[2]}<br>p(raw) %{customdata[3]:.2f}<extra></extra>"),
            ), row=1, col=i)
    fig.update_xaxes(matches="x", showgrid=False, zeroline=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(matches="y", showgrid=False, zeroline=False, range=[h - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode="pan",
                      title=dict(text=f"hover readout every {stride} px" if stride > 1 else "", font=dict(size=11)))
    return fig


def line_plot(history: Sequence[dict], keys: Sequence[str] = ("loss", "dice")):
    import plotly.graph_objects as go

    fig = go.Figure()
    for k in keys:
        xs = [r["epoch"] for r in history if k in r]
        ys = [r[k] for r in history if k in r]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=k))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=20, b=10), xaxis_title="epoch")
    return fig
