"""Crop windows around a prompt: image <-> network coordinates, crop and paste back.

Coordinates: image pixel ``(r, c)`` has its centre at ``(r, c)`` and covers
``[r - 0.5, r + 0.5)``. A :class:`Window` is a square of ``side`` image pixels
centred at ``(center_r, center_c)`` (continuous, may reach outside the image),
sampled onto an ``size x size`` network grid. Network pixel ``(i, j)`` has its
centre at image coordinate ``(top + (i + 0.5) * scale, ...)`` where
``top = center_r - side / 2`` and ``scale = side / size`` (image pixels per
network pixel); the window covers the image pixels whose centres lie in
``[top, top + side)``. The same affine map is used for cropping (``cv2.warpAffine``
with ``BORDER_REPLICATE``: a window reaching outside the image sees the edge
pixels repeated), for click positions, and for pasting a probability map back,
so the three always agree, for non-square images and windows cut by the image
border alike.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

__all__ = ["Window", "window_for_prompt", "crop", "paste", "mask_bbox"]


@dataclasses.dataclass(frozen=True)
class Window:
    """A square window of ``side`` image pixels centred at ``(center_r, center_c)``, sampled at ``size``."""

    center_r: float
    center_c: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        """Image pixels per network pixel."""
        return self.side / self.size

    @property
    def origin(self) -> tuple[float, float]:
        """Image coordinate of network pixel ``(0, 0)``'s centre."""
        s = self.scale
        return (self.center_r - self.side / 2 + 0.5 * s, self.center_c - self.side / 2 + 0.5 * s)

    def to_net(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates -> continuous network coordinates (inverse of :meth:`to_image`)."""
        r0, c0 = self.origin
        return (np.asarray(rows, np.float64) - r0) / self.scale, (np.asarray(cols, np.float64) - c0) / self.scale

    def to_image(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        """Network coordinates -> image coordinates."""
        r0, c0 = self.origin
        return r0 + np.asarray(i, np.float64) * self.scale, c0 + np.asarray(j, np.float64) * self.scale

    def image_bounds(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """Integer ``(r0, c0, r1, c1)`` (end exclusive) of the image pixels whose centres lie in the window."""
        h, w = shape
        top, left = self.center_r - self.side / 2, self.center_c - self.side / 2
        r0, c0 = max(0, int(np.ceil(top))), max(0, int(np.ceil(left)))
        r1, c1 = min(h, int(np.ceil(top + self.side))), min(w, int(np.ceil(left + self.side)))
        return r0, c0, max(r0, r1), max(c0, c1)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(r0, c0, r1, c1)`` inclusive bounding box of a boolean mask, None when empty.

    >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
    >>> mask_bbox(m)
    (1, 2, 2, 4)
    """
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def window_for_prompt(
    shape: tuple[int, int],
    points: Sequence[tuple[float, float]],
    *,
    box: tuple[float, float, float, float] | None = None,
    previous: np.ndarray | None = None,
    size: int = 128,
    min_side: float = 64.0,
    margin: float = 0.4,
) -> Window:
    """The window that frames a prompt: clicks, a box and the previous mask, with a context margin.

    The extent is the bounding box of ``points`` (``(row, col)``), ``box``
    (``(row0, col0, row1, col1)``, inclusive) and the non-empty ``previous``
    mask; the side is its longer edge plus ``margin`` of it on each side, and
    at least ``min_side`` (a single click gets a ``min_side`` window), at most
    twice the image's longer edge.

    >>> w = window_for_prompt((100, 200), [(10, 20)], size=64, min_side=32)
    >>> (w.center_r, w.center_c, w.side)
    (10.0, 20.0, 32.0)
    >>> window_for_prompt((100, 200), [], box=(10, 10, 29, 49), size=64).side  # 40 px wide box: 40 * 1.8
    72.0
    """
    rs, cs = [float(p[0]) for p in points], [float(p[1]) for p in points]
    if box is not None:
        rs += [float(box[0]), float(box[2])]
        cs += [float(box[1]), float(box[3])]
    if previous is not None:
        bb = mask_bbox(previous)
        if bb is not None:
            rs += [bb[0], bb[2]]
            cs += [bb[1], bb[3]]
    if not rs:
        raise ValueError("A window needs at least one click, a box or a non-empty previous mask.")
    r0, r1, c0, c1 = min(rs), max(rs), min(cs), max(cs)
    extent = max(r1 - r0, c1 - c0) + 1.0
    side = float(np.clip(extent * (1.0 + 2.0 * margin), min_side, 2.0 * max(shape)))
    return Window((r0 + r1) / 2.0, (c0 + c1) / 2.0, side, int(size))


def _affine(window: Window) -> np.ndarray:
    """2x3 map from network (x=j, y=i) to image (x=c, y=r) coordinates."""
    r0, c0 = window.origin
    s = window.scale
    return np.array([[s, 0.0, c0], [0.0, s, r0]], np.float64)


def crop(image: np.ndarray, window: Window, *, nearest: bool = False) -> np.ndarray:
    """Sample ``image`` (``H,W``) on the window's ``size x size`` grid (float32, edge pixels repeated outside).

    Downsampling windows (``scale > 1.5``) are low-pass filtered first so that
    thin structures do not alias away.
    """
    img = np.asarray(image, np.float32)
    if not nearest and window.scale > 1.5:
        img = cv2.GaussianBlur(img, (0, 0), 0.4 * window.scale)
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(img, _affine(window), (window.size, window.size), flags=flags,
                          borderMode=cv2.BORDER_REPLICATE)


def paste(values: np.ndarray, window: Window, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resample a ``size x size`` network map back onto the image pixels the window covers.

    Returns the resampled block (float32) and its ``(r0, c0, r1, c1)`` image
    bounds (end exclusive); pixels outside those bounds are not covered.
    """
    r0, c0, r1, c1 = window.image_bounds(shape)
    if r1 <= r0 or c1 <= c0:
        return np.zeros((0, 0), np.float32), (r0, c0, r1, c1)
    o_r, o_c = window.origin
    s = window.scale
    # image pixel (r0 + y, c0 + x) -> network (i, j) = ((r0 + y - o_r) / s, (c0 + x - o_c) / s)
    m = np.array([[1.0 / s, 0.0, (c0 - o_c) / s], [0.0, 1.0 / s, (r0 - o_r) / s]], np.float64)
    block = cv2.warpAffine(np.asarray(values, np.float32), m, (c1 - c0, r1 - r0),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return block, (r0, c0, r1, c1)
