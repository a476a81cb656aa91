"""Segmentation metrics on integer label maps (NumPy, per image, per class).

Empty-mask conventions (per class):

* ``dice``/``iou``: both masks empty -> 1.0 (nothing to find, nothing found);
  exactly one empty -> 0.0.
* ``hd95``: both empty -> 0.0; exactly one empty -> ``inf``.
* ``boundary_f1``: both empty -> 1.0; exactly one empty -> 0.0.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "confusion_matrix",
    "dice",
    "iou",
    "mean_iou",
    "pixel_accuracy",
    "hd95",
    "boundary_f1",
    "surface_distances",
    "evaluate_pair",
]


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape. Got {pred.shape} and {gt.shape}.")
    return pred, gt


def _num_classes(pred, gt, num_classes):
    if num_classes is None:
        num_classes = int(max(pred.max(initial=0), gt.max(initial=0))) + 1
    return max(int(num_classes), 1)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``K,K`` counts; rows are ground truth, columns prediction.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    pred, gt = _check(pred, gt)
    k = _num_classes(pred, gt, num_classes)
    idx = gt.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=k * k)[: k * k].reshape(k, k)


def dice(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Dice per class, shape ``(K,)`` (class 0 included; slice ``[1:]`` for foreground)."""
    cm = confusion_matrix(pred, gt, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, 2 * tp / denom, 1.0)
    return out


def iou(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Intersection over union per class, shape ``(K,)``."""
    cm = confusion_matrix(pred, gt, num_classes)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, 1.0)


def mean_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None, *, include_background: bool = True) -> float:
    """Mean IoU over classes present in either mask."""
    cm = confusion_matrix(pred, gt, num_classes)
    present = (cm.sum(0) + cm.sum(1)) > 0
    vals = iou(pred, gt, cm.shape[0])
    if not include_background:
        present[0] = False
    return float(vals[present].mean()) if present.any() else 1.0


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = _check(pred, gt)
    return float((pred == gt).mean()) if pred.size else 1.0


def _surface(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"Boundary metrics take 2-D masks. Got shape {mask.shape}.")
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distances from each boundary pixel of binary ``a`` to the boundary of ``b`` (mm if spacing)."""
    sa, sb = _surface(a), _surface(b)
    if not sb.any():
        return np.full(int(sa.sum()), np.inf)
    dt = ndimage.distance_transform_edt(~sb, sampling=None if spacing is None else tuple(float(s) for s in spacing))
    return dt[sa]


def hd95(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None,
         spacing: Sequence[float] | None = None) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance per class, shape ``(K,)``.

    ``max(P95(d(pred->gt)), P95(d(gt->pred)))`` over boundary pixels (as MONAI),
    in pixels or in mm when ``spacing`` (row, col) is given.
    """
    pred, gt = _check(pred, gt)
    k = _num_classes(pred, gt, num_classes)
    out = np.zeros(k)
    for c in range(k):
        p, g = pred == c, gt == c
        if not p.any() and not g.any():
            out[c] = 0.0
        elif not p.any() or not g.any():
            out[c] = np.inf
        else:
            d1 = surface_distances(p, g, spacing)
            d2 = surface_distances(g, p, spacing)
            out[c] = max(np.percentile(d1, 95), np.percentile(d2, 95))
    return out


def boundary_f1(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None, tolerance: float = 2.0) -> np.ndarray:
    """Boundary F1 (Csurka et al. 2013) per class with a tolerance in pixels."""
    pred, gt = _check(pred, gt)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0. Got {tolerance}.")
    k = _num_classes(pred, gt, num_classes)
    out = np.zeros(k)
    for c in range(k):
        p, g = pred == c, gt == c
        if not p.any() and not g.any():
            out[c] = 1.0
            continue
        if not p.any() or not g.any():
            out[c] = 0.0
            continue
        d_pg = surface_distances(p, g)
        d_gp = surface_distances(g, p)
        precision = float((d_pg <= tolerance).mean()) if d_pg.size else 0.0
        recall = float((d_gp <= tolerance).mean()) if d_gp.size else 0.0
        out[c] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return out


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                  spacing: Sequence[float] | None = None) -> dict[str, list[float]]:
    """All per-class metrics for one image as lists (JSON-friendly)."""
    return {
        "dice": dice(pred, gt, num_classes).tolist(),
        "iou": iou(pred, gt, num_classes).tolist(),
        "hd95": hd95(pred, gt, num_classes, spacing).tolist(),
        "boundary_f1": boundary_f1(pred, gt, num_classes).tolist(),
        "pixel_accuracy": [pixel_accuracy(pred, gt)],
    }
