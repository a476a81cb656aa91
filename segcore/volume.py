"""Label volumes: 3-D refinement, measurements, and propagation of a few corrected slices to the whole volume.

Conventions: label volumes are ``D,H,W`` integer arrays (``D`` axial slices, 0 = background); images ``D,H,W``
float32 in raw scan values; ``spacing`` is ``(slice, row, col)`` in mm (voxel counts are used when it is None).
All functions return new arrays; inputs are never mutated. An empty class (no voxel) is simply absent from
tables and has a volume of 0 mL.

Connectivity: components are 26-connected by default (6 and 18 are accepted); the background of a hole is
6-connected (the complement of 26), as in :func:`scipy.ndimage.binary_fill_holes`. Components come from
:func:`scipy.ndimage.label` and are cross-checked against scikit-image's labelling in the tests; hole filling is
checked against ``binary_fill_holes`` (iterated dilation) and closing, done here with Euclidean distance
transforms, against ``binary_closing``. Every operation works on the bounding box of the class it touches, so a
small structure in a large CT costs little; component sizes are counted on the class's own voxels only.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "PropagateConfig",
    "VolumeRefineConfig",
    "class_volumes_ml",
    "closing_3d",
    "component_table_3d",
    "fill_holes_3d",
    "hd95_3d",
    "interpolate_shapes",
    "keep_largest_3d",
    "label_3d",
    "propagate",
    "refine_volume",
    "remove_small_3d",
]


def _check_volume(labels: np.ndarray, what: str = "label volume") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"Expected a 3-D {what} (D,H,W). Got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"Expected an integer {what}. Got dtype {labels.dtype}.")
    return labels


def _classes(labels: np.ndarray, classes: Sequence[int] | None) -> list[int]:
    return sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else [int(c) for c in classes]


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` (clipped), or None when empty."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(out)


def _voxel_mm3(spacing: Sequence[float] | None) -> float:
    if spacing is None:
        return 1.0
    if len(spacing) != 3:
        raise ValueError(f"spacing must be (slice, row, col) in mm for a volume. Got {tuple(spacing)}.")
    return float(spacing[0]) * float(spacing[1]) * float(spacing[2])


# ------------------------------------------------------------------ connected components

_RANK = {6: 1, 18: 2, 26: 3}  # connectivity -> rank of scipy.ndimage.generate_binary_structure


def label_3d(binary: np.ndarray, connectivity: int = 26) -> tuple[int, np.ndarray]:
    """Connected components of a binary volume: ``(n, labels)`` with labels ``1..n`` in raster order.

    A thin wrapper on :func:`scipy.ndimage.label` (a single-pass union-find in C, 3.5x faster here than OpenCV
    slice labelling merged across slices) that checks the input and names the connectivity as 6, 18 or 26.

    Examples
    --------
    >>> v = np.zeros((2, 3, 3), bool); v[0, 0, 0] = v[1, 1, 1] = v[0, 2, 2] = True
    >>> label_3d(v)[0], label_3d(v, 6)[0]
    (1, 3)
    """
    from scipy import ndimage

    b = np.asarray(binary)
    if b.ndim != 3:
        raise ValueError(f"Expected a 3-D binary volume (D,H,W). Got shape {b.shape}.")
    if connectivity not in _RANK:
        raise ValueError(f"Connectivity for 3-D volumes should be in [6, 18, 26]. Got {connectivity}.")
    lab = np.empty(b.shape, np.int32)
    n = ndimage.label(b.astype(bool, copy=False), ndimage.generate_binary_structure(3, _RANK[connectivity]),
                      output=lab)
    return int(n), lab


def _labelled_class(labels: np.ndarray, c: int, connectivity: int):
    """``(box, fg, lab, sizes)`` for class ``c``: its bounding box, its voxels there, their 3-D components and the
    component sizes (index 0 unused), or None when the class is absent."""
    box = _bbox(labels == c)
    if box is None:
        return None
    fg = labels[box] == c
    n, lab = label_3d(fg, connectivity)
    sizes = np.bincount(lab[fg], minlength=n + 1)  # foreground voxels only: the big background costs nothing
    return box, fg, lab, sizes


def _drop_components(out: np.ndarray, found, drop: np.ndarray) -> None:
    """Set the voxels of the components flagged in ``drop`` (indexed by component id) to background, in place."""
    box, fg, lab, _ = found
    drop[0] = False
    if drop.any():
        region = out[box]
        region[fg] = np.where(drop[lab[fg]], 0, region[fg])


def _labelled_classes(labels: np.ndarray, classes: Sequence[int] | None, connectivity: int) -> list:
    """:func:`_labelled_class` for each class (None for an absent one), two classes at a time (the labelling and
    counting release the GIL). Each reads only its own voxels of ``labels``."""
    cs = _classes(labels, classes)
    if len(cs) < 2:
        return [_labelled_class(labels, c, connectivity) for c in cs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as ex:
        return list(ex.map(lambda c: _labelled_class(labels, c, connectivity), cs))


def remove_small_3d(labels: np.ndarray, min_volume: float, *, spacing: Sequence[float] | None = None,
                    connectivity: int = 26, classes: Sequence[int] | None = None) -> np.ndarray:
    """Set 3-D components smaller than ``min_volume`` (voxels, or mm³ when ``spacing`` is given) to background.

    Examples
    --------
    >>> v = np.zeros((3, 5, 5), np.uint8); v[0, 0, 0] = 1; v[1:3, 2:4, 2:4] = 1
    >>> int(remove_small_3d(v, 2).sum())
    8
    """
    labels = _check_volume(labels)
    if min_volume < 0:
        raise ValueError(f"min_volume must be >= 0. Got {min_volume}.")
    vox = _voxel_mm3(spacing)
    out = labels.copy()
    # each class reads only its own voxels of the input and clears only those: the classes are independent
    for found in _labelled_classes(labels, classes, connectivity):
        if found is not None:
            _drop_components(out, found, found[3] * vox < min_volume)
    return out


def keep_largest_3d(labels: np.ndarray, classes: Sequence[int] | None = None, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest 3-D component of each class (ties: the first in raster order)."""
    labels = _check_volume(labels)
    out = labels.copy()
    for found in _labelled_classes(labels, classes, connectivity):
        if found is None or found[3].size <= 2:
            continue
        sizes = found[3]
        drop = np.ones(sizes.size, bool)
        drop[1 + int(np.argmax(sizes[1:]))] = False
        _drop_components(out, found, drop)
    return out


