"""Plotly figures for the viewer: image panels with linked zoom, a hover readout and a click layer.

Panels are RGB images (``H,W,3`` uint8) shown side by side with linked zoom and pan. A transparent point grid
on each panel carries the hover readout (row, column, value, raw and refined class, the model's probability)
and receives clicks (``st.plotly_chart(on_select="rerun", selection_mode="points")``): its x/y are image
columns/rows. (Smart click has its own canvas, ``ui/click_canvas.py``.)
Numbers travel as typed arrays (compact, fast); class names enter through one trace per (raw, refined) class
pair, so no per-pixel strings are sent.
"""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

from .labels import png_bytes

__all__ = ["image_panels", "orthogonal_views", "ortho_click", "ORTHO_PLANES", "line_plot", "uncertainty_colorscale",
           "CLICK_TRACE_NAME", "image_digest", "image_png", "png_data_uri", "png_uri"]

CLICK_TRACE_NAME = "pixels"


def uncertainty_colorscale() -> list:
    """Inferno with 0 fully transparent, so certain pixels show the image underneath."""
    return [[0.0, "rgba(0,0,4,0)"], [0.02, "rgba(0,0,4,0)"], [0.1, "rgba(40,11,84,0.55)"],
            [0.3, "rgba(101,21,110,0.75)"], [0.5, "rgba(159,42,99,0.85)"], [0.7, "rgba(212,72,66,0.9)"],
            [0.9, "rgba(245,125,21,0.95)"], [1.0, "rgba(252,255,164,1)"]]


def image_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a gray ``H,W``, RGB ``H,W,3`` or RGBA ``H,W,4`` uint8 image."""
    import cv2

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 4:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA))
        data = buf.tobytes()
    else:
        data = png_bytes(a)
    return data


def image_digest(arr: np.ndarray) -> str:
    """A short content digest of an image (its bytes, shape and dtype): the same picture, the same digest.

    >>> a = np.zeros((2, 3), np.uint8)
    >>> image_digest(a) == image_digest(a.copy()), image_digest(a) == image_digest(a.reshape(3, 2))
    (True, False)
    """
    import hashlib

    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(a.tobytes(), digest_size=16)
    h.update(f"{a.shape}{a.dtype}".encode())
    return h.hexdigest()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes (what a browser shows inline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_uri(arr: np.ndarray) -> str:
    """The data URI of :func:`image_png`'s encoding of ``arr``."""
    return png_data_uri(image_png(arr))


