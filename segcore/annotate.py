"""Turn drawing-canvas strokes (fabric.js JSON) into label-map edits at full resolution.

The canvas shows the image scaled by ``1/scale`` (``scale`` = image pixels per
canvas pixel). A canvas coordinate ``(x, y)`` maps to the continuous image
coordinate ``(x * scale, y * scale)``; image pixel ``(r, c)`` has its centre at
``(c + 0.5, r + 0.5)``. A brush stroke of width ``w`` sets every pixel whose
centre lies within ``w * scale / 2`` of the stroke's centre line; a polygon or
rectangle sets every pixel whose centre lies inside it. Rasterising from the
vector strokes (not from the canvas bitmap) keeps edits exact for images larger
than the canvas and for non-square images.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["apply_strokes", "stroke_to_polyline", "color_to_class", "class_color", "changed_pixels", "apply_object",
           "set_slice", "plane_point"]


def class_color(label: int, palette: np.ndarray) -> str:
    r, g, b = (int(v) for v in palette[label % len(palette)])
    return f"#{r:02x}{g:02x}{b:02x}"


def color_to_class(color: str, palette: np.ndarray) -> int | None:
    """Class whose palette colour is ``color`` ('#rrggbb' or 'rgba(r,g,b,a)'), else None."""
    c = (color or "").strip().lower()
    try:
        if c.startswith("#") and len(c) == 7:
            rgb = (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16))
        elif c.startswith("rgb"):
            rgb = tuple(int(float(v)) for v in c[c.index("(") + 1 : c.index(")")].split(",")[:3])
        else:
            return None
    except ValueError:
        return None
    for i, p in enumerate(palette):
        if tuple(int(v) for v in p) == rgb:
            return i
    return None


def _bezier(p0, p1, p2, n=8):
    t = np.linspace(0, 1, n + 1)[1:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _place(points: np.ndarray, obj: dict) -> np.ndarray:
    """Apply a fabric object's placement (origin, left/top, scale) to its own path points.

    fabric stores path points in the path's own frame, centred on the bounding
    box centre; the object is drawn with that centre at the origin-adjusted
    ``left``/``top``. For a freshly drawn, unmoved path this is the identity.
    """
    if "left" not in obj or len(points) == 0:
        return points
    sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
    w, h = float(obj.get("width", 0)) * sx, float(obj.get("height", 0)) * sy
    ox, oy = _ORIGIN.get(obj.get("originX", "left"), 0.0), _ORIGIN.get(obj.get("originY", "top"), 0.0)
    centre = np.array([float(obj["left"]) + (0.5 - ox) * w, float(obj["top"]) + (0.5 - oy) * h])
    if "pathOffset" in obj:
        off = np.array([float(obj["pathOffset"]["x"]), float(obj["pathOffset"]["y"])])
    else:
        off = (points.min(0) + points.max(0)) / 2
    return (points - off) * np.array([sx, sy]) + centre


def stroke_to_polyline(obj: dict) -> tuple[np.ndarray, bool]:
    """Canvas-space vertices of a fabric object and whether it is a closed, filled shape."""
    kind = str(obj.get("type", "")).lower()
    if kind == "path":
        pts: list[np.ndarray] = []
        closed = False
        cur = None
        for seg in obj.get("path", []):
            op = seg[0]
            if op == "M":
                cur = np.array(seg[1:3], float)
                pts.append(cur[None])
            elif op == "L":
                cur = np.array(seg[1:3], float)
                pts.append(cur[None])
            elif op == "Q" and cur is not None:
                ctrl, end = np.array(seg[1:3], float), np.array(seg[3:5], float)
                pts.append(_bezier(cur, ctrl, end))
                cur = end
            elif op in ("z", "Z"):
                closed = True
        verts = _place(np.concatenate(pts), obj) if pts else np.zeros((0, 2))
        filled = closed or (obj.get("fill") not in (None, "", "transparent") and len(verts) > 2
                            and obj.get("strokeWidth", 0) == 0)
        return verts, closed or filled
    if kind in ("polygon", "polyline"):  # fabric 7's polygon tool: points in the object's own frame
        pts = np.array([[float(p["x"]), float(p["y"])] for p in obj.get("points", [])], float).reshape(-1, 2)
        return _place(pts, obj), kind == "polygon"
    if kind == "rect":
        w = float(obj["width"]) * float(obj.get("scaleX", 1))
        h = float(obj["height"]) * float(obj.get("scaleY", 1))
        x = float(obj["left"]) - _ORIGIN.get(obj.get("originX", "left"), 0.0) * w
        y = float(obj["top"]) - _ORIGIN.get(obj.get("originY", "top"), 0.0) * h
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), True
    if kind == "line":
        cx = float(obj["left"]) + float(obj.get("width", 0)) / 2
        cy = float(obj["top"]) + float(obj.get("height", 0)) / 2
        return np.array([[cx + obj["x1"], cy + obj["y1"]], [cx + obj["x2"], cy + obj["y2"]]], float), False
    if kind == "circle":
        r = float(obj["radius"]) * float(obj.get("scaleX", 1))
        cx, cy = float(obj["left"]) + r, float(obj["top"]) + r
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1), True
    return np.zeros((0, 2)), False


def _paint_polyline(out: np.ndarray, verts: np.ndarray, radius: float, value: int) -> None:
    h, w = out.shape
    if len(verts) == 1:
        verts = np.concatenate([verts, verts])
    for a, b in zip(verts[:-1], verts[1:]):
        x0 = int(max(np.floor(min(a[0], b[0]) - radius - 1), 0))
        x1 = int(min(np.ceil(max(a[0], b[0]) + radius + 1), w))
        y0 = int(max(np.floor(min(a[1], b[1]) - radius - 1), 0))
        y1 = int(min(np.ceil(max(a[1], b[1]) + radius + 1), h))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        px, py = xx + 0.5, yy + 0.5
        d = b - a
        L2 = float(d @ d)
        t = np.zeros_like(px, dtype=float) if L2 == 0 else np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / L2, 0, 1)
        dist2 = (px - (a[0] + t * d[0])) ** 2 + (py - (a[1] + t * d[1])) ** 2
        out[y0:y1, x0:x1][dist2 <= radius * radius] = value


def _fill_polygon(out: np.ndarray, verts: np.ndarray, value: int) -> None:
    h, w = out.shape
    if len(verts) < 3:
        return
    x0, x1 = int(max(np.floor(verts[:, 0].min()), 0)), int(min(np.ceil(verts[:, 0].max()) + 1, w))
    y0, y1 = int(max(np.floor(verts[:, 1].min()), 0)), int(min(np.ceil(verts[:, 1].max()) + 1, h))
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    px, py = xx + 0.5, yy + 0.5
    inside = np.zeros(px.shape, bool)
    vx, vy = verts[:, 0], verts[:, 1]
    jx, jy = np.roll(vx, 1), np.roll(vy, 1)
    for xi, yi, xj, yj in zip(vx, vy, jx, jy):  # even-odd ray casting, vectorised over pixels
        if yi == yj:
            continue
        crosses = ((yi > py) != (yj > py)) & (px < (xj - xi) * (py - yi) / (yj - yi) + xi)
        inside ^= crosses
    out[y0:y1, x0:x1][inside] = value


def apply_strokes(mask: np.ndarray, objects: Iterable[dict], scale: float | Sequence[float], palette: np.ndarray,
                  *, eraser_color: str | None = None) -> np.ndarray:
    """Apply canvas objects, in drawing order, to a copy of ``mask``.

    Parameters
    ----------
    mask : np.ndarray
        ``H,W`` label map at full image resolution.
    objects : iterable of dict
        ``json_data["objects"]`` from streamlit-drawable-canvas.
    scale : float or (sy, sx)
        Image pixels per canvas pixel.
    palette : np.ndarray
        Class colours; a stroke's colour picks its class.
    eraser_color : str, optional
        Stroke colour that paints background (class 0).

    Returns
    -------
    np.ndarray
        The edited label map (the input is not modified).
    """
    out = np.array(mask, copy=True)
    sy, sx = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    for obj in objects or []:
        verts, filled = stroke_to_polyline(obj)
        if len(verts) == 0:
            continue
        kind = str(obj.get("type", "")).lower()
        color = obj.get("stroke") or obj.get("fill") if kind in ("path", "polygon") else \
            (obj.get("fill") if filled else obj.get("stroke"))
        if eraser_color is not None and (color or "").lower() == eraser_color.lower():
            label = 0
        else:
            label = color_to_class(color, palette)
            if label is None:
                continue
        v = verts * np.array([sx, sy])
        if filled:
            _fill_polygon(out, v, label)
        else:
            _paint_polyline(out, v, float(obj.get("strokeWidth", 1)) * (sx + sy) / 4, label)
    return out


def changed_pixels(before: np.ndarray, after: np.ndarray) -> int:
    """How many pixels an edit changed.

    Examples
    --------
    >>> changed_pixels(np.zeros((2, 2)), np.eye(2))
    2
    """
    return int((np.asarray(before) != np.asarray(after)).sum())


def apply_object(mask: np.ndarray, obj: np.ndarray, label: int) -> np.ndarray:
    """A copy of ``mask`` with the pixels of ``obj`` (bool ``H,W``) set to ``label`` (0 erases).

    Examples
    --------
    >>> apply_object(np.zeros((2, 2), np.uint8), np.array([[True, False], [False, False]]), 2).tolist()
    [[2, 0], [0, 0]]
    """
    out = np.array(mask, copy=True)
    obj = np.asarray(obj, bool)
    if obj.shape != out.shape:
        raise ValueError(f"The object's shape {obj.shape} does not match the mask's {out.shape}.")
    out[obj] = label
    return out


def set_slice(volume: np.ndarray, index: int, mask: np.ndarray) -> np.ndarray:
    """A copy of a ``D,H,W`` label volume with axial slice ``index`` replaced by ``mask``.

    Examples
    --------
    >>> set_slice(np.zeros((2, 1, 2), np.uint8), 1, np.array([[3, 0]])).tolist()
    [[[0, 0]], [[3, 0]]]
    """
    out = np.array(volume, copy=True)
    if out.ndim != 3 or not 0 <= index < out.shape[0]:
        raise ValueError(f"Slice {index} is not in a volume of shape {out.shape}.")
    if np.shape(mask) != out.shape[1:]:
        raise ValueError(f"The slice mask's shape {np.shape(mask)} does not match the volume's {out.shape[1:]}.")
    out[index] = mask
    return out


def plane_point(plane: str, x: float, y: float, point: tuple[int, int, int]) -> tuple[int, int, int]:
    """The new crosshair (z, y, x) after a click at (x, y) on one orthogonal plane (see figures.orthogonal_views).

    Examples
    --------
    >>> plane_point("coronal", 7, 2, (5, 6, 1))
    (2, 6, 7)
    """
    z, yy, xx = point
    if plane == "axial":
        return z, int(round(y)), int(round(x))
    if plane == "coronal":
        return int(round(y)), yy, int(round(x))
    if plane == "sagittal":
        return int(round(y)), int(round(x)), xx
    raise ValueError(f"Unknown plane '{plane}'. Expected axial, coronal or sagittal.")
