"""The standard click simulator and the click-session metrics (NoC@85/90, IoU after k clicks).

Protocol (Xu et al. 2016, as implemented in RITM's evaluation, Sofiiuk et al. 2022):
the error regions are the false negatives (object pixels missed) and false
positives (background pixels taken). Each region's pixels get their Euclidean
distance to the region's border, the image border counting as border; the next
click goes to the pixel farthest from the border over all error pixels, i.e. the
interior-most point of the largest (deepest) error region; it is positive when
that region is a miss, negative when it is a false detection (equally deep: negative);
ties between pixels go to the first in row-major order. With an empty prediction the first click therefore lands
on the object's interior-most point. Masks are boolean ``H,W``; IoU of two empty
masks is 1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

__all__ = ["iou", "next_click", "click_session", "noc", "ClickSession"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty).

    >>> iou(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.5
    """
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _border_distance(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def next_click(gt: np.ndarray, pred: np.ndarray | None) -> tuple[int, int, bool] | None:
    """The simulated user's next click ``(row, col, positive)``, or None when ``pred`` equals ``gt``.

    >>> gt = np.zeros((7, 7), bool); gt[1:6, 1:6] = True
    >>> next_click(gt, None)
    (3, 3, True)
    >>> pred = np.ones((7, 7), bool)
    >>> next_click(gt, pred)  # the false ring is 1 px thick everywhere: first such pixel
    (0, 0, False)
    """
    gt = np.asarray(gt, bool)
    pred = np.zeros_like(gt) if pred is None else np.asarray(pred, bool)
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return None
    d_fn, d_fp = _border_distance(fn), _border_distance(fp)
    m_fn, m_fp = float(d_fn.max()), float(d_fp.max())
    positive = m_fn > m_fp  # ties go to a negative click, as in RITM's evaluation
    d = d_fn if positive else d_fp
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(r), int(c), bool(positive)


class ClickSession:
    """IoU after each simulated click for one object.

    ``ious[k]`` is the IoU after ``k + 1`` clicks; ``clicks`` the clicks placed.
    """

    def __init__(self, ious: list[float], clicks: list[tuple[int, int, bool]], seconds: list[float]):
        self.ious, self.clicks, self.seconds = ious, clicks, seconds

    def noc(self, threshold: float, max_clicks: int = 20) -> int:
        return noc(self.ious, threshold, max_clicks)

    def iou_at(self, k: int) -> float:
        """IoU after ``k`` clicks (the last value when the session stopped earlier, having reached its target)."""
        return self.ious[min(k, len(self.ious)) - 1]


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold`` IoU; ``max_clicks`` when never reached (the usual convention).

    >>> noc([0.5, 0.86, 0.91], 0.85), noc([0.5, 0.86, 0.91], 0.9), noc([0.5], 0.9, 20)
    (2, 3, 20)
    """
    for k, v in enumerate(ious[:max_clicks], 1):
        if v >= threshold:
            return k
    return max_clicks


def click_session(
    method: Callable[[list, np.ndarray | None], np.ndarray],
    gt: np.ndarray,
    *,
    max_clicks: int = 20,
    stop_iou: float | None = 0.9,
    min_clicks: int = 5,
    timer: Callable[[], float] | None = None,
) -> ClickSession:
    """Run the simulator against ``method(clicks, previous) -> mask`` for one object.

    Stops after ``max_clicks``, or once ``stop_iou`` is reached and at least
    ``min_clicks`` were placed (later IoUs are then not needed for NoC or IoU@k).
    After the target is reached further clicks keep the same rule.
    """
    import time

    timer = timer or time.perf_counter
    gt = np.asarray(gt, bool)
    clicks: list[tuple[int, int, bool]] = []
    pred = None
    ious: list[float] = []
    seconds: list[float] = []
    for _ in range(max_clicks):
        click = next_click(gt, pred)
        if click is None:  # perfect already: the user stops; IoU stays 1
            ious.append(1.0)
            seconds.append(0.0)
        else:
            clicks.append(click)
            t0 = timer()
            pred = np.asarray(method(list(clicks), pred), bool)
            seconds.append(timer() - t0)
            ious.append(iou(pred, gt))
        if stop_iou is not None and ious[-1] >= stop_iou and len(ious) >= min_clicks:
            break
    return ClickSession(ious, clicks, seconds)