def image_panels(
    panels: Sequence[tuple],
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
    labels: Sequence[tuple[float, float, str, str]] = (),
    clickable: bool = False,
):
    """Side-by-side image panels with linked zoom/pan, a hover readout and, optionally, a click layer.

    Parameters
    ----------
    panels : sequence of (title, image) or (title, gray, layer)
        ``image``: ``H,W`` gray or ``H,W,3`` RGB uint8. ``layer``: an ``H,W,4`` RGBA image drawn over ``gray``
        (or None), e.g. from :func:`segcore.viz.view_panels`; the gray scan and a mostly transparent layer are
        a fraction of the bytes of blended images.
    pixel_values, raw, refined, prob : arrays ``H,W``, optional
        Hover readout: raw scan value, raw and refined class ids, probability of the raw class.
    heat : array ``H,W`` in [0, 1], optional
        An uncertainty layer over every panel (0 transparent) with a titled colour bar.
    marks : sequence of (row, col, colour)
        Points to draw (clicks, a comment's location).
    labels : sequence of (row, col, text, colour)
        Text labels on the first panel (e.g. instance numbers placed by :func:`segcore.viz.place_labels`):
        drawn by the browser, so they stay crisp at any zoom.
    clickable : bool
        Add a transparent point grid on the first panel so that ``st.plotly_chart(on_select="rerun")`` reports
        clicks (points: ``x`` = column, ``y`` = row).

    The hover grid is sampled every ``stride`` pixels to stay light (the title says so when ``stride > 1``).
    ``height`` defaults to what the panels' aspect needs in a ~700 px wide column (no empty band above them).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(panels)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.015)
    h, w = panels[0][1].shape[:2]
    if height is None:
        height = int(min(720, max(320, 690 / n * h / w + 60)))
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_hover_points))))
    rows, cols = np.arange(0, h, stride), np.arange(0, w, stride)
    names = list(class_names)
    hover = None
    if pixel_values is not None:  # z carries the value, int16 customdata the rest: a few hundred KB per panel
        zero = np.zeros((len(rows), len(cols)), np.int16)
        sub = (slice(None, None, stride), slice(None, None, stride))
        custom = np.stack([np.rint(np.asarray(prob, np.float32)[sub] * 100).astype(np.int16)
                           if prob is not None else zero,
                           np.asarray(raw, np.int16)[sub] if raw is not None else zero,
                           np.asarray(refined, np.int16)[sub] if refined is not None else zero], -1)
        hover = dict(z=np.asarray(pixel_values, np.float32)[sub], customdata=custom, hovertemplate=(
            "row %{y}, col %{x}<br>value %{z:.1f}<br>raw class %{customdata[1]}, refined class "
            "%{customdata[2]}<br>p(raw) %{customdata[0]}%<extra></extra>"))
    for i, panel in enumerate(panels, start=1):
        base, layer = panel[1], panel[2] if len(panel) > 2 else None
        fig.add_trace(go.Image(source=png_uri(base), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1), row=1, col=i)
        if layer is not None:
            fig.add_trace(go.Image(source=png_uri(layer), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1), row=1, col=i)
        if heat is not None:
            fig.add_trace(go.Heatmap(z=np.asarray(heat, np.float32)[::stride, ::stride], x=cols, y=rows,
                                     colorscale=uncertainty_colorscale(), zmin=0, zmax=1, showscale=(i == n),
                                     colorbar=dict(title=dict(text=heat_title, side="right"), thickness=12),
                                     hoverinfo="skip", name=heat_title), row=1, col=i)
        if clickable and i == 1:  # points receive clicks (a heatmap would take them); they carry the hover too
            cstride = max(stride, int(np.ceil(np.sqrt(h * w / (96 * 96)))))
            rr, cc = (a.ravel() for a in np.mgrid[0:h:cstride, 0:w:cstride])
            extra: dict = {"hovertemplate": "row %{y}, col %{x}<extra></extra>"}  # points must hover to be clicked
            if pixel_values is not None:
                none = np.zeros(rr.size)
                extra = dict(customdata=np.stack([
                    np.rint(np.asarray(prob, np.float32)[rr, cc] * 100) if prob is not None else none,
                    np.asarray(raw)[rr, cc] if raw is not None else none,
                    np.asarray(refined)[rr, cc] if refined is not None else none,
                    np.asarray(pixel_values, np.float32)[rr, cc]], -1).astype(np.float32),
                    hovertemplate=hover["hovertemplate"].replace("%{z:.1f}", "%{customdata[3]:.1f}"))
            small = np.int16 if max(h, w) < 32768 else np.int32  # int16: half the bytes sent on every rerun
            fig.add_trace(go.Scattergl(x=cc.astype(small), y=rr.astype(small), mode="markers",
                                       name=CLICK_TRACE_NAME, showlegend=False,
                                       marker=dict(size=max(6, cstride * 2), opacity=0), **extra), row=1, col=i)
        elif hover is not None:
            fig.add_trace(go.Heatmap(x=cols, y=rows, opacity=0, showscale=False, **hover), row=1, col=i)
        if marks or (clickable and i == 1):  # a clickable panel always has the trace: the first click then
            # updates it instead of adding one, which made the browser redraw the whole figure (~0.4 s)
            fig.add_trace(go.Scatter(x=[m[1] for m in marks], y=[m[0] for m in marks], mode="markers",
                                     marker=dict(size=11, color=[m[2] for m in marks], symbol="circle",
                                                 line=dict(color="white", width=2)),
                                     hoverinfo="skip", showlegend=False), row=1, col=i)
    for r, c, text, colour in labels:
        fig.add_annotation(x=c, y=r, text=text, showarrow=False, xanchor="left", yanchor="top", xref="x", yref="y",
                           font=dict(size=11, color="white"), bgcolor="rgba(0,0,0,0.65)", bordercolor=colour,
                           borderwidth=1, borderpad=1)
    fig.update_xaxes(matches="x", showgrid=False, zeroline=False, range=[-0.5, w - 0.5], showticklabels=False,
                     ticks="", showline=False)
    fig.update_yaxes(matches="y", showgrid=False, zeroline=False, range=[h - 0.5, -0.5], scaleanchor="x",
                     showticklabels=False, ticks="", showline=False)
    classes = " · ".join(f"{i} {nm}" for i, nm in enumerate(names) if i) if names else ""
    title = "  ·  ".join(t for t in (f"hover readout every {stride} px" if stride > 1 else "",
                                     f"class ids: {classes}" if classes and pixel_values is not None else "") if t)
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=40, b=4), dragmode="pan", hovermode="closest",
                      modebar=dict(orientation="v"), uirevision="keep-zoom",
                      title=dict(text=title, font=dict(size=11), x=0.0, xanchor="left", y=0.995))
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


ORTHO_PLANES = ("axial", "coronal", "sagittal")
_ORTHO_TRACES = 3  # per plane: the scan, its overlay layer, the click points


def ortho_click(point: dict) -> tuple[str, float, float] | None:
    """``(plane, x, y)`` of a click on :func:`orthogonal_views` (a point of ``st.plotly_chart``'s selection)."""
    curve = point.get("curve_number", point.get("curveNumber"))
    if curve is None or "x" not in point or "y" not in point:
        return None
    return ORTHO_PLANES[int(curve) // _ORTHO_TRACES % 3], float(point["x"]), float(point["y"])


def orthogonal_views(volume: np.ndarray, win: tuple[float, float], layers, spacing, point: tuple[int, int, int], *,
                     height: int = 520):
    """Axial, coronal and sagittal planes of a volume through ``point`` = (z, y, x), with a linked crosshair.

    Parameters
    ----------
    volume : array ``D,H,W``
        Raw scan values; only the three planes shown are windowed (``win`` = centre, width).
    layers : callable or None
        ``layers(plane, index)`` -> ``H,W,4`` RGBA overlay for that plane ("axial" z / "coronal" y /
        "sagittal" x), e.g. a mask layer of the label volume's plane.
    spacing : (dz, dy, dx) mm or None
        Each plane is drawn with its true aspect (pixels stretched by the spacing ratio).
    point : (z, y, x)
        The crosshair: each plane shows the other two coordinates as lines. Clicks report (panel, x, y) through
        the transparent point layer (figure x = the plane's column, y = its row).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .io import window

    dz, dy, dx = (float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    z, y, x = (int(v) for v in point)
    planes = [("axial", volume[z], z, dx, dy, (x, y)),          # rows y, cols x
              ("coronal", volume[:, y, :], y, dx, dz, (x, z)),  # rows z, cols x
              ("sagittal", volume[:, :, x], x, dy, dz, (y, z))]  # rows z, cols y
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.02,
                        subplot_titles=[f"{name} {idx}" for name, _, idx, *_r in planes])
    for i, (plane, img, idx, sx, sy, (cx, cy)) in enumerate(planes, start=1):
        ph, pw = img.shape
        fig.add_trace(go.Image(source=png_uri(window(img, *win)), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1),
                      row=1, col=i)
        layer = layers(plane, idx) if layers is not None else np.zeros((ph, pw, 4), np.uint8)
        fig.add_trace(go.Image(source=png_uri(layer), hoverinfo="skip", x0=0, dx=1, y0=0, dy=1), row=1, col=i)
        stride = max(1, int(np.ceil(np.sqrt(ph * pw / 6000))))
        rr, cc = (a.ravel() for a in np.mgrid[0:ph:stride, 0:pw:stride])
        fig.add_trace(go.Scattergl(x=cc.astype(np.int32), y=rr.astype(np.int32), mode="markers",
                                   name=f"{CLICK_TRACE_NAME}:{plane}", showlegend=False,
                                   marker=dict(size=max(6, stride * 2), opacity=0),
                                   hovertemplate=f"{plane}: row %{{y}}, col %{{x}}<extra></extra>"), row=1, col=i)
        for shape in (dict(type="line", x0=cx, x1=cx, y0=-0.5, y1=ph - 0.5),
                      dict(type="line", x0=-0.5, x1=pw - 0.5, y0=cy, y1=cy)):
            fig.add_shape(**shape, line=dict(color="#f1c40f", width=1), row=1, col=i)
        fig.update_xaxes(range=[-0.5, pw - 0.5], row=1, col=i, showticklabels=False, showgrid=False, zeroline=False,
                         ticks="")
        fig.update_yaxes(range=[ph - 0.5, -0.5], row=1, col=i, showticklabels=False, showgrid=False, zeroline=False,
                         ticks="", scaleanchor=f"x{'' if i == 1 else i}", scaleratio=sy / sx)
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=36, b=4), dragmode="pan", hovermode="closest",
                      modebar=dict(orientation="v"))
    return fig
