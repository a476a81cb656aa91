"""Mask average precision (COCO style) for instance segmentation, in NumPy.

Ground truth per image is an instance-id map ``H,W`` (0 background; an
optional ``{id: class}`` mapping, class 1 for all by default) and predictions
per image a dict with ``masks`` ``(N,H,W)`` bool, ``scores`` ``(N,)`` and
optionally ``classes`` ``(N,)``. AP follows the COCO definition
(``pycocotools.cocoeval``, area range "all"): per image, detections are taken
in decreasing score order (at most ``max_dets``) and greedily matched to the
unmatched ground-truth object of highest IoU at or above the threshold; the
precision envelope is sampled at 101 recall points; classes without ground
truth are left out of the mean. An image without objects contributes only
false positives. With no ground-truth object at all, AP is NaN.
:func:`coco_mask_ap` computes the same with pycocotools (a cross-check).
"""

from __future__ import annotations

import numpy as np

__all__ = ["IOU_THRESHOLDS", "coco_mask_ap", "ids_to_masks", "mask_ap", "mask_iou_matrix"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_REC = np.linspace(0.0, 1.0, 101)


def ids_to_masks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (N,H,W) bool, labels (N,))`` for the non-zero ids of an instance-id map, in increasing id order.

    >>> m, lab = ids_to_masks(np.array([[0, 2], [2, 5]]))
    >>> lab.tolist(), m.sum((1, 2)).tolist()
    ([2, 5], [2, 1])
    """
    ids = np.asarray(ids)
    labels = np.unique(ids)
    labels = labels[labels != 0]
    return ids[None] == labels[:, None, None], labels.astype(np.int64)


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of bool masks ``(N,H,W)`` and ``(M,H,W)``.

    >>> a = np.zeros((1, 2, 2), bool); a[0, 0] = True
    >>> mask_iou_matrix(a, np.ones((1, 2, 2), bool)).tolist()
    [[0.5]]
    """
    fa = np.asarray(a, bool).reshape(len(a), -1).astype(np.float64)
    fb = np.asarray(b, bool).reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _iou_with_id_map(det_masks: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """IoU ``(N, len(labels))`` of detections with the (disjoint) objects of an id map, without dense GT masks."""
    pos = {int(v): j for j, v in enumerate(labels)}
    flat_ids = np.asarray(ids).ravel()
    g_area = np.array([np.count_nonzero(flat_ids == v) for v in labels], np.float64)
    out = np.zeros((len(det_masks), len(labels)), np.float64)
    for k, m in enumerate(det_masks):
        under = flat_ids[np.asarray(m, bool).ravel()]
        d_area = float(under.size)
        vals, counts = np.unique(under[under != 0], return_counts=True)
        for v, c in zip(vals, counts):
            j = pos.get(int(v))
            if j is not None:
                out[k, j] = c / (d_area + g_area[j] - c)
    return out


def _per_image(ids, gt_labels, gt_cls, pred, cls, max_dets):
    """Scores and per-threshold match flags of class ``cls`` detections in one image, and its GT count."""
    g = gt_labels[gt_cls == cls]
    pc = np.asarray(pred.get("classes", np.ones(len(pred["scores"]), np.int64)))
    sel = np.flatnonzero(pc == cls)
    scores = np.asarray(pred["scores"], np.float64)[sel]
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    sel, scores = sel[order], scores[order]
    d = np.asarray(pred["masks"])[sel]
    tp = np.zeros((len(IOU_THRESHOLDS), len(sel)), bool)
    if len(g) and len(d):
        iou = _iou_with_id_map(d, ids, g)
        for t, thr in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(g), bool)
            for k in range(len(d)):
                best, m = min(thr, 1 - 1e-10), -1
                for j in range(len(g)):
                    if taken[j] or iou[k, j] < best:
                        continue
                    best, m = iou[k, j], j
                if m >= 0:
                    taken[m] = True
                    tp[t, k] = True
    return scores, tp, len(g)


