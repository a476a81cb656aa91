"""The classical instance pipeline: foreground, distance-transform seeds, compact watershed; and its tuning.

``classical_instances`` takes a raw ``H,W`` image (normalised like the
Mask R-CNN input) or a foreground probability map and returns an
instance-id map (int32, 0 background) plus a score per instance (for AP
ranking: the mean foreground probability, or the mean normalised intensity
with an Otsu foreground). An image without foreground gives an all-zero map.
Needs scikit-image (``pip install scikit-image``), imported when called.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .preprocess import normalise_intensity, rescale

__all__ = ["ClassicalConfig", "classical_instances", "classical_predict", "tune_classical"]


@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
    """Settings of :func:`classical_instances`.

    foreground : ``"otsu"`` (Otsu threshold of the smoothed image) or ``"probability"`` (a given map >= 0.5).
    sigma : Gaussian smoothing (pixels) before Otsu.
    min_distance : minimum distance between seeds (distance-transform peaks), pixels.
    h : h-maxima height on the distance transform; 0 keeps every peak.
    compactness : watershed compactness (0: classic watershed).
    min_size : instances smaller than this (pixels) are dropped.
    scale : the image is resized by this factor first and the result back (small objects).
    """

    foreground: str = "otsu"
    sigma: float = 1.0
    min_distance: int = 5
    h: float = 0.0
    compactness: float = 0.0
    min_size: int = 10
    scale: float = 1.0

    def __post_init__(self):
        if self.foreground not in ("otsu", "probability"):
            raise ValueError(f"foreground must be 'otsu' or 'probability'. Got '{self.foreground}'.")
        if self.min_distance < 1 or self.h < 0 or self.compactness < 0:
            raise ValueError(f"Need min_distance >= 1, h >= 0, compactness >= 0. Got {self.min_distance}, "
                             f"{self.h}, {self.compactness}.")


def _skimage():
    try:
        from skimage import feature, filters, morphology, segmentation
    except ImportError as exc:  # pragma: no cover
        raise ImportError("The classical instance pipeline needs scikit-image: pip install scikit-image") from exc
    return feature, filters, morphology, segmentation


def classical_instances(image: np.ndarray, config: ClassicalConfig | None = None,
                        probability: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Instance-id map and ``{id: score}`` by seeded watershed on the foreground's distance transform.

    Parameters
    ----------
    image : np.ndarray
        ``H,W`` raw values.
    config : ClassicalConfig
    probability : np.ndarray, optional
        ``H,W`` foreground probability, required for ``foreground="probability"``.
    """
    from scipy import ndimage

    feature, filters, morphology, segmentation = _skimage()
    cfg = config or ClassicalConfig()
    x = normalise_intensity(image)
    h0, w0 = x.shape
    if cfg.foreground == "probability":
        if probability is None or np.shape(probability) != (h0, w0):
            raise ValueError(f"foreground='probability' needs a probability map of shape {(h0, w0)}. Got "
                             f"{None if probability is None else np.shape(probability)}.")
        p = np.asarray(probability, np.float32)
    if cfg.scale != 1.0:
        x = rescale(x, cfg.scale)
        if cfg.foreground == "probability":
            p = rescale(p, cfg.scale)
    if cfg.foreground == "otsu":
        sm = filters.gaussian(x, cfg.sigma) if cfg.sigma > 0 else x
        fg = sm > filters.threshold_otsu(sm) if np.ptp(sm) > 0 else np.zeros(sm.shape, bool)
        conf = np.clip(sm, 0, 1)
    else:
        fg = p >= 0.5
        conf = p
    fg = ndimage.binary_fill_holes(fg)
    ids = np.zeros(fg.shape, np.int32)
    if fg.any():
        dist = ndimage.distance_transform_edt(fg)
        comps, _ = ndimage.label(fg)
        peaks = feature.peak_local_max(dist, min_distance=cfg.min_distance, labels=comps, exclude_border=False)
        seeds = np.zeros(fg.shape, bool)
        seeds[tuple(peaks.T)] = True
        if cfg.h > 0:
            seeds &= morphology.h_maxima(dist, cfg.h).astype(bool)
        markers, _ = ndimage.label(seeds)
        # components with no seed left still become one instance each
        missing = np.setdiff1d(np.unique(comps[fg]), np.unique(comps[seeds]))
        for k, c in enumerate(missing, int(markers.max()) + 1):
            ys, xs = np.nonzero(comps == c)
            i = int(np.argmax(dist[ys, xs]))
            markers[ys[i], xs[i]] = k
        ids = segmentation.watershed(-dist, markers, mask=fg, compactness=cfg.compactness).astype(np.int32)
    if cfg.scale != 1.0:
        ids = rescale(ids, 1.0 / cfg.scale, labels=True)
        conf = rescale(conf.astype(np.float32), 1.0 / cfg.scale)
        if ids.shape != (h0, w0):  # rounding: crop or pad to the input size
            pad = np.zeros((h0, w0), np.int32)
            hh, ww = min(h0, ids.shape[0]), min(w0, ids.shape[1])
            pad[:hh, :ww] = ids[:hh, :ww]
            ids = pad
            cpad = np.zeros((h0, w0), np.float32)
            cpad[:hh, :ww] = conf[:hh, :ww]
            conf = cpad
    areas = np.bincount(ids.ravel())
    small = np.flatnonzero((areas < cfg.min_size) & (areas > 0))
    if len(small):
        ids[np.isin(ids, small)] = 0
    sums = np.bincount(ids.ravel(), weights=conf.ravel().astype(np.float64), minlength=len(areas))
    scores = {int(v): float(sums[v] / areas[v]) for v in np.unique(ids) if v != 0}
    return ids, scores


