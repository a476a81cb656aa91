"""Rendering label maps over scans (overlay, contours, diff) and writing results."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import Scan
from .labels import png_bytes

__all__ = ["instances_image", "PALETTE", "palette",
           "overlay", "contours", "diff_image", "to_rgb", "png_bytes", "save_label_nifti",
           "nifti_bytes", "colorize", "instance_colours", "place_labels", "canvas_background", "class_hex",
           "view_panels", "instance_labels", "VIEWS", "mask_layer", "contour_layer", "diff_layer", "instance_layer",
           "proposal_layer", "instance_id_layer", "instance_id_labels", "volume_display", "plane"]

# RGB per class (0 = background, unused)
PALETTE = np.array([
    [0, 0, 0], [46, 204, 113], [231, 76, 60], [52, 152, 219], [241, 196, 15],
    [155, 89, 182], [26, 188, 156], [230, 126, 34], [236, 240, 241], [149, 165, 166],
], dtype=np.uint8)


def to_rgb(gray_u8: np.ndarray) -> np.ndarray:
    g = np.asarray(gray_u8)
    if g.ndim == 3:
        return g.astype(np.uint8)
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=-1)


def palette(colors=None) -> np.ndarray:
    """Class colours as a ``K,3`` uint8 array: a model's ``class_colors`` (one RGB triple per class), or
    :data:`PALETTE` when None.

    >>> palette([(0, 0, 0), (255, 0, 255)]).tolist()
    [[0, 0, 0], [255, 0, 255]]
    """
    if colors is None or len(colors) == 0:
        return PALETTE
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


def colorize(labels: np.ndarray, colors=None) -> np.ndarray:
    pal = palette(colors)
    return pal[np.asarray(labels) % len(pal)]


def overlay(gray_u8: np.ndarray, labels: np.ndarray, alpha: float = 0.45, colors=None) -> np.ndarray:
    """Blend class colours (``colors``: the model's class colours, default :data:`PALETTE`) over the image where
    ``labels > 0``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Got {alpha}.")
    base = to_rgb(gray_u8).astype(np.float32)
    col = colorize(labels, colors).astype(np.float32)
    fg = (np.asarray(labels) > 0)[..., None]
    out = np.where(fg, (1 - alpha) * base + alpha * col, base)
    return np.clip(out, 0, 255).astype(np.uint8)


def contours(gray_u8: np.ndarray, labels: np.ndarray, thickness: int = 1, colors=None) -> np.ndarray:
    """Class outlines drawn over the image."""
    out = to_rgb(gray_u8).copy()
    pal = palette(colors)
    for c in sorted(int(v) for v in np.unique(labels) if v != 0):
        cs, _ = cv2.findContours((labels == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, tuple(int(v) for v in pal[c % len(pal)]), thickness)
    return out


def diff_image(gray_u8: np.ndarray, raw: np.ndarray, refined: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Green where refinement added foreground/changed class, red where it removed foreground."""
    base = to_rgb(gray_u8).astype(np.float32) * 0.6
    added = (refined != raw) & (refined > 0)
    removed = (refined != raw) & (refined == 0)
    out = base.copy()
    out[added] = (1 - alpha) * out[added] + alpha * np.array([40, 220, 90])
    out[removed] = (1 - alpha) * out[removed] + alpha * np.array([235, 60, 60])
    return np.clip(out, 0, 255).astype(np.uint8)


def _to_nifti_layout(labels: np.ndarray) -> np.ndarray:
    # inverse of segcore.io's D,H,W = z,y,x transpose
    if labels.ndim == 3:
        return np.transpose(labels, (2, 1, 0))
    return labels.T


def nifti_bytes(labels: np.ndarray, scan: Scan | None = None) -> bytes:
    """A gzip-compressed NIfTI label map on the scan's grid (its affine)."""
    import gzip

    import nibabel as nib

    affine = scan.affine if scan is not None and scan.affine is not None else np.eye(4)
    img = nib.Nifti1Image(_to_nifti_layout(np.asarray(labels).astype(np.uint8)), affine)
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), mtime=0)


def save_label_nifti(labels: np.ndarray, scan: Scan | None, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(nifti_bytes(labels, scan))
    return path


def instances_image(gray_u8: np.ndarray, masks: np.ndarray, boxes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Each instance filled in its own colour with its box outline (boxes are x, y, w, h); labels are drawn by
    the figure (:func:`place_labels`), so they stay legible at any zoom."""
    out = to_rgb(gray_u8).astype(np.float32)
    colours = instance_colours(len(masks))
    for m, c in zip(masks, colours):
        out[m] = (1 - alpha) * out[m] + alpha * c
    out = np.clip(out, 0, 255).astype(np.uint8)
    for b, c in zip(boxes, colours):
        x, y, w, h = (int(round(v)) for v in b)
        cv2.rectangle(out, (x, y), (x + w, y + h), tuple(int(v) for v in c), 1)
    return out


def instance_colours(n: int) -> np.ndarray:
    """``n`` distinct bright RGB colours (seeded, stable between calls)."""
    rng = np.random.default_rng(7)
    return rng.integers(70, 256, (max(n, 1), 3)).astype(np.float32)[:max(n, 0)]


def place_labels(boxes: np.ndarray, texts: list[str], image_shape: tuple[int, int], screen_scale: float,
                 char_px: float = 7.0, line_px: float = 16.0) -> list[tuple[float, float] | None]:
    """Where to put each instance's label so that labels do not overlap: ``(row, col)`` or None (left out).

    Tries above the box, inside its top-left corner, then below it; a label that fits nowhere is left out
    (the instance table still lists it). ``screen_scale`` is screen pixels per image pixel.

    Examples
    --------
    >>> b = np.array([[10, 10, 20, 20], [12, 12, 20, 20]], float)
    >>> place_labels(b, ["1", "2"], (100, 100), 1.0)  # the second label goes below its box
    [(0.0, 10.0), (32.0, 12.0)]
    """
    h, w = image_shape
    placed: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float] | None] = []
    lh = line_px / screen_scale
    for (x, y, bw, bh), text in zip(boxes, texts):
        lw = (len(text) * char_px + 6) / screen_scale
        spot = None
        for r in (y - lh, y, y + bh):  # top edge of the label: above, inside, below
            r = min(max(r, 0.0), h - lh)
            c = min(max(x, 0.0), max(w - lw, 0.0))
            rect = (r, c, r + lh, c + lw)
            if all(rect[2] <= p[0] or rect[0] >= p[2] or rect[3] <= p[1] or rect[1] >= p[3] for p in placed):
                spot = (r, c)
                placed.append(rect)
                break
        out.append(None if spot is None else (round(float(spot[0]), 1), round(float(spot[1]), 1)))
    return out


def class_hex(label: int, colors=None) -> str:
    """The class's overlay colour as '#rrggbb' (what the legend and the drawing tools use)."""
    pal = palette(colors)
    r, g, b = (int(v) for v in pal[label % len(pal)])
    return f"#{r:02x}{g:02x}{b:02x}"


def canvas_background(gray_u8: np.ndarray, labels: np.ndarray, width: int, height: int, alpha: float = 0.4,
                      colors=None):
    """The overlay resized (nearest neighbour) to the drawing canvas, as a PIL image."""
    from PIL import Image

    return Image.fromarray(overlay(gray_u8, labels, alpha, colors)).resize((int(width), int(height)), Image.NEAREST)


VIEWS = ("Overlay", "Contours", "Side by side", "Difference")


def mask_layer(labels: np.ndarray, alpha: float = 0.45, colors=None) -> np.ndarray:
    """``H,W,4`` RGBA: class colours where ``labels > 0`` at opacity ``alpha``, transparent elsewhere.

    Drawn over the gray scan by the viewer; blending it gives exactly :func:`overlay`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Got {alpha}.")
    lab = np.asarray(labels)
    out = np.zeros(lab.shape + (4,), np.uint8)
    out[..., :3] = colorize(lab, colors)
    out[..., 3] = np.where(lab > 0, int(round(alpha * 255)), 0).astype(np.uint8)
    return out


def contour_layer(labels: np.ndarray, thickness: int = 1, colors=None) -> np.ndarray:
    """``H,W,4`` RGBA class outlines (opaque), transparent elsewhere."""
    lab = np.asarray(labels)
    pal = palette(colors)
    out = np.zeros(lab.shape + (4,), np.uint8)
    for c in sorted(int(v) for v in np.unique(lab) if v != 0):
        cs, _ = cv2.findContours((lab == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        colour = tuple(int(v) for v in pal[c % len(pal)]) + (255,)
        cv2.drawContours(out, cs, -1, colour, thickness)
    return out


def diff_layer(raw: np.ndarray, refined: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """``H,W,4`` RGBA: green where refinement added foreground or changed the class, red where it removed it,
    and a dimming veil elsewhere (as :func:`diff_image`)."""
    out = np.zeros(np.shape(raw) + (4,), np.uint8)
    out[..., 3] = 102  # a black veil dims the scan to 60 %
    added = (refined != raw) & (refined > 0)
    removed = (refined != raw) & (refined == 0)
    # over changed pixels: 0.6 * (1 - alpha) * scan + alpha * colour, as one RGBA layer
    a = 1.0 - 0.6 * (1.0 - alpha)
    for where, colour in ((added, (40, 220, 90)), (removed, (235, 60, 60))):
        out[where, :3] = np.clip(np.rint(np.array(colour) * alpha / a), 0, 255).astype(np.uint8)
        out[where, 3] = int(round(a * 255))
    return out


def instance_layer(masks: np.ndarray, boxes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``H,W,4`` RGBA: each instance in its own colour with its box outline."""
    h, w = np.shape(masks)[1:3]  # an empty stack keeps the image's shape: (0, H, W)
    out = np.zeros((h, w, 4), np.uint8)
    for m, b, c in zip(masks, boxes, instance_colours(len(masks))):
        out[m, :3], out[m, 3] = c.astype(np.uint8), int(alpha * 255)
        x, y, bw, bh = (int(round(v)) for v in b)
        cv2.rectangle(out, (x, y), (x + bw, y + bh), tuple(int(v) for v in c) + (255,), 1)
    return out


def view_panels(view: str, display: np.ndarray, raw: np.ndarray, refined: np.ndarray, alpha: float = 0.45,
                instances: dict | None = None, colors=None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The panels of one viewer mode: ``(title, gray uint8 H,W, RGBA layer H,W,4 or None)``.

    ``colors``: the model's class colours (``ModelConfig.class_colors``), default :data:`PALETTE`.

    Modes: "Overlay", "Contours", "Side by side", "Difference", "Instances" (needs the detector's output).
    The gray scan and a mostly transparent layer travel separately: a fraction of the bytes of blended images.
    """
    if view == "Overlay":
        return [("Raw", display, mask_layer(raw, alpha, colors)),
                ("Refined", display, mask_layer(refined, alpha, colors))]
    if view == "Contours":
        return [("Raw", display, contour_layer(raw, colors=colors)),
                ("Refined", display, contour_layer(refined, colors=colors))]
    if view == "Side by side":
        return [("Scan", display, None), ("Raw", display, mask_layer(raw, alpha, colors)),
                ("Refined", display, mask_layer(refined, alpha, colors))]
    if view == "Difference":
        return [("Refined − raw (green added, red removed)", display, diff_layer(raw, refined))]
    if view == "Instances":
        if instances is None:
            raise ValueError("The Instances view needs the detector's output (instances=...).")
        n = len(instances["scores"])
        masks = instances["masks"] if n else np.zeros((0,) + np.shape(display), bool)
        return [(f"Instances ({n}, Mask R-CNN)", display, instance_layer(masks, instances["boxes"], alpha)),
                ("Refined (semantic)", display, mask_layer(refined, alpha, colors))]
    raise ValueError(f"Unknown view '{view}'. Expected one of {list(VIEWS) + ['Instances']}.")


def instance_labels(instances: dict, image_shape: tuple[int, int], screen_scale: float) -> list:
    """``(row, col, text, colour)`` labels for the Instances view, placed without overlap."""
    texts = [f"{k + 1}" for k in range(len(instances["scores"]))]
    spots = place_labels(np.asarray(instances["boxes"]).reshape(-1, 4), texts, image_shape, screen_scale)
    cols = instance_colours(len(texts))
    return [(r, c, t, "#%02x%02x%02x" % tuple(int(v) for v in col))
            for (t, spot, col) in zip(texts, spots, cols) if spot is not None for r, c in [spot]]


def proposal_layer(labels: np.ndarray, proposal: np.ndarray | None, label: int, alpha: float = 0.45,
                   colors=None) -> np.ndarray:
    """RGBA layer for the smart-click tool: the current mask, and the proposed object in its class colour
    (more opaque) with a yellow outline."""
    out = mask_layer(labels, alpha, colors)
    if proposal is not None and np.any(proposal):
        prop = np.asarray(proposal, bool)
        pal = palette(colors)
        out[prop, :3] = pal[label % len(pal)]
        out[prop, 3] = int(round(min(1.0, alpha + 0.25) * 255))
        cs, _ = cv2.findContours(prop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, (241, 196, 15, 255), 1)
    return out


def instance_id_layer(ids: np.ndarray, alpha: float = 0.5, proposal: np.ndarray | None = None) -> np.ndarray:
    """RGBA layer of an instance-id map: each instance in its own colour (stable by id) with its outline; an
    optional proposed object outlined in yellow."""
    a = np.asarray(ids)
    out = np.zeros(a.shape + (4,), np.uint8)
    labels = [int(v) for v in np.unique(a) if v != 0]
    colours = instance_colours(max(labels, default=0) + 1)
    for lab in labels:
        m = a == lab
        out[m, :3], out[m, 3] = colours[lab].astype(np.uint8), int(alpha * 255)
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, tuple(int(v) for v in colours[lab]) + (255,), 1)
    if proposal is not None and np.any(proposal):
        cs, _ = cv2.findContours(np.asarray(proposal, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, (241, 196, 15, 255), 2)
    return out


def instance_id_labels(ids: np.ndarray, screen_scale: float) -> list:
    """``(row, col, text, colour)`` labels naming each instance of an id map by its id, placed without overlap."""
    a = np.asarray(ids)
    labels = [int(v) for v in np.unique(a) if v != 0]
    boxes = []
    for lab in labels:
        rr, cc = np.nonzero(a == lab)
        boxes.append([cc.min(), rr.min(), cc.max() - cc.min() + 1, rr.max() - rr.min() + 1])
    spots = place_labels(np.asarray(boxes, float).reshape(-1, 4), [str(v) for v in labels], a.shape, screen_scale)
    colours = instance_colours(max(labels, default=0) + 1)
    return [(r, c, str(lab), "#%02x%02x%02x" % tuple(int(v) for v in colours[lab]))
            for lab, spot in zip(labels, spots) if spot is not None for r, c in [spot]]


def volume_display(volume: np.ndarray, win: tuple[float, float]) -> np.ndarray:
    """A ``D,H,W`` volume as uint8 in window ``win`` (for the orthogonal views)."""
    from .io import window

    return window(volume, *win)


def plane(volume: np.ndarray, name: str, index: int) -> np.ndarray:
    """One orthogonal plane of a ``D,H,W`` array: axial (z), coronal (y) or sagittal (x)."""
    if name == "axial":
        return volume[index]
    if name == "coronal":
        return volume[:, index, :]
    if name == "sagittal":
        return volume[:, :, index]
    raise ValueError(f"Unknown plane '{name}'. Expected axial, coronal or sagittal.")
