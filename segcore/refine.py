"""Refinement of label maps: OpenCV morphology, connected components, dense CRF.

All functions take NumPy arrays and return new arrays; inputs are never mutated.
Label maps are ``H,W`` integer arrays; probabilities are ``H,W,K`` float32.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "morphology",
    "fill_holes",
    "remove_small_components",
    "keep_largest_component",
    "label_components",
    "component_table",
    "dense_crf",
    "RefineConfig",
    "Refiner",
    "RefineResult",
]

_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}
_OPS = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE}


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Expected a 2-D label map (H,W). Got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"Expected an integer label map. Got dtype {labels.dtype}.")
    return labels


def _kernel(size: int, shape: str) -> np.ndarray:
    if shape not in _SHAPES:
        raise ValueError(f"Kernel shape must be one of {sorted(_SHAPES)}. Got '{shape}'.")
    if size < 1:
        raise ValueError(f"Kernel size must be >= 1. Got {size}.")
    return cv2.getStructuringElement(_SHAPES[shape], (int(size), int(size)))


def morphology(labels: np.ndarray, op: str, size: int = 3, shape: str = "ellipse",
               classes: Sequence[int] | None = None) -> np.ndarray:
    """Binary morphology applied per foreground class.

    Parameters
    ----------
    op : {"erode", "dilate", "open", "close"}
    size : int
        Kernel diameter in pixels.
    shape : {"ellipse", "rect", "cross"}
    classes : sequence of int, optional
        Classes to process (default: all non-zero labels present). Classes are
        processed in increasing order; a pixel claimed by dilation/closing of a
        class is only taken from the background.

    Examples
    --------
    >>> m = np.zeros((5, 5), np.uint8); m[2, 2] = 1
    >>> int(morphology(m, "dilate", 3, "rect").sum())
    9
    """
    labels = _check_labels(labels)
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}. Got '{op}'.")
    k = _kernel(size, shape)
    out = labels.copy()
    cls = sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else list(classes)
    for c in cls:
        # zero padding wider than the kernel: the outside is background for every
        # op, and closing stays extensive at the image border
        p = int(size)
        binary = cv2.copyMakeBorder((labels == c).astype(np.uint8), p, p, p, p, cv2.BORDER_CONSTANT, value=0)
        res = cv2.morphologyEx(binary, _OPS[op], k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        res = res[p:-p, p:-p].astype(bool)
        removed = (labels == c) & ~res
        out[removed & (out == c)] = 0
        added = res & (labels == 0) & (out == 0)
        out[added] = c
    return out


def fill_holes(labels: np.ndarray, classes: Sequence[int] | None = None, max_area: int | None = None) -> np.ndarray:
    """Fill background holes enclosed by a class (optionally only holes up to ``max_area`` px).

    A hole is a background component (4-connected) not touching the image
    border whose surrounding pixels all belong to that class.
    """
    labels = _check_labels(labels)
    out = labels.copy()
    cls = sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else list(classes)
    for c in cls:
        other = (out != c).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(other, connectivity=4)
        h, w = labels.shape
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if x == 0 or y == 0 or x + bw == w or y + bh == h:
                continue
            if max_area is not None and area > max_area:
                continue
            region = comp == i
            if np.all(out[region] == 0):
                out[region] = c
    return out


def label_components(binary: np.ndarray, connectivity: int = 8) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``cv2.connectedComponentsWithStats`` on a binary mask: (n incl. background, labels, stats, centroids)."""
    if connectivity not in (4, 8):
        raise ValueError(f"Connectivity for 2D images should be in [4, 8]. Got {connectivity}.")
    return cv2.connectedComponentsWithStats(np.asarray(binary).astype(np.uint8), connectivity=connectivity)


