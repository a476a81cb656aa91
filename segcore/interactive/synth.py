"""Seeded scenes of varied objects for training the click network (class-agnostic).

Each scene is a function of its seed only: a textured background (smooth noise at
several scales, a gradient, sometimes a large "organ" region), then objects of
varied shape (star-shaped blobs, ellipses, lobulated unions of disks, smooth random
polygons, thick curves), size (3-45 px radius), texture (flat, noisy, bright or dark
centre, enhancing rim), contrast (from barely above the noise to strong) and
polarity, some touching one another (nuclei-like clusters) or sharing the
background's intensity on one side; then blur, noise and a random monotone
intensity mapping to a random stored range (HU-like, 8/16-bit counts, unit range).

The scene generator of :mod:`segcore.phantom` is not changed: the committed sample
set regenerates byte-for-byte.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..phantom import _blob  # the star-shaped blob, five radial harmonics

__all__ = ["make_scene"]


def _smooth_noise(shape, rng, sigma):
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), float(sigma))
    return n / (n.std() + 1e-6)


def _shape(shape, center, radius, rng) -> np.ndarray:
    kind = rng.choice(["star", "ellipse", "lobes", "polygon", "curve"], p=[0.35, 0.2, 0.2, 0.15, 0.1])
    if kind == "star":
        return _blob(shape, center, radius, rng, irregularity=rng.uniform(0.05, 0.45), aspect=rng.uniform(1.0, 1.8),
                     angle=rng.uniform(0, np.pi))
    if kind == "ellipse":
        return _blob(shape, center, radius, rng, irregularity=0.0, aspect=rng.uniform(1.0, 2.5),
                     angle=rng.uniform(0, np.pi))
    m = np.zeros(shape, np.uint8)
    cy, cx = center
    if kind == "lobes":
        for _ in range(int(rng.integers(2, 5))):
            a = rng.uniform(0, 2 * np.pi)
            d = radius * rng.uniform(0.0, 0.6)
            cv2.circle(m, (int(cx + d * np.cos(a)), int(cy + d * np.sin(a))),
                       max(2, int(radius * rng.uniform(0.45, 0.8))), 1, -1)
    elif kind == "polygon":
        n = int(rng.integers(5, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = radius * rng.uniform(0.5, 1.2, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
        m = (cv2.GaussianBlur(m.astype(np.float32), (0, 0), max(1.0, radius * 0.15)) > 0.5).astype(np.uint8)
    else:  # thick smooth curve (vessel / duct-like)
        t = np.linspace(0, 1, 30)
        a0 = rng.uniform(0, 2 * np.pi)
        bend = rng.uniform(-1.5, 1.5)
        length = radius * rng.uniform(2.0, 4.0)
        ang = a0 + bend * t
        pts = np.stack([cx + np.cumsum(np.cos(ang)) * length / 30 - length / 2 * np.cos(a0),
                        cy + np.cumsum(np.sin(ang)) * length / 30 - length / 2 * np.sin(a0)], 1)
        cv2.polylines(m, [pts.astype(np.int32)], False, 1, max(2, int(radius * rng.uniform(0.3, 0.6))))
    return m.astype(bool)


def _texture(mask, rng):
    """Intensity pattern inside an object, zero mean, unit-ish amplitude."""
    kind = rng.choice(["flat", "noisy", "centre", "rim"], p=[0.35, 0.3, 0.2, 0.15])
    if kind == "flat" or mask.sum() < 9:
        return np.zeros(mask.shape, np.float32)
    if kind == "noisy":
        return _smooth_noise(mask.shape, rng, rng.uniform(1, 4)) * rng.uniform(0.15, 0.5)
    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    d = d / max(float(d.max()), 1.0)
    if kind == "centre":
        return (d - 0.5) * rng.uniform(-0.8, 0.8)
    return np.where(d < 0.3, rng.uniform(0.3, 0.8), -rng.uniform(0.0, 0.4)).astype(np.float32)


def make_scene(seed: int, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (float32 ``H,W``, random stored range) and object ids (int32 ``H,W``, 0 background).

    Examples
    --------
    >>> img, ids = make_scene(0, size=64)
    >>> img.shape, ids.shape, int(ids.max()) >= 1
    ((64, 64), (64, 64), True)
    """
    rng = np.random.default_rng(seed)
    shape = (size, size)
    noise_sd = 1.0
    img = _smooth_noise(shape, rng, rng.uniform(2, 12)) * rng.uniform(0.0, 1.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img += (rng.uniform(-2, 2) * yy + rng.uniform(-2, 2) * xx).astype(np.float32)
    ids = np.zeros(shape, np.int32)
    k = 0
    if rng.random() < 0.5:  # a large region that holds the objects (an organ, a cell cluster's background)
        region = _blob(shape, (size / 2 + rng.uniform(-20, 20), size / 2 + rng.uniform(-20, 20)),
                       size * rng.uniform(0.3, 0.45), rng, irregularity=0.25, aspect=rng.uniform(1.0, 1.4),
                       angle=rng.uniform(0, np.pi))
        img[region] += rng.uniform(-6, 6)
        if rng.random() < 0.3:
            k += 1
            ids[region] = k
    n = int(rng.integers(1, 9))
    cluster = rng.random() < 0.35
    base_level = rng.uniform(1.0, 8.0) * rng.choice([-1, 1])
    centres: list[tuple[float, float, float]] = []
    for _ in range(n * 3):
        if len(centres) == n:
            break
        radius = float(np.exp(rng.uniform(np.log(3), np.log(45)))) if not cluster else rng.uniform(4, 14)
        if cluster and centres:
            cy, cx, cr = centres[rng.integers(len(centres))]
            a = rng.uniform(0, 2 * np.pi)
            d = (cr + radius) * rng.uniform(0.8, 1.1)
            cy, cx = cy + d * np.sin(a), cx + d * np.cos(a)
        else:
            cy, cx = rng.uniform(0, size, 2)
        obj = _shape(shape, (cy, cx), radius, rng)
        if obj.sum() < 10:
            continue
        level = base_level * rng.uniform(0.7, 1.3) if cluster else rng.uniform(1.0, 8.0) * rng.choice([-1, 1])
        keep_background = float(rng.random() < 0.5)  # object drawn over the background pattern or replacing it
        img[obj] = img[obj] * keep_background + level + _texture(obj, rng)[obj] * abs(level)
        k += 1
        ids[obj] = k
        centres.append((cy, cx, radius))
    # keep only visible ids, renumbered
    out = np.zeros_like(ids)
    j = 0
    for i in range(1, k + 1):
        m = ids == i
        if m.sum() >= 10:
            j += 1
            out[m] = j
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.6))
    img += rng.standard_normal(shape).astype(np.float32) * noise_sd * rng.uniform(0.3, 1.5)
    # random monotone mapping to a stored range
    lo, hi = float(img.min()), float(img.max())
    u = (img - lo) / max(hi - lo, 1e-6)
    u = u ** rng.uniform(0.6, 1.6)
    span = float(np.exp(rng.uniform(np.log(1.0), np.log(4000.0))))
    offset = rng.choice([0.0, -1024.0, rng.uniform(-500, 2000)])
    return (u * span + offset).astype(np.float32), out