def fill_holes_3d(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Fill background cavities enclosed by one class in 3-D.

    A cavity is a 6-connected component of voxels that are not of class ``c``, not touching the volume border,
    all of whose voxels are background (a cavity holding another class is left alone). Classes are filled in the
    order given (increasing when ``classes`` is None), each seeing the fills of the ones before.

    Examples
    --------
    >>> v = np.ones((3, 3, 3), np.uint8); v[1, 1, 1] = 0
    >>> int(fill_holes_3d(np.pad(v, 1))[2, 2, 2])
    1
    """
    labels = _check_volume(labels)
    out = labels.copy()
    for c in _classes(labels, classes):
        box = _bbox(out == c, margin=1)
        if box is None:
            continue
        region = out[box]
        other = region != c
        n, lab = label_3d(other, 6)
        if n == 0:
            continue
        # components touching the grown box's border connect to the outside (or touch the volume border)
        border = np.zeros(n + 1, bool)
        for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]):
            border[np.unique(face)] = True
        if border[1:].all():
            continue
        holds_other = np.zeros(n + 1, bool)
        holds_other[lab[other & (region != 0)]] = True  # another class inside
        fill = ~border & ~holds_other
        fill[0] = False
        if fill.any():
            region[np.take(fill, lab)] = c
    return out


def _ball_offsets(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    r = [int(np.floor(radius_mm / float(s) + 1e-9)) for s in spacing]
    grid = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].astype(np.float64)
    dist = np.sqrt(sum((grid[i] * float(spacing[i])) ** 2 for i in range(3)))
    return dist <= radius_mm + 1e-9


def closing_3d(labels: np.ndarray, radius_mm: float, *, spacing: Sequence[float] | None = None,
               classes: Sequence[int] | None = None) -> np.ndarray:
    """Morphological closing of each class with a ball of ``radius_mm`` (voxels when ``spacing`` is None).

    The ball is ``{offset : |offset * spacing| <= radius}``, so an anisotropic CT is closed by a true sphere.
    Dilation and erosion are thresholded Euclidean distance transforms (exact for this ball); the volume is
    padded so that closing never removes voxels at the border. Voxels a class gains are only taken from the
    background (classes processed in increasing order).

    Examples
    --------
    >>> v = np.zeros((3, 5, 7), np.uint8); v[:, 1:4, 1:3] = 1; v[:, 1:4, 4:6] = 1
    >>> int(closing_3d(v, 1.0)[1, 2, 3])
    1
    """
    from scipy.ndimage import distance_transform_edt

    labels = _check_volume(labels)
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0. Got {radius_mm}.")
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing must be three positive numbers (slice, row, col). Got {spacing}.")
    out = labels.copy()
    pad = [int(np.floor(radius_mm / s + 1e-9)) + 1 for s in sp]
    for c in _classes(labels, classes):
        box = _bbox(labels == c)
        if box is None:
            continue
        # a margin of one radius around the class: the closing cannot reach further
        grown = tuple(slice(max(b.start - p, 0), min(b.stop + p, dim)) for b, p, dim in zip(box, pad, labels.shape))
        m = np.pad(labels[grown] == c, [(p, p) for p in pad])
        dilated = distance_transform_edt(~m, sampling=sp) <= radius_mm + 1e-9
        closed = distance_transform_edt(dilated, sampling=sp) > radius_mm + 1e-9
        closed = closed[tuple(slice(p, -p) for p in pad)]
        region = out[grown]
        region[closed & (labels[grown] == 0) & (region == 0)] = c
    return out


# ------------------------------------------------------------------ measurements

def class_volumes_ml(labels: np.ndarray, spacing: Sequence[float] | None,
                     class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Volume of each foreground class in mL (1 mL = 1000 mm³); voxel counts / 1000 without spacing.

    Examples
    --------
    >>> v = np.zeros((2, 10, 10), np.uint8); v[:, :5, :] = 1
    >>> class_volumes_ml(v, (2.0, 1.0, 1.0), ("background", "organ", "lesion"))
    {'organ': 0.2, 'lesion': 0.0}
    """
    labels = _check_volume(labels)
    vox = _voxel_mm3(spacing)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names or ()) or 1)
    k = max(len(counts), len(class_names or ()))
    names = list(class_names) if class_names else [str(c) for c in range(k)]
    return {names[c] if c < len(names) else str(c): round(float(counts[c] if c < len(counts) else 0) * vox / 1000.0, 6)
            for c in range(1, k)}