def mask_ap(gt: list, preds: list[dict], gt_classes: list | None = None, max_dets: int = 1000) -> dict:
    """COCO mask AP over images.

    Parameters
    ----------
    gt : list of np.ndarray
        Instance-id maps ``H,W``.
    preds : list of dict
        ``masks`` ``(N,H,W)``, ``scores`` ``(N,)``, optional ``classes`` ``(N,)``.
    gt_classes : list of mapping, optional
        Per image, ``{instance id: class}``; class 1 for every object when omitted.
    max_dets : int
        Detections per image considered (pycocotools' default is 100; large
        images hold more objects than that).

    Returns
    -------
    dict
        ``AP50``, ``AP75``, ``AP50_95`` (floats, NaN without ground truth) and ``n_gt``.
    """
    if len(gt) != len(preds):
        raise ValueError(f"Got {len(gt)} ground-truth images but {len(preds)} predictions.")
    per_image = []
    classes: set[int] = set()
    for i, ids in enumerate(gt):
        labels = np.unique(ids)
        labels = labels[labels != 0]
        cmap = None if gt_classes is None else gt_classes[i]
        cls = np.array([1 if cmap is None else int(cmap[int(v)]) for v in labels], np.int64)
        per_image.append((np.asarray(ids), labels, cls))
        classes |= set(cls.tolist())
        if preds[i]["masks"].shape[1:] != np.shape(ids):
            raise ValueError(f"Image {i}: prediction masks {preds[i]['masks'].shape[1:]} vs ground truth "
                             f"{np.shape(ids)}.")
    n_gt = sum(len(c) for _, _, c in per_image)
    aps = np.full((len(IOU_THRESHOLDS), max(len(classes), 1)), np.nan)
    for ci, cls in enumerate(sorted(classes)):
        scores, tps, npos = [], [], 0
        for (ids, labels, gcls), pred in zip(per_image, preds):
            s, tp, n = _per_image(ids, labels, gcls, pred, cls, max_dets)
            scores.append(s)
            tps.append(tp)
            npos += n
        s = np.concatenate(scores)
        tp = np.concatenate(tps, 1)
        order = np.argsort(-s, kind="mergesort")
        tp = tp[:, order]
        for t in range(len(IOU_THRESHOLDS)):
            ctp = np.cumsum(tp[t]).astype(np.float64)
            cfp = np.cumsum(~tp[t]).astype(np.float64)
            rc = ctp / npos
            pr = ctp / np.maximum(ctp + cfp, np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
            inds = np.searchsorted(rc, _REC, side="left")
            q = np.zeros(len(_REC))
            ok = inds < len(pr)
            q[ok] = pr[inds[ok]]
            aps[t, ci] = q.mean()
    with np.errstate(all="ignore"):
        per_t = np.nanmean(aps, 1) if classes else np.full(len(IOU_THRESHOLDS), np.nan)
    return {"AP50": float(per_t[0]), "AP75": float(per_t[5]), "AP50_95": float(np.mean(per_t)), "n_gt": int(n_gt)}


def coco_mask_ap(gt: list, preds: list[dict], gt_classes: list | None = None, max_dets: int = 1000) -> dict:
    """The same quantities as :func:`mask_ap`, computed by pycocotools (``COCOeval``, ``iouType="segm"``)."""
    import contextlib
    import io

    try:
        import pycocotools.mask as mu
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover
        raise ImportError("coco_mask_ap needs pycocotools: pip install pycocotools") from exc

    images, anns, dets, cats = [], [], [], set()
    aid = 1
    for i, ids in enumerate(gt, 1):
        h, w = np.shape(ids)
        images.append({"id": i, "height": int(h), "width": int(w)})
        masks, labels = ids_to_masks(ids)
        for m, v in zip(masks, labels):
            cls = 1 if gt_classes is None else int(gt_classes[i - 1][int(v)])
            cats.add(cls)
            rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": aid, "image_id": i, "category_id": cls, "iscrowd": 0, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [float(v) for v in mu.toBbox(rle)]})
            aid += 1
        p = preds[i - 1]
        pcls = p.get("classes", np.ones(len(p["scores"]), np.int64))
        for m, s, c in zip(p["masks"], p["scores"], pcls):
            rle = mu.encode(np.asfortranarray(np.asarray(m, np.uint8)))
            dets.append({"image_id": i, "category_id": int(c), "segmentation": rle, "score": float(s)})
            cats.add(int(c))
    out = {"n_gt": len(anns)}
    if not anns:
        return {"AP50": float("nan"), "AP75": float("nan"), "AP50_95": float("nan"), **out}
    if not dets:
        return {"AP50": 0.0, "AP75": 0.0, "AP50_95": 0.0, **out}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T, R, K at area "all" and max_dets

    def mean(p):
        return float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")

    return {"AP50": mean(prec[0]), "AP75": mean(prec[5]), "AP50_95": mean(prec), **out}
