"""Network input for a click prompt: normalised image crop, click maps, previous mask, box.

Channels of the ``size x size x 6`` input (float32):

0. the crop linearly mapped from its own ``(low, high)`` percentiles to ``[0, 1]`` (clipped);
1. the crop's rank transform (histogram equalisation) in ``[0, 1]``: invariant to any
   monotone intensity change, so CT HU, 16-bit microscopy and MR look alike;
2. positive clicks: disks of ``click_radius`` network pixels;
3. negative clicks: the same;
4. the previous mask resampled into the window (0 when there is none);
5. the box, filled (0 when there is none).

Normalising per crop (not per image) adapts the contrast to the object's
neighbourhood whatever the modality or the stored offset (HU, HU+1024, raw counts).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .geometry import Window, crop

__all__ = ["CHANNELS", "normalise_crop", "click_maps", "encode"]

CHANNELS = 6


def normalise_crop(values: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Two ``H,W`` channels: percentile-linear and rank-equalised, both in ``[0, 1]`` (``H,W,2`` float32).

    A constant crop gives zeros in both.

    >>> x = np.array([[0.0, 10.0], [20.0, 1000.0]])
    >>> np.round(normalise_crop(x, (0, 100))[..., 1].astype(float), 3).tolist()
    [[0.0, 0.333], [0.667, 1.0]]
    """
    v = np.asarray(values, np.float32)
    lo, hi = np.percentile(v, percentiles)
    out = np.zeros(v.shape + (2,), np.float32)
    if hi <= lo:
        return out
    out[..., 0] = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    flat = v.ravel()
    # rank of each value among the sorted values; ties share the lowest rank
    srt = np.sort(flat)
    ranks = np.searchsorted(srt, flat, side="left").astype(np.float32)
    out[..., 1] = (ranks / max(flat.size - 1, 1)).reshape(v.shape)
    return out


def click_maps(points_net: Sequence[tuple[float, float, bool]], size: int, radius: float) -> np.ndarray:
    """``size,size,2`` float32 disks (positive, negative) at network coordinates ``(i, j, positive)``.

    >>> m = click_maps([(2, 2, True), (0, 4, False)], 5, 1.0)
    >>> m[..., 0].astype(int).tolist()[1:4], int(m[0, 4, 1])
    ([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], 1)
    """
    out = np.zeros((size, size, 2), np.float32)
    if not len(points_net):
        return out
    ii, jj = np.mgrid[0:size, 0:size].astype(np.float32)
    r2 = float(radius) ** 2
    for i, j, pos in points_net:
        if -radius <= i < size + radius and -radius <= j < size + radius:
            disk = (ii - i) ** 2 + (jj - j) ** 2 <= r2
            out[..., 0 if pos else 1][disk] = 1.0
    return out


def encode(
    image: np.ndarray,
    window: Window,
    clicks: Sequence[tuple[float, float, bool]],
    *,
    box: tuple[float, float, float, float] | None = None,
    previous: np.ndarray | None = None,
    click_radius: float = 5.0,
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """The ``size,size,6`` network input for a prompt in image coordinates (see the module docstring)."""
    n = window.size
    x = np.zeros((n, n, CHANNELS), np.float32)
    x[..., 0:2] = normalise_crop(crop(image, window), percentiles)
    if clicks:
        ii, jj = window.to_net([c[0] for c in clicks], [c[1] for c in clicks])
        x[..., 2:4] = click_maps([(i, j, bool(c[2])) for i, j, c in zip(ii, jj, clicks)], n, click_radius)
    if previous is not None and previous.any():
        x[..., 4] = crop(previous.astype(np.float32), window) >= 0.5
    if box is not None:
        (i0, i1), (j0, j1) = window.to_net([box[0] - 0.5, box[2] + 0.5], [box[1] - 0.5, box[3] + 0.5])
        lo_i, hi_i = int(np.clip(np.ceil(i0 - 0.5), 0, n)), int(np.clip(np.ceil(i1 - 0.5), 0, n))
        lo_j, hi_j = int(np.clip(np.ceil(j0 - 0.5), 0, n)), int(np.clip(np.ceil(j1 - 0.5), 0, n))
        x[lo_i:hi_i, lo_j:hi_j, 5] = 1.0
    return x


def disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disk of ``radius`` pixels (pixel centres) in an ``H,W`` array."""
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (int(round(center[1])), int(round(center[0]))), int(round(radius)), 1, -1)
    return m.astype(bool)