def component_table_3d(labels: np.ndarray, class_names: Sequence[str] | None = None,
                       spacing: Sequence[float] | None = None, connectivity: int = 26) -> list[dict]:
    """One row per 3-D component of each class.

    Keys: class, class_name, component, voxels, volume_ml (None without spacing), slices (first, last),
    bbox ``(z0, y0, x0, z1, y1, x1)`` (end exclusive), centroid ``(z, y, x)`` in voxels, largest first per class.
    """
    labels = _check_volume(labels)
    vox = None if spacing is None else _voxel_mm3(spacing)
    rows = []
    from scipy.ndimage import find_objects

    for c in _classes(labels, None):
        found_c = _labelled_class(labels, c, connectivity)
        if found_c is None:
            continue
        box, fg, lab, sizes = found_c
        n = sizes.size - 1
        zz, yy, xx = np.nonzero(fg)
        ids = lab[zz, yy, xx]
        origin = [b.start for b in box]
        cz = np.bincount(ids, weights=zz, minlength=n + 1)
        cy = np.bincount(ids, weights=yy, minlength=n + 1)
        cx = np.bincount(ids, weights=xx, minlength=n + 1)
        found = []
        for i, sl in enumerate(find_objects(lab), start=1):  # one bounding box per component, in one pass
            (z0, z1), (y0, y1), (x0, x1) = ((q.start, q.stop) for q in sl)
            s = int(sizes[i])
            found.append({
                "class": c,
                "class_name": class_names[c] if class_names and c < len(class_names) else str(c),
                "voxels": s,
                "volume_ml": None if vox is None else round(s * vox / 1000.0, 6),
                "slices": (int(z0 + origin[0]), int(z1 - 1 + origin[0])),
                "bbox": tuple(int(v) for v in (z0 + origin[0], y0 + origin[1], x0 + origin[2],
                                               z1 + origin[0], y1 + origin[1], x1 + origin[2])),
                "centroid": (round(cz[i] / s + origin[0], 2), round(cy[i] / s + origin[1], 2),
                             round(cx[i] / s + origin[2], 2)),
            })
        found.sort(key=lambda r: -r["voxels"])
        for j, r in enumerate(found, start=1):
            rows.append({**r, "component": j})
    return rows


def _surface_3d(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, structure=np.ones((3, 3, 3), bool), border_value=0)


