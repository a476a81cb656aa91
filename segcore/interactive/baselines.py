"""Classical references for click segmentation: OpenCV GrabCut seeded from the prompt, and the brush.

:func:`grabcut_segment` takes the same arguments as :func:`segcore.interactive.segment`
and frames the prompt with the same window (at the image's own resolution), so the
two differ only in what decides the object. Inside the window: pixels within a few
pixels of a positive click are definite foreground, of a negative click definite
background; a disk around positive clicks (radius ``seed_fraction`` of the window)
and the previous mask are probable foreground; the rest probable background, and
the window's edge definite background (outside a box, everything is background).
The window is enlarged, as for the network, when the object reaches its edge.

:func:`brush_session` is the manual baseline: the simulated user paints (or
erases) one round brush dab of ``radius`` pixels per action, placed where the
click simulator would click; it counts dabs and painted pixels.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .encode import disk, normalise_crop
from .geometry import Window, window_for_prompt
from .segment import _check_image, _keep_clicked, _touches_inner_edge, check_prompt
from .simulate import iou, next_click

__all__ = ["grabcut_segment", "brush_session"]


def _grabcut_window(img, window: Window, clicks, box, previous, iterations, seed_fraction, hard_radius):
    r0, c0, r1, c1 = window.image_bounds(img.shape)
    sub = img[r0:r1, c0:c1]
    u8 = (normalise_crop(sub)[..., 0] * 255).astype(np.uint8)
    bgr = cv2.merge([u8, u8, u8])
    h, w = sub.shape
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    frame = np.zeros((h, w), bool)
    frame[[0, -1], :] = True
    frame[:, [0, -1]] = True
    # the window edge is background unless it is the image's edge
    inner = np.zeros((h, w), bool)
    if r0 > 0:
        inner[0] = True
    if r1 < img.shape[0]:
        inner[-1] = True
    if c0 > 0:
        inner[:, 0] = True
    if c1 < img.shape[1]:
        inner[:, -1] = True
    mask[frame & inner] = cv2.GC_BGD
    if previous is not None:
        mask[previous[r0:r1, c0:c1]] = cv2.GC_PR_FGD
    if box is not None:
        inside = np.zeros((h, w), bool)
        inside[max(0, int(np.ceil(box[0])) - r0):int(np.floor(box[2])) + 1 - r0,
               max(0, int(np.ceil(box[1])) - c0):int(np.floor(box[3])) + 1 - c0] = True
        mask[~inside] = cv2.GC_BGD
        if previous is None:
            mask[inside] = cv2.GC_PR_FGD
    for r, c, pos in clicks:
        if pos and previous is None:
            mask[disk((h, w), (r - r0, c - c0), max(3.0, seed_fraction * window.side))] = cv2.GC_PR_FGD
    for r, c, pos in clicks:
        mask[disk((h, w), (r - r0, c - c0), hard_radius)] = cv2.GC_FGD if pos else cv2.GC_BGD
    if not (mask == cv2.GC_BGD).any() and not (mask == cv2.GC_PR_BGD).any():
        return np.ones((h, w), bool), (r0, c0, r1, c1)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a class without samples (e.g. a window filled by definite foreground)
        return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)), (r0, c0, r1, c1)
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)), (r0, c0, r1, c1)


def grabcut_segment(
    image: np.ndarray,
    clicks: Sequence[tuple[float, float, bool]],
    *,
    box: tuple[float, float, float, float] | None = None,
    previous: np.ndarray | None = None,
    iterations: int = 5,
    min_side: float = 64.0,
    margin: float = 0.4,
    seed_fraction: float = 0.08,
    hard_radius: float = 2.0,
    max_expansions: int = 2,
) -> np.ndarray:
    """GrabCut (Rother et al. 2004, OpenCV) from the same prompt as :func:`segcore.interactive.segment`.

    Returns a new boolean ``H,W`` mask; raises ``ValueError`` for the same bad inputs.
    """
    img = _check_image(image)
    clicks, box, previous = check_prompt(img.shape, clicks, box, previous)
    points = [(r, c) for r, c, _ in clicks]
    window = window_for_prompt(img.shape, points, box=box, previous=previous, size=1, min_side=min_side,
                               margin=margin)
    args = (iterations, seed_fraction, hard_radius)
    block, bounds = _grabcut_window(img, window, clicks, box, previous, *args)
    for _ in range(max_expansions if box is None else 0):
        if not _touches_inner_edge(block, bounds, img.shape) or window.side >= 2 * max(img.shape):
            break
        full = np.zeros(img.shape, bool)
        full[bounds[0]:bounds[2], bounds[1]:bounds[3]] = block
        grown = window_for_prompt(img.shape, points, previous=full, size=1, min_side=min_side, margin=margin)
        window = Window(grown.center_r, grown.center_c, min(max(grown.side, 1.5 * window.side), 2.0 * max(img.shape)),
                        1)
        block, bounds = _grabcut_window(img, window, clicks, box, previous, *args)
    out = previous.copy() if previous is not None else np.zeros(img.shape, bool)
    out[bounds[0]:bounds[2], bounds[1]:bounds[3]] = block
    return _keep_clicked(out, clicks)


def brush_session(gt: np.ndarray, radius: float, *, threshold: float = 0.9, max_dabs: int = 2000) -> dict:
    """Manual painting with a round brush, one dab per simulated click, until ``threshold`` IoU.

    Returns ``{"dabs": n or None, "painted_px": pixels changed, "ious": [...]}``;
    ``dabs`` is None when ``max_dabs`` did not reach the threshold (e.g. a brush
    wider than the object's thin parts).

    >>> gt = np.zeros((20, 20), bool); gt[5:15, 5:15] = True
    >>> r = brush_session(gt, 4, threshold=0.8)
    >>> r["dabs"] is not None and r["ious"][-1] >= 0.8
    True
    """
    gt = np.asarray(gt, bool)
    pred = np.zeros_like(gt)
    painted = 0
    ious = []
    for k in range(1, max_dabs + 1):
        click = next_click(gt, pred)
        if click is None:
            return {"dabs": k - 1, "painted_px": painted, "ious": ious}
        d = disk(gt.shape, click[:2], radius)
        new = pred | d if click[2] else pred & ~d
        painted += int((new != pred).sum())
        if (new == pred).all():  # the brush cannot change anything here any more
            break
        pred = new
        ious.append(iou(pred, gt))
        if ious[-1] >= threshold:
            return {"dabs": k, "painted_px": painted, "ious": ious}
    return {"dabs": None, "painted_px": painted, "ious": ious}