def remove_small_components(labels: np.ndarray, min_size: float, *, spacing: Sequence[float] | None = None,
                            connectivity: int = 8, classes: Sequence[int] | None = None) -> np.ndarray:
    """Set components smaller than ``min_size`` to background.

    ``min_size`` is in pixels, or in mm² when ``spacing`` (row, col in mm) is given.
    """
    labels = _check_labels(labels)
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0. Got {min_size}.")
    px_area = 1.0 if spacing is None else float(spacing[0]) * float(spacing[1])
    out = labels.copy()
    cls = sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else list(classes)
    for c in cls:
        n, comp, stats, _ = label_components(labels == c, connectivity)
        small = np.nonzero(stats[:, cv2.CC_STAT_AREA] * px_area < min_size)[0]
        small = small[small != 0]
        if small.size:
            out[np.isin(comp, small)] = 0
    return out


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None, connectivity: int = 8) -> np.ndarray:
    """Keep only the largest connected component of each class."""
    labels = _check_labels(labels)
    out = labels.copy()
    cls = sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else list(classes)
    for c in cls:
        n, comp, stats, _ = label_components(labels == c, connectivity)
        if n <= 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out[(comp != largest) & (comp != 0)] = 0
    return out


def component_table(labels: np.ndarray, class_names: Sequence[str] | None = None,
                    spacing: Sequence[float] | None = None, connectivity: int = 8) -> list[dict]:
    """One row per connected component of each foreground class.

    Keys: class, class_name, component, area_px, area_mm2 (None without
    spacing), bbox (x, y, w, h), centroid (x, y).
    """
    labels = _check_labels(labels)
    px_area = None if spacing is None else float(spacing[0]) * float(spacing[1])
    rows = []
    for c in sorted(int(v) for v in np.unique(labels) if v != 0):
        n, _, stats, cents = label_components(labels == c, connectivity)
        for i in range(1, n):
            x, y, w, h, a = (int(v) for v in stats[i])
            rows.append({
                "class": c,
                "class_name": class_names[c] if class_names and c < len(class_names) else str(c),
                "component": i,
                "area_px": a,
                "area_mm2": None if px_area is None else round(a * px_area, 3),
                "bbox": (x, y, w, h),
                "centroid": (round(float(cents[i][0]), 2), round(float(cents[i][1]), 2)),
            })
    return rows


# ---------------------------------------------------------------- dense CRF