def hd95_3d(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None,
            spacing: Sequence[float] | None = None) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance per class between label volumes, in mm with ``spacing``.

    Same definition and empty-mask conventions as :func:`segcore.metrics.hd95` (both empty -> 0, one empty ->
    inf), with 26-connected surfaces and 3-D Euclidean distances.
    """
    from scipy.ndimage import distance_transform_edt

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must be 3-D volumes of one shape. Got {pred.shape} and {gt.shape}.")
    k = int(num_classes or max(pred.max(initial=0), gt.max(initial=0)) + 1)
    sp = None if spacing is None else tuple(float(s) for s in spacing)
    out = np.zeros(k)
    for c in range(k):
        p, g = pred == c, gt == c
        if not p.any() and not g.any():
            continue
        if not p.any() or not g.any():
            out[c] = np.inf
            continue
        box = _bbox(p | g, margin=1)
        sp_, sg = _surface_3d(p[box]), _surface_3d(g[box])
        d1 = distance_transform_edt(~sg, sampling=sp)[sp_]
        d2 = distance_transform_edt(~sp_, sampling=sp)[sg]
        out[c] = max(np.percentile(d1, 95), np.percentile(d2, 95))
    return out


# ------------------------------------------------------------------ 3-D refinement

VOLUME_STEPS = ("close", "fill_holes", "remove_small", "keep_largest")


@dataclasses.dataclass
class VolumeRefineConfig:
    """3-D refinement after the per-slice steps (:class:`segcore.refine.RefineConfig`), in this order.

    ``close_radius_mm`` and ``min_volume_mm3`` are physical sizes (voxels when the scan has no spacing).
    """

    order: tuple[str, ...] = VOLUME_STEPS
    enabled: dict = dataclasses.field(default_factory=lambda: {
        "close": False, "fill_holes": True, "remove_small": True, "keep_largest": False})
    close_radius_mm: float = 2.0
    min_volume_mm3: float = 10.0
    keep_largest_classes: tuple[int, ...] = (1,)
    connectivity: int = 26

    def __post_init__(self):
        unknown = [s for s in self.order if s not in VOLUME_STEPS]
        if unknown:
            raise ValueError(f"Unknown 3-D refinement steps {unknown}. Valid steps: {list(VOLUME_STEPS)}.")
        if self.connectivity not in _RANK:
            raise ValueError(f"Connectivity for 3-D volumes should be in [6, 18, 26]. Got {self.connectivity}.")


def refine_volume(labels: np.ndarray, spacing: Sequence[float] | None = None,
                  config: VolumeRefineConfig | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Run the enabled 3-D steps of ``config``; returns ``(labels, milliseconds per step)``."""
    cfg = config or VolumeRefineConfig()
    out = _check_volume(labels)
    timings: dict[str, float] = {}
    classes = _classes(out, None)  # once: no step adds a class, and an absent one is skipped cheaply
    for step in cfg.order:
        if not cfg.enabled.get(step, False):
            continue
        t0 = time.perf_counter()
        if step == "close":
            out = closing_3d(out, cfg.close_radius_mm, spacing=spacing, classes=classes)
        elif step == "fill_holes":
            out = fill_holes_3d(out, classes)
        elif step == "remove_small":
            out = remove_small_3d(out, cfg.min_volume_mm3, spacing=spacing, connectivity=cfg.connectivity,
                                  classes=classes)
        elif step == "keep_largest":
            out = keep_largest_3d(out, cfg.keep_largest_classes, cfg.connectivity)
        timings[f"3d_{step}"] = round((time.perf_counter() - t0) * 1000, 2)
    if out is labels:
        out = np.array(labels, copy=True)
    return out, timings


# ------------------------------------------------------------------ propagation of corrected slices

