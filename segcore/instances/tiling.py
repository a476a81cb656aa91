"""Sliding windows over large images and the merging of per-window instance detections.

Coordinates: boxes are ``(y1, x1, y2, x2)`` floats in pixels with pixel ``i``
covering ``[i, i + 1)``; a mask crop is ``(y0, x0, bool array)`` placing the
array's top-left pixel at integer ``(y0, x0)``. Windows overlap; each window
owns a *core* (the windows' cores tile the image without overlap), and a
detection is kept from the window whose core holds its box centre. A
detection of an object no larger than half the overlap is therefore complete
in the window that keeps it; remaining duplicates (objects near a core edge
seen by two windows with slightly different centres) are removed by mask IoU.
Everything here is NumPy in, NumPy out.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

__all__ = ["Window", "crops_to_dense", "mask_iou_crops", "paste_mask", "suppress_duplicates", "tile_grid"]


@dataclasses.dataclass(frozen=True)
class Window:
    """One window ``[y0, y1) x [x0, x1)`` and its core ``[cy0, cy1) x [cx0, cx1)`` (may be unbounded)."""

    y0: int
    x0: int
    y1: int
    x1: int
    cy0: float
    cx0: float
    cy1: float
    cx1: float

    def owns(self, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
        """Whether points ``(cy, cx)`` lie in this window's core."""
        return (cy >= self.cy0) & (cy < self.cy1) & (cx >= self.cx0) & (cx < self.cx1)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = int(np.ceil((length - tile) / stride)) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Core of each window: from the middle of its overlap with the previous window to the middle of the next."""
    ends = [min(s + tile, length) for s in starts]
    bounds = [-np.inf] + [(starts[i + 1] + ends[i]) / 2 for i in range(len(starts) - 1)] + [np.inf]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[Window]:
    """Windows of side ``tile`` (smaller only where the image is) overlapping by at least ``overlap``.

    >>> [(w.y0, w.y1, w.cy0, w.cy1) for w in tile_grid((300, 100), 128, 32)][:3]
    [(0, 128, -inf, 112.0), (96, 224, 112.0, 198.0), (172, 300, 198.0, inf)]
    """
    h, w = (int(v) for v in shape[:2])
    if tile < 16 or not 0 <= overlap < tile:
        raise ValueError(f"Need tile >= 16 and 0 <= overlap < tile. Got tile={tile}, overlap={overlap}.")
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    cys, cxs = _cores(ys, tile, h), _cores(xs, tile, w)
    return [Window(y, x, min(y + tile, h), min(x + tile, w), cy[0], cx[0], cy[1], cx[1])
            for y, cy in zip(ys, cys) for x, cx in zip(xs, cxs)]


def paste_mask(mask: np.ndarray, box, shape: tuple[int, int], threshold: float = 0.5):
    """Paste a soft ``m x m`` mask predicted for ``box`` into an image of ``shape``.

    Mask sample ``i`` sits at image coordinate ``y1 + i (y2 - y1) / (m - 1)``
    (RoIAlign's box-edge-to-box-edge sampling), so pixel ``j`` (centre
    ``j + 0.5``) reads the mask bilinearly at ``(j + 0.5 - y1) (m - 1) / (y2 - y1)``.

    Returns
    -------
    tuple
        ``(y0, x0, crop)`` with ``crop`` a bool array, possibly empty.
    """
    h, w = shape
    y1, x1, y2, x2 = (float(v) for v in box)
    y0, x0 = max(int(np.floor(y1)), 0), max(int(np.floor(x1)), 0)
    ye, xe = min(int(np.ceil(y2)), h), min(int(np.ceil(x2)), w)
    if ye <= y0 or xe <= x0:
        return y0, x0, np.zeros((0, 0), bool)
    m = mask.shape[0] - 1
    ay, ax = max(y2 - y1, 1e-3) / m, max(x2 - x1, 1e-3) / m
    # dst index (col, row) = a * src + (edge - 0.5 - origin)
    warp = np.array([[ax, 0.0, x1 - 0.5 - x0], [0.0, ay, y1 - 0.5 - y0]], np.float64)
    soft = cv2.warpAffine(np.asarray(mask, np.float32), warp, (xe - x0, ye - y0), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return y0, x0, soft >= threshold


def mask_iou_crops(a, b) -> float:
    """IoU of two ``(y0, x0, crop)`` masks."""
    (ay, ax, am), (by, bx, bm) = a, b
    na, nb = int(am.sum()), int(bm.sum())
    y0, x0 = max(ay, by), max(ax, bx)
    y1, x1 = min(ay + am.shape[0], by + bm.shape[0]), min(ax + am.shape[1], bx + bm.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    inter = int((am[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & bm[y0 - by:y1 - by, x0 - bx:x1 - bx]).sum())
    return inter / max(na + nb - inter, 1)


def suppress_duplicates(boxes: np.ndarray, scores: np.ndarray, crops: list, groups: np.ndarray,
                        iou: float = 0.5) -> np.ndarray:
    """Indices kept (highest score first) after removing a detection whose mask overlaps a
    higher-scoring one *from another group* (window) with IoU >= ``iou``.

    >>> sq = lambda y, x: (y, x, np.ones((4, 4), bool))
    >>> b = np.array([[0, 0, 4, 4], [0, 1, 4, 5], [0, 1, 4, 5]], np.float32)
    >>> suppress_duplicates(b, np.array([0.9, 0.8, 0.7]), [sq(0, 0), sq(0, 1), sq(0, 1)], np.array([0, 1, 0])).tolist()
    [0, 2]
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return order
    b = np.asarray(boxes, np.float32)
    y1 = np.maximum(b[:, None, 0], b[None, :, 0])
    x1 = np.maximum(b[:, None, 1], b[None, :, 1])
    y2 = np.minimum(b[:, None, 2], b[None, :, 2])
    x2 = np.minimum(b[:, None, 3], b[None, :, 3])
    touching = (y2 > y1) & (x2 > x1) & (groups[:, None] != groups[None, :])
    rank = np.empty(len(b), np.int64)
    rank[order] = np.arange(len(b))
    removed = np.zeros(len(b), bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        for j in np.flatnonzero(touching[i] & ~removed & (rank > rank[i])):
            if mask_iou_crops(crops[i], crops[j]) >= iou:
                removed[j] = True
    return np.asarray(keep, np.int64)


def crops_to_dense(crops: list, shape: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` bool masks from ``(y0, x0, crop)`` crops."""
    out = np.zeros((len(crops), *shape), bool)
    for k, (y0, x0, c) in enumerate(crops):
        out[k, y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c
    return out