class _BilateralGrid:
    """Splat/blur/slice on a regular grid over (y/sxy, x/sxy, features/srgb).

    Cells are half a standard deviation wide; the grid is blurred with a
    Gaussian of two cells (= one standard deviation), which approximates the
    Gaussian kernel ``exp(-|f_i - f_j|^2 / 2)`` on the scaled features.
    Multilinear splatting and slicing over ``2**d`` corners.
    """

    def __init__(self, features: np.ndarray, cells_per_sigma: float = 2.0):
        n, d = features.shape
        f = features * cells_per_sigma
        f = f - f.min(0) + 2.0  # pad two cells on the low side
        base = np.floor(f).astype(np.int64)
        frac = (f - base).astype(np.float32)
        dims = base.max(0) + 4  # and on the high side
        self.dims = tuple(int(v) for v in dims)
        self.size = int(np.prod(dims))
        strides = np.cumprod([1] + list(dims[::-1][:-1]))[::-1].astype(np.int64)
        self.sigma_cells = cells_per_sigma
        idx, wts = [], []
        for corner in range(2**d):
            bits = [(corner >> k) & 1 for k in range(d)]
            off = (base + np.asarray(bits)) @ strides
            w = np.ones(n, np.float32)
            for k, b in enumerate(bits):
                w *= frac[:, k] if b else (1.0 - frac[:, k])
            idx.append(off)
            wts.append(w)
        self.idx = np.concatenate(idx)
        self.w = np.concatenate(wts)
        self.n = n
        self.d = d

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Gaussian-filter one channel (any shape with ``N`` elements) in feature space."""
        from scipy.ndimage import gaussian_filter

        v = np.asarray(values, np.float32).ravel()
        grid = np.bincount(self.idx, weights=self.w * np.tile(v, 2**self.d), minlength=self.size)
        grid = gaussian_filter(grid.reshape(self.dims).astype(np.float32), self.sigma_cells, truncate=2.0,
                               mode="constant")
        sliced = (grid.ravel()[self.idx] * self.w).reshape(2**self.d, self.n).sum(0)
        return sliced.reshape(np.shape(values)).astype(np.float32)


def _gauss_matrix(n: int, sigma: float, truncate: float = 2.5) -> np.ndarray:
    i = np.arange(n, dtype=np.float32)
    d = i[:, None] - i[None, :]
    m = np.exp(-0.5 * (d / sigma) ** 2)
    m[np.abs(d) > truncate * sigma] = 0
    k = np.exp(-0.5 * (np.arange(-int(truncate * sigma), int(truncate * sigma) + 1) / sigma) ** 2)
    return (m / k.sum()).astype(np.float32)


class _GrayGrid:
    """Bilateral grid for a grayscale image: splat by ``np.bincount``, slice by ``cv2.remap``.

    Space is sampled every ``sxy / cells_per_sigma`` pixels (nearest-cell
    splat), intensity every ``srgb / cells_per_sigma`` (linear splat). The grid
    is blurred by a Gaussian of ``cells_per_sigma`` cells (one standard
    deviation) and sliced back trilinearly: the 2-D bilinear part is done by
    ``cv2.remap`` on the intensity levels laid side by side.
    """

    def __init__(self, image: np.ndarray, sxy: float, srange: float, cells_per_sigma: float = 2.0,
                 spatial_cells_per_sigma: float = 2.0):
        h, w = image.shape
        s = max(sxy / spatial_cells_per_sigma, 1.0)
        pad = 2
        z = image.astype(np.float32).ravel() / srange * cells_per_sigma
        z = z - z.min() + pad
        levels = int(np.ceil(z.max())) + pad + 1
        pad_s = int(np.ceil(2.5 * sxy / s))  # room for the spatial blur's support
        gh, gw = int(np.ceil((h - 1) / s)) + 2 * pad_s + 1, int(np.ceil((w - 1) / s)) + 2 * pad_s + 1
        ys = (np.arange(h, dtype=np.float32) / s + pad_s)
        xs = (np.arange(w, dtype=np.float32) / s + pad_s)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        l0 = np.floor(z).astype(np.int64)
        f = (z - l0).astype(np.float32)
        cell = np.rint(gy).astype(np.int64).ravel() * gw + np.rint(gx).astype(np.int64).ravel()
        self.idx = np.concatenate([l0 * gh * gw + cell, (l0 + 1) * gh * gw + cell])
        self.w0 = (1.0 - f).astype(np.float64)
        self.w1 = f.astype(np.float64)
        self._buf = np.empty(2 * h * w, np.float64)
        self.f = f.reshape(h, w)
        self.map_y = gy.astype(np.float32)
        self.map_x = (l0.reshape(h, w) * gw + gx).astype(np.float32)
        self.shape = (levels, gh, gw)
        self.size = levels * gh * gw
        self.hw = (h, w)
        # separable Gaussian blur of the small grid as three matrix products
        self.blur = [_gauss_matrix(levels, cells_per_sigma), _gauss_matrix(gh, sxy / s), _gauss_matrix(gw, sxy / s)]

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Filter ``values`` (``H,W`` float32) with the bilateral kernel."""
        levels, gh, gw = self.shape
        v = values.ravel()
        n = v.size
        np.multiply(self.w0, v, out=self._buf[:n])
        np.multiply(self.w1, v, out=self._buf[n:])
        grid = np.bincount(self.idx, weights=self._buf, minlength=self.size)
        grid = grid.reshape(self.shape).astype(np.float32)
        bl, bh, bw = self.blur
        grid = np.einsum("ij,jkl->ikl", bl, grid)
        grid = np.einsum("kj,ijl->ikl", bh, grid)
        grid = grid @ bw.T
        tile = grid.transpose(1, 0, 2).reshape(gh, levels * gw)
        # channel 0: level l, channel 1: level l+1 at the same map position
        pair = np.zeros((gh, levels * gw, 2), np.float32)
        pair[..., 0] = tile
        pair[:, : (levels - 1) * gw, 1] = tile[:, gw:]
        s = cv2.remap(pair, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        s0, s1 = s[..., 0], s[..., 1]
        return s0 + self.f * (s1 - s0)


def _spatial_filter(q: np.ndarray, sxy: float) -> np.ndarray:
    return cv2.GaussianBlur(q, (0, 0), sigmaX=sxy, sigmaY=sxy, borderType=cv2.BORDER_CONSTANT)


def _softmax0(e: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``K,H,W`` (plane by plane, in place on ``e``).

    NumPy's reductions over a short leading axis are slow, so the max and the
    sum are accumulated plane by plane.
    """
    if e.shape[0] == 2:  # logistic form: one exp per pixel
        d = e[0] - e[1]
        np.clip(d, -80, 80, out=d)
        np.exp(d, out=d)
        d += 1.0
        np.reciprocal(d, out=e[1])
        np.subtract(1.0, e[1], out=e[0])
        return e
    m = e[0].copy()
    for c in range(1, e.shape[0]):
        np.maximum(m, e[c], out=m)
    e -= m
    np.exp(e, out=e)
    s = e[0].copy()
    for c in range(1, e.shape[0]):
        s += e[c]
    e /= s
    return e


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    iterations: int = 5,
    sxy_gaussian: float = 3,
    compat_gaussian: float = 3,
    sxy_bilateral: float = 80,
    srgb: float = 13,
    compat_bilateral: float = 10,
) -> np.ndarray:
    """Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011).

    Mean-field inference with a Potts compatibility, the unary being
    ``-log(probs)``. The appearance (bilateral) kernel over position and
    intensity is filtered on a bilateral grid (3-D for grayscale images, 5-D
    for colour), the smoothness kernel with a separable Gaussian, both with
    pydensecrf's symmetric normalisation. Intensity differences are measured
    as pydensecrf measures them on an 8-bit image: a grayscale image behaves as
    its 3-channel replica would (the distance is scaled by sqrt(3)).

    Parameters
    ----------
    image : np.ndarray
        ``H,W`` or ``H,W,3``, 8-bit range (0..255; window the scan first).
    probs : np.ndarray
        ``H,W,K`` softmax probabilities.
    iterations : int
        Mean-field iterations.
    sxy_gaussian, compat_gaussian : float
        Smoothness kernel width (px) and weight.
    sxy_bilateral, srgb, compat_bilateral : float
        Appearance kernel width (px), intensity scale and weight.

    Returns
    -------
    np.ndarray
        Refined probabilities ``H,W,K`` float32.
    """
    probs = np.asarray(probs, dtype=np.float32)
    img = np.asarray(image, dtype=np.float32)
    if probs.ndim != 3:
        raise ValueError(f"probs must be H,W,K. Got shape {probs.shape}.")
    h, w, k = probs.shape
    if img.shape[:2] != (h, w) or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must be H,W or H,W,3 matching probs {probs.shape[:2]}. Got shape {img.shape}.")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0. Got {iterations}.")
    for nm, v in (("sxy_gaussian", sxy_gaussian), ("sxy_bilateral", sxy_bilateral), ("srgb", srgb)):
        if v <= 0:
            raise ValueError(f"{nm} must be > 0. Got {v}.")
    if iterations == 0:
        return probs.copy()
    # channel-first planes: every per-class operation is on a contiguous H,W image
    unary = -np.log(np.clip(np.moveaxis(probs, -1, 0), 1e-8, 1.0))

    if img.ndim == 2:
        # a gray image seen as its RGB replica by pydensecrf: distances scale by sqrt(3)
        grid = _GrayGrid(img * np.sqrt(3.0), sxy_bilateral, srgb)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        feats = np.concatenate([np.stack([yy.ravel(), xx.ravel()], 1) / sxy_bilateral,
                                img.reshape(-1, 3) / srgb], 1).astype(np.float32)
        grid = _BilateralGrid(feats)
    ones = np.ones((h, w), np.float32)
    norm_b = 1.0 / np.sqrt(np.maximum(grid.filter(ones), 0) + 1e-20)
    norm_g = 1.0 / np.sqrt(_spatial_filter(ones, sxy_gaussian) + 1e-20)
    # filtering is linear and the q sum to 1 per pixel, so the last class's
    # message is filter(norm) minus the others': K-1 filterings per iteration
    full = compat_bilateral * norm_b * grid.filter(norm_b) + compat_gaussian * norm_g * _spatial_filter(norm_g, sxy_gaussian)

    q = _softmax0(-unary)
    for _ in range(iterations):
        energy = -unary
        rest = np.zeros((h, w), np.float32)
        for c in range(k - 1):
            msg = (compat_bilateral * norm_b * grid.filter(q[c] * norm_b)
                   + compat_gaussian * norm_g * _spatial_filter(q[c] * norm_g, sxy_gaussian))
            energy[c] += msg  # Potts: labels that neighbours agree on get lower energy
            rest += msg
        energy[k - 1] += full - rest
        q = _softmax0(energy)
    return np.ascontiguousarray(np.moveaxis(q, 0, -1)).astype(np.float32)


# ---------------------------------------------------------------- pipeline

STEP_NAMES = ("crf", "open", "close", "fill_holes", "remove_small", "keep_largest")


@dataclasses.dataclass
class RefineConfig:
    """Which steps run, in which order, with which parameters (the app's sliders edit this).

    The defaults were chosen on the validation split of the sample set with the
    default model (``bench/tune_refine.py``): DeepLab's CRF values (srgb=13,
    compat_bilateral=10) over-smooth small lesions there, so the appearance
    kernel is narrower and weaker; opening and hole filling did not help.
    """

    order: tuple[str, ...] = ("crf", "open", "close", "fill_holes", "remove_small", "keep_largest")
    enabled: dict = dataclasses.field(default_factory=lambda: {
        "crf": True, "open": False, "close": True, "fill_holes": False, "remove_small": True, "keep_largest": False})
    open_size: int = 3
    close_size: int = 5
    kernel_shape: str = "ellipse"
    min_size: float = 10.0
    min_size_in_mm2: bool = False
    keep_largest_classes: tuple[int, ...] = (1,)
    crf: dict = dataclasses.field(default_factory=lambda: {
        "iterations": 5, "sxy_gaussian": 3, "compat_gaussian": 3, "sxy_bilateral": 80, "srgb": 5,
        "compat_bilateral": 3})

    def __post_init__(self):
        unknown = [s for s in self.order if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"Unknown refinement steps {unknown}. Valid steps: {list(STEP_NAMES)}.")


@dataclasses.dataclass
class RefineResult:
    labels: np.ndarray
    probs: np.ndarray | None
    timings_ms: dict


class Refiner:
    """Chains the refinement steps of a :class:`RefineConfig` and times each.

    Examples
    --------
    >>> p = np.zeros((8, 8, 2), np.float32); p[..., 0] = 1; p[2:6, 2:6] = [0, 1]
    >>> r = Refiner(RefineConfig(order=("open",), enabled={"open": True})).run(np.zeros((8, 8)), p)
    >>> int(r.labels.sum())
    12
    """

    def __init__(self, config: RefineConfig | None = None):
        self.config = config or RefineConfig()

    def run(self, image: np.ndarray, probs: np.ndarray, spacing: Sequence[float] | None = None) -> RefineResult:
        """``image`` is the uint8 image the CRF compares (``H,W``/``H,W,3``; the pipeline passes the slice as the
        model normalises it, :func:`segcore.pipeline.model_view`), ``probs`` ``H,W,K``."""
        cfg = self.config
        timings: dict[str, float] = {}
        p = probs
        labels = np.asarray(probs).argmax(-1).astype(np.uint8)
        for step in cfg.order:
            if not cfg.enabled.get(step, False):
                continue
            t0 = time.perf_counter()
            if step == "crf":
                p = dense_crf(image, p, **cfg.crf)
                labels = p.argmax(-1).astype(np.uint8)
            elif step == "open":
                labels = morphology(labels, "open", cfg.open_size, cfg.kernel_shape)
            elif step == "close":
                labels = morphology(labels, "close", cfg.close_size, cfg.kernel_shape)
            elif step == "fill_holes":
                labels = fill_holes(labels)
            elif step == "remove_small":
                labels = remove_small_components(labels, cfg.min_size,
                                                 spacing=spacing if cfg.min_size_in_mm2 else None)
            elif step == "keep_largest":
                labels = keep_largest_component(labels, cfg.keep_largest_classes)
            timings[step] = round((time.perf_counter() - t0) * 1000, 2)
        return RefineResult(labels=labels, probs=p, timings_ms=timings)