def _check_annotated(annotated: Mapping[int, np.ndarray], shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    if not annotated:
        raise ValueError("annotated must hold at least one {slice_index: label_map} entry. Got none.")
    out = {}
    for z, m in annotated.items():
        z = int(z)
        m = np.asarray(m)
        if not 0 <= z < shape[0]:
            raise ValueError(f"Annotated slice {z} is out of range for a volume of {shape[0]} slices.")
        if m.shape != shape[1:]:
            raise ValueError(f"Annotated slice {z} has shape {m.shape}; the volume's slices are {shape[1:]}.")
        if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
            raise ValueError(f"Annotated slice {z} must be an integer label map. Got dtype {m.dtype}.")
        out[z] = m.astype(np.uint8)
    return dict(sorted(out.items()))


def _sdf(mask: np.ndarray, spacing2d: Sequence[float], big: float) -> np.ndarray:
    """Signed distance in mm: negative inside ``mask``, positive outside; ``+big`` everywhere when empty."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return np.full(mask.shape, big, np.float32)
    if mask.all():
        return np.full(mask.shape, -big, np.float32)
    inside = distance_transform_edt(mask, sampling=spacing2d)
    outside = distance_transform_edt(~mask, sampling=spacing2d)
    return (outside - inside).astype(np.float32)


def _empty_sdf_value(annotated: dict[int, np.ndarray], c: int, spacing2d) -> float:
    """Distance given to an empty slice: the class's largest inscribed radius, so shapes vanish half-way."""
    radii = []
    for m in annotated.values():
        b = m == c
        if b.any():
            radii.append(float(-_sdf(b, spacing2d, 1.0).min()))
    return max(radii) if radii else 1.0


def interpolate_shapes(annotated: Mapping[int, np.ndarray], shape: tuple[int, int, int],
                       spacing: Sequence[float] | None = None) -> np.ndarray:
    """Shape-based interpolation between annotated axial slices (what "fill between slices" does).

    Per class, the in-plane signed distance maps (mm) of neighbouring annotated slices are interpolated
    linearly along the slice axis; a voxel takes the class with the most negative distance, where negative.
    Slices outside the annotated range stay empty; annotated slices are returned as given.

    Examples
    --------
    >>> a = np.zeros((5, 5), np.uint8); a[1:4, 1:4] = 1
    >>> v = interpolate_shapes({0: a, 2: a}, (3, 5, 5))
    >>> v[1].tolist() == a.tolist()
    True
    """
    ann = _check_annotated(annotated, tuple(shape))
    sp2 = (1.0, 1.0) if spacing is None else (float(spacing[1]), float(spacing[2]))
    out = np.zeros(shape, np.uint8)
    keys = sorted(ann)
    classes = sorted({int(c) for m in ann.values() for c in np.unique(m) if c})
    for z in keys:
        out[z] = ann[z]
    if not classes or len(keys) < 2:
        return out
    sdfs = {c: {z: _sdf(ann[z] == c, sp2, _empty_sdf_value(ann, c, sp2)) for z in keys} for c in classes}
    for a, b in itertools.pairwise(keys):
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            best = np.full(shape[1:], np.inf, np.float32)
            lab = np.zeros(shape[1:], np.uint8)
            for c in classes:
                d = (1 - t) * sdfs[c][a] + t * sdfs[c][b]
                take = (d < 0) & (d < best)
                lab[take] = c
                best = np.minimum(best, d)
            out[z] = lab
    return out


@dataclasses.dataclass
class PropagateConfig:
    """Settings of :func:`propagate` (see its docstring for what each term does).

    ``prior_tau_mm`` and ``prior_tau_per_mm`` set how soft the interpolated shape is: the prior probability of a
    class is ``sigmoid(-sdf / tau)`` with ``tau = prior_tau_mm + prior_tau_per_mm * distance to the nearest
    annotated slice (mm)``. ``intensity_weight`` scales the log-likelihood ratio of the intensity model,
    ``model_weight`` the model's log-odds (only with a model). ``band_mm`` is the width of the background band
    around the annotated objects the intensity model learns from, and the farthest a result may reach beyond
    the interpolated shape. Extrapolation beyond the annotated range proceeds slice by slice and stops when the
    evidence fades: a slice's region must keep at least ``min_evidence`` of the annotated slices' mean
    log-likelihood ratio, at least ``min_overlap`` overlap with the previous slice's region, at most
    ``max_growth`` times its area, and at most ``max_extrapolate_radii`` x the last region's equivalent radius
    in distance. With ``self_check`` and at least 3 annotated slices, the intensity weight is chosen among
    ``self_check_weights`` by predicting each inner annotated slice from its neighbours (leave-one-out).
    """

    prior_tau_mm: float = 1.0
    prior_tau_per_mm: float = 0.15
    intensity_weight: float = 1.0
    model_weight: float = 1.0
    band_mm: float = 7.0
    bins: int = 64
    # a gentle CRF: the interpolated shape already carries the smoothness (chosen on bench/propagate.py's cases)
    crf: dict = dataclasses.field(default_factory=lambda: {
        "iterations": 5, "sxy_gaussian": 1, "compat_gaussian": 1, "sxy_bilateral": 10, "srgb": 20,
        "compat_bilateral": 2})
    use_crf: bool = True
    extrapolate: bool = True
    min_evidence: float = 0.35
    min_overlap: float = 0.3
    max_growth: float = 1.3
    max_extrapolate_radii: float = 1.5
    min_area_px: int = 4
    self_check: bool = True
    self_check_weights: tuple[float, ...] = (0.0, 0.5, 1.0)
    self_check_margin: float = 0.02


class _IntensityModel:
    """Per-class intensity histograms from the annotated slices vs the background band around the objects."""

    def __init__(self, image: np.ndarray, annotated: dict[int, np.ndarray], classes: list[int], sp2, cfg):
        from scipy.ndimage import distance_transform_edt, gaussian_filter1d

        fg_vals = {c: [] for c in classes}
        bg_vals = []
        for z, m in annotated.items():
            img = image[z]
            fg = m > 0
            for c in classes:
                fg_vals[c].append(img[m == c])
            if fg.any():
                band = (distance_transform_edt(~fg, sampling=sp2) <= cfg.band_mm) & ~fg
            else:
                band = np.ones_like(fg)
            bg_vals.append(img[band])
        allv = np.concatenate([np.concatenate(v) for v in fg_vals.values()] + bg_vals)
        lo, hi = np.percentile(allv, [0.5, 99.5]) if allv.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        self.lo, self.hi, self.bins = float(lo), float(hi), int(cfg.bins)
        self.view_lo, self.view_hi = self.lo, self.hi

        def hist(v):
            h = np.bincount(self._bin(v), minlength=self.bins).astype(np.float64) + 0.5
            h = gaussian_filter1d(h, 1.5)
            return h / h.sum()

        bg = hist(np.concatenate(bg_vals))
        self.llr = {c: np.log(hist(np.concatenate(fg_vals[c])) / bg).astype(np.float32) for c in classes}
        # mean log-likelihood ratio inside the annotated objects: the evidence level extrapolation must keep
        self.ref = {c: float(np.mean(self.llr[c][self._bin(np.concatenate(fg_vals[c]))]))
                    if np.concatenate(fg_vals[c]).size else 0.0 for c in classes}

    def _bin(self, v: np.ndarray) -> np.ndarray:
        x = (np.asarray(v, np.float32) - self.lo) / (self.hi - self.lo) * self.bins
        return np.clip(x, 0, self.bins - 1).astype(np.int64)

    def log_ratio(self, img: np.ndarray, c: int) -> np.ndarray:
        return self.llr[c][self._bin(img)]

    def view(self, img: np.ndarray) -> np.ndarray:
        return np.clip((img - self.view_lo) / (self.view_hi - self.view_lo) * 255.0, 0, 255).astype(np.uint8)


def _solve_slice(img, logits_prior, classes, im: _IntensityModel, cfg: PropagateConfig, model_logodds=None,
                 intensity_weight: float | None = None):
    """Posterior over (background, classes...) for one slice, CRF-smoothed: returns ``H,W,K+1`` probabilities."""
    from .refine import dense_crf

    h, w = img.shape
    k = len(classes)
    logits = np.zeros((h, w, k + 1), np.float32)
    for i, c in enumerate(classes):
        wi = cfg.intensity_weight if intensity_weight is None else intensity_weight
        logits[..., i + 1] = logits_prior[i] + wi * im.log_ratio(img, c)
        if model_logodds is not None:
            logits[..., i + 1] += cfg.model_weight * model_logodds[i]
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    if cfg.use_crf:
        p = dense_crf(im.view(img), p, **cfg.crf)
    return p


def _keep_supported(lab: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Keep the 8-connected components of each class that overlap ``support`` (the prior's core)."""
    out = np.zeros_like(lab)
    for c in np.unique(lab):
        if c == 0:
            continue
        _, comp = cv2.connectedComponents((lab == c).astype(np.uint8), connectivity=8)
        hit = np.unique(comp[(comp > 0) & support[c]])
        out[np.isin(comp, hit) & (comp > 0)] = c
    return out


def propagate(volume: np.ndarray, annotated: Mapping[int, np.ndarray], *, model=None, config=None,
              spacing: Sequence[float] | None = None, settings: PropagateConfig | None = None,
              progress: Callable[[float, str], object] | None = None) -> np.ndarray:
    """A label volume from a few corrected axial slices: interpolated shape + image evidence.

    1. **Shape prior**: per class, the in-plane signed distance maps (mm) of the annotated slices are
       interpolated along the slice axis (as :func:`interpolate_shapes`) and turned into a soft prior
       ``sigmoid(-sdf / tau)``, softer the farther the slice is from an annotated one.
    2. **Image evidence**: an intensity model learned from the annotated slices (class histograms against the
       background band around the objects) adds its log-likelihood ratio; with ``model`` (a Keras model and its
       ``config``, e.g. fine-tuned on the annotated slices with :func:`segcore.train.fine_tune`) its log-odds are
       added too.
    3. A dense CRF (:func:`segcore.refine.dense_crf`) on each slice snaps the result to edges; components not
       touching the interpolated shape (grown by ``band_mm``) are dropped.
    4. **Extrapolation**: beyond the first/last annotated slice, each slice uses the previous slice's result as
       its prior and is kept only while the evidence holds (see :class:`PropagateConfig`); the first slice that
       fails, and all beyond it, stay empty.

    Parameters
    ----------
    volume : np.ndarray
        ``D,H,W`` image in raw scan values.
    annotated : dict
        ``{slice_index: H,W label map}`` for the corrected axial slices (returned unchanged in the result).
    model, config : optional
        A segmentation model and its ModelConfig; its class ids must be the annotation's class ids.
    spacing : tuple, optional
        ``(slice, row, col)`` mm (1 mm when None).
    settings : PropagateConfig, optional
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    np.ndarray
        ``D,H,W`` uint8 label volume.

    Raises
    ------
    ValueError
        Not a 3-D volume, no annotated slice, or an annotated slice of the wrong shape or range.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"propagate takes a D,H,W volume. Got shape {vol.shape}.")
    if (model is None) != (config is None):
        raise ValueError("Pass both model and config (its ModelConfig), or neither.")
    cfg = settings or PropagateConfig()
    ann = _check_annotated(annotated, vol.shape)
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    sp2 = sp[1:]
    keys = sorted(ann)
    classes = sorted({int(c) for m in ann.values() for c in np.unique(m) if c})
    out = np.zeros(vol.shape, np.uint8)
    for z in keys:
        out[z] = ann[z]
    if not classes:
        return out
    im = _IntensityModel(vol, ann, classes, sp2, cfg)
    empties = {c: _empty_sdf_value(ann, c, sp2) for c in classes}
    sdfs = {z: [_sdf(ann[z] == c, sp2, empties[c]) for c in classes] for z in keys}
    todo = [z for z in range(keys[0], keys[-1] + 1) if z not in ann]
    model_probs: dict[int, np.ndarray] = {}

    def model_logodds(z: int):
        if model is None:
            return None
        if z not in model_probs:
            from .infer import predict_proba

            model_probs[z] = predict_proba(model, vol[z], config)
        p = np.clip(model_probs[z], 1e-4, 1.0)
        return [np.log(p[..., c] / p[..., 0]) if c < p.shape[-1] else np.zeros(p.shape[:2], np.float32)
                for c in classes]

    weight = {"intensity": cfg.intensity_weight}

    def solve(z: int, sdf_list, dist_mm: float, model_im: _IntensityModel | None = None) -> np.ndarray:
        if weight["intensity"] == 0 and model is None:  # the image is not trusted: the interpolated shape itself
            lab = np.zeros(vol.shape[1:], np.uint8)
            best = np.full(vol.shape[1:], np.inf, np.float32)
            for c, sd in zip(classes, sdf_list):
                take = (sd < 0) & (sd < best)
                lab[take] = c
                best = np.minimum(best, sd)
            return lab
        tau = cfg.prior_tau_mm + cfg.prior_tau_per_mm * dist_mm
        reach = cfg.band_mm + 0.5 * dist_mm
        lab = np.zeros(vol.shape[1:], np.uint8)
        # only the neighbourhood the result may reach is solved (plus room for the CRF's kernels)
        box = _bbox(np.minimum.reduce([np.asarray(sd) for sd in sdf_list]) <= reach,
                    margin=int(np.ceil(cfg.crf.get("sxy_bilateral", 10))) + 2)
        if box is None:
            return lab
        prior = [np.clip(-sd[box] / tau, -30, 30) for sd in sdf_list]
        logodds = model_logodds(z)
        p = _solve_slice(vol[z][box], prior, classes, model_im or im, cfg,
                         None if logodds is None else [lo[box] for lo in logodds], weight["intensity"])
        arg = p.argmax(-1)
        crop = lab[box]
        for i, c in enumerate(classes):
            crop[arg == i + 1] = c
        support = {c: (s < 0) if (s < 0).any() else (s <= s.min() + 1e-6) for c, s in zip(classes, sdf_list)}
        near = np.zeros(lab.shape, bool)
        for c, s in zip(classes, sdf_list):
            near |= (lab == c) & (s > reach)
        lab[near] = 0
        return _keep_supported(lab, support)

    if cfg.self_check and len(keys) >= 3:
        weight["intensity"] = _self_check(vol, ann, keys, classes, sp, cfg, sdfs, solve, weight)
    n_total = max(len(todo), 1)
    for i, z in enumerate(todo):
        a = max(k for k in keys if k < z)
        b = min(k for k in keys if k > z)
        t = (z - a) / (b - a)
        sdf_z = [(1 - t) * sa + t * sb for sa, sb in zip(sdfs[a], sdfs[b])]
        out[z] = solve(z, sdf_z, min(z - a, b - z) * sp[0])
        if progress is not None:
            progress(0.8 * (i + 1) / n_total, f"Slice {z}")
    weight["intensity"] = cfg.intensity_weight  # extrapolation always needs (and checks) the image evidence
    if cfg.extrapolate:
        for start, step in ((keys[0], -1), (keys[-1], 1)):
            _extrapolate(vol, out, start, step, classes, im, sp, cfg, solve)
    if progress is not None:
        progress(1.0, "Done")
    return out


def _self_check(vol, ann, keys, classes, sp, cfg, sdfs, solve, weight) -> float:
    """Leave each inner annotated slice out, predict it from its annotated neighbours with each candidate
    intensity weight (the intensity model learned without it), and return the weight with the best mean Dice.

    This lets the user's own corrections decide how much the image is trusted: where the intensity model
    does not separate the object from its surroundings (e.g. touching objects of one intensity), the
    interpolated shape is kept. A weight must beat the lowest one by ``self_check_margin``.
    """
    scores = {w: [] for w in cfg.self_check_weights}
    for j in range(1, len(keys) - 1):
        z, a, b = keys[j], keys[j - 1], keys[j + 1]
        rest = {k: m for k, m in ann.items() if k != z}
        im_loo = _IntensityModel(vol, rest, classes, sp[1:], cfg)
        t = (z - a) / (b - a)
        sdf_z = [(1 - t) * sa + t * sb for sa, sb in zip(sdfs[a], sdfs[b])]
        for w in cfg.self_check_weights:
            weight["intensity"] = w
            lab = solve(z, sdf_z, min(z - a, b - z) * sp[0], im_loo)
            d = [2 * ((lab == c) & (ann[z] == c)).sum() / max((lab == c).sum() + (ann[z] == c).sum(), 1)
                 for c in classes]
            scores[w].append(float(np.mean(d)))
    mean = {w: float(np.mean(scores[w])) for w in cfg.self_check_weights}
    base = min(cfg.self_check_weights)
    best = max(cfg.self_check_weights, key=lambda w: (round(mean[w], 3), -w))
    # the image must earn its weight: a gain below the margin keeps the lowest weight
    return float(best if mean[best] >= mean[base] + cfg.self_check_margin else base)


def _extrapolate(vol, out, start, step, classes, im, sp, cfg, solve) -> None:
    sp2 = sp[1:]
    prev = out[start]
    d = vol.shape[0]
    radius = {c: float(np.sqrt((prev == c).sum() * sp2[0] * sp2[1] / np.pi)) for c in classes}
    alive = {c: bool((prev == c).sum() >= cfg.min_area_px) for c in classes}
    z = start + step
    travelled = 0.0
    while 0 <= z < d and any(alive.values()):
        travelled += sp[0]
        sdf_list = [_sdf(prev == c, sp2, 1e3) if alive[c] else np.full(prev.shape, 1e3, np.float32)
                    for c in classes]
        lab = solve(z, sdf_list, travelled)
        for c in classes:
            if not alive[c]:
                lab[lab == c] = 0
                continue
            cur, before = lab == c, prev == c
            area, area_prev = int(cur.sum()), int(before.sum())
            ok = area >= cfg.min_area_px and travelled <= cfg.max_extrapolate_radii * max(radius[c], sp[0])
            if ok:
                overlap = (cur & before).sum() / max(min(area, area_prev), 1)
                evidence = float(im.log_ratio(vol[z][cur], c).mean()) if area else -np.inf
                ok = (overlap >= cfg.min_overlap and area <= cfg.max_growth * area_prev
                      and evidence >= cfg.min_evidence * im.ref[c])
            if not ok:
                lab[cur] = 0
                alive[c] = False
        out[z] = lab
        prev = lab
        z += step
