"""Intensity normalisation and rescaling for the instance models.

Images are ``H,W`` (or ``H,W,C``, averaged over channels) of any numeric dtype
holding raw values (8- or 16-bit microscopy, CT numbers, floats). Outputs are
new float32 ``H,W`` arrays; inputs are never modified. A constant image
normalises to zeros.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["NORMALISATIONS", "normalise_intensity", "rescale", "to_gray"]

NORMALISATIONS = ("percentile", "none")
_MAX_SAMPLES = 1 << 22  # percentiles of larger images are taken on a regular subsample


def to_gray(image: np.ndarray) -> np.ndarray:
    """float32 ``H,W`` from ``H,W`` or ``H,W,C`` (C in 1..4; an alpha channel is dropped).

    >>> to_gray(np.ones((2, 3, 3), np.uint8)).shape
    (2, 3)
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4):
        keep = {1: 1, 2: 1, 3: 3, 4: 3}[a.shape[-1]]
        a = a[..., :keep].astype(np.float32).mean(-1)
    if a.ndim != 2 or min(a.shape) == 0:
        raise ValueError(f"Expected a non-empty H,W or H,W,C image (C in 1..4). Got shape {np.shape(image)}.")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"Expected a numeric image. Got dtype {a.dtype}.")
    return a.astype(np.float32, copy=True)


def normalise_intensity(image: np.ndarray, mode: str = "percentile", percentiles=(1.0, 99.8),
                        intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map raw intensities so that background is near 0 and bright objects near 1.

    Parameters
    ----------
    image : np.ndarray
        ``H,W`` or ``H,W,C``, any numeric dtype.
    mode : str
        ``"percentile"``: ``(x - p_low) / (p_high - p_low)`` with the percentiles
        of this image (the whole image, so tiles of it share one mapping);
        ``"none"``: values are used as they are (already in [0, 1]).
    percentiles : tuple of float
        ``(low, high)`` in [0, 100] for ``"percentile"``.
    intensity_range : tuple of float, optional
        ``(low, high)`` raw values to map to 0 and 1 instead of the percentiles.

    Returns
    -------
    np.ndarray
        float32 ``H,W``; NaNs become 0.

    Examples
    --------
    >>> x = np.array([[100, 200], [300, 400]], np.uint16)
    >>> normalise_intensity(x, intensity_range=(100, 300)).tolist()
    [[0.0, 0.5], [1.0, 1.5]]
    >>> normalise_intensity(np.full((2, 2), 7.0)).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"Unknown normalisation '{mode}': expected one of {NORMALISATIONS}.")
    x = to_gray(image)
    finite = np.isfinite(x)
    if intensity_range is not None:
        lo, hi = (float(v) for v in intensity_range)
    elif mode == "none":
        return np.where(finite, x, 0.0).astype(np.float32)
    else:
        lo_p, hi_p = (float(v) for v in percentiles)
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise ValueError(f"Percentiles must satisfy 0 <= low < high <= 100. Got {percentiles}.")
        vals = x[finite]
        if vals.size == 0:
            return np.zeros_like(x)
        if vals.size > _MAX_SAMPLES:
            vals = vals[:: vals.size // _MAX_SAMPLES + 1]
        lo, hi = (float(v) for v in np.percentile(vals, (lo_p, hi_p)))
    if not hi > lo:
        if intensity_range is not None:
            raise ValueError(f"intensity_range must be (low, high) with high > low. Got {intensity_range}.")
        return np.zeros_like(x)
    out = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.where(finite, out, 0.0).astype(np.float32)


def rescale(image: np.ndarray, scale: float, *, labels: bool = False) -> np.ndarray:
    """``image`` resized by ``scale`` (output side ``round(side * scale)``, at least 1).

    Area averaging when shrinking, bilinear when enlarging; nearest neighbour
    for label maps (``labels=True``).

    >>> rescale(np.zeros((10, 6), np.float32), 2.0).shape
    (20, 12)
    """
    if not scale > 0:
        raise ValueError(f"Scale must be positive. Got {scale}.")
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image.copy()
    if labels:
        src = np.asarray(image)
        dt = src.dtype
        work = src.astype(np.int32) if dt not in (np.uint8, np.uint16, np.int16, np.int32, np.float32) else src
        out = cv2.resize(work, size, interpolation=cv2.INTER_NEAREST)
        return out.astype(dt)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(image, np.float32), size, interpolation=interp)