def classical_predict(image: np.ndarray, config: ClassicalConfig | None = None,
                      probability: np.ndarray | None = None) -> dict:
    """:func:`classical_instances` in :meth:`MaskRCNN.detect`'s output form (``masks``, ``scores``)."""
    ids, scores = classical_instances(image, config, probability)
    labels = np.array(sorted(scores), np.int64)
    return {"masks": ids[None] == labels[:, None, None] if len(labels) else np.zeros((0, *ids.shape), bool),
            "scores": np.array([scores[int(v)] for v in labels], np.float32)}


def tune_classical(images: list, gt_ids: list, grid: dict, probabilities: list | None = None,
                   base: ClassicalConfig | None = None) -> tuple[ClassicalConfig, list[dict]]:
    """Grid search of :class:`ClassicalConfig` fields for the best mask AP50 (ties: AP50:95) on a validation set.

    ``grid`` maps field names to lists of values, e.g. ``{"min_distance": [3, 5], "h": [0, 1]}``.
    Returns the best config and a table of every setting tried with its AP50 and AP50:95.
    """
    from .evaluate import mask_ap

    base = base or ClassicalConfig()
    names = sorted(grid)
    bad = set(names) - {f.name for f in dataclasses.fields(ClassicalConfig)}
    if bad:
        raise ValueError(f"Unknown ClassicalConfig fields {sorted(bad)}.")
    table, best, best_key = [], base, (-1.0, -1.0)
    for values in itertools.product(*(grid[n] for n in names)):
        cfg = dataclasses.replace(base, **dict(zip(names, values)))
        preds = [classical_predict(im, cfg, None if probabilities is None else probabilities[i])
                 for i, im in enumerate(images)]
        ap = mask_ap(gt_ids, preds)
        table.append({**dict(zip(names, values)), "AP50": round(ap["AP50"], 4), "AP50_95": round(ap["AP50_95"], 4)})
        key = (ap["AP50"], ap["AP50_95"])
        if key > best_key:
            best, best_key = cfg, key
    return best, table
