"""``segment()``: the object a user points at, from clicks and/or a box, refined click by click.

Conventions: ``image`` is one ``H,W`` slice in raw pixel values (any dtype and
range: CT HU, 16-bit PNG, MR, fluorescence counts); ``H,W,1`` is squeezed and
``H,W,3``/``H,W,4`` colour is averaged to grey. ``clicks`` are ``(row, col,
positive)`` in image pixel coordinates (pixel centres at integers), ``box`` is
``(row0, col0, row1, col1)`` inclusive, ``previous`` the ``H,W`` mask returned by
the last call for the same object. The result is a new boolean ``H,W`` mask
(empty when the network finds nothing); inputs are never mutated.

Sequence: frame the prompt in a window (:func:`~segcore.interactive.geometry.window_for_prompt`),
encode it (:func:`~segcore.interactive.encode.encode`), predict (with ``flip_average``, the
mean over the window's 4 flips), and paste the probabilities back. When the object predicted
by the unflipped pass reaches the window's edge inside the image, or the window that would
frame it with its context margin is more than ``1 + reframe`` times larger (an object that
fills the one-click window), the window grows (at least 1.5x) and the prediction is
repeated, at most ``max_expansions`` times. With a box, the mask is clipped to the box.
Every click then ends on its own
side: a click whose pixel the threshold put on the wrong side moves the threshold, within
``click_snap_radius`` pixels of it, to the click's own probability (the boundary moves
along the network's probability contours to pass through the click). With positive
clicks, predicted parts holding none of them are dropped.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .encode import disk, encode
from .geometry import Window, paste, window_for_prompt
from .model import ClickModel, InteractiveConfig, load_model

__all__ = ["segment", "check_prompt"]


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3].astype(np.float32).mean(-1)
    if img.ndim != 2:
        raise ValueError(f"Expected a 2-D image slice (H,W), H,W,1 or H,W,3 colour. Got an array of shape "
                         f"{img.shape} ({img.ndim}-D): pass one slice of a volume, e.g. volume[z].")
    if img.size == 0:
        raise ValueError(f"The image is empty (shape {img.shape}): it needs at least one pixel.")
    if img.dtype == bool or not np.issubdtype(img.dtype, np.number):
        raise ValueError(f"Expected numeric pixel values. Got dtype {img.dtype}.")
    img = img.astype(np.float32)
    finite = np.isfinite(img)
    if not finite.all():
        if not finite.any():
            raise ValueError("The image has no finite pixel values (all NaN or infinite).")
        img = np.where(finite, img, img[finite].min())
    return img


def check_prompt(shape: tuple[int, int], clicks, box, previous) -> tuple[list, tuple | None, np.ndarray | None]:
    """Validate a prompt against an image of ``shape``; returns clean ``(clicks, box, previous)``.

    Raises
    ------
    ValueError
        A click outside the image or not ``(row, col, positive)``, a box that is
        inverted or reaches outside the image, a ``previous`` mask of another
        shape, or neither clicks nor a box.
    """
    h, w = shape
    out = []
    for k, c in enumerate(clicks or []):
        try:
            r, col, pos = c
            r, col = float(r), float(col)
        except (TypeError, ValueError):
            raise ValueError(f"Click {k} must be (row, col, positive). Got {c!r}.") from None
        if not (np.isfinite(r) and np.isfinite(col)):
            raise ValueError(f"Click {k} has a non-finite coordinate: {c!r}.")
        if not (-0.5 <= r < h - 0.5 and -0.5 <= col < w - 0.5):
            raise ValueError(f"Click {k} at (row={r:g}, col={col:g}) is outside the image: rows must be in "
                             f"[0, {h - 1}] and cols in [0, {w - 1}] for an image of shape ({h}, {w}).")
        out.append((r, col, bool(pos)))
    if box is not None:
        try:
            r0, c0, r1, c1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"box must be (row0, col0, row1, col1). Got {box!r}.") from None
        if r1 < r0 or c1 < c0:
            raise ValueError(f"The box is inverted: (row0, col0, row1, col1) = {tuple(box)} needs row0 <= row1 and "
                             "col0 <= col1.")
        if r0 < -0.5 or c0 < -0.5 or r1 >= h - 0.5 or c1 >= w - 0.5:
            raise ValueError(f"The box {tuple(box)} reaches outside the image of shape ({h}, {w}): rows must be in "
                             f"[0, {h - 1}] and cols in [0, {w - 1}].")
        box = (r0, c0, r1, c1)
    if previous is not None:
        previous = np.asarray(previous)
        if previous.shape != (h, w):
            raise ValueError(f"previous mask has shape {previous.shape} but the image is ({h}, {w}): pass the "
                             "mask returned by the last call for this image, or None.")
        previous = previous.astype(bool)
    if not out and box is None:
        raise ValueError("No prompt: give at least one click (row, col, positive) or a box (row0, col0, row1, col1).")
    return out, box, previous


def _touches_inner_edge(block: np.ndarray, bounds: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Does the mask block reach an edge of the window that is not the image's edge?"""
    if block.size == 0 or not block.any():
        return False
    r0, c0, r1, c1 = bounds
    h, w = shape
    return bool((r0 > 0 and block[0].any()) or (r1 < h and block[-1].any())
                or (c0 > 0 and block[:, 0].any()) or (c1 < w and block[:, -1].any()))


def _keep_clicked(mask: np.ndarray, clicks: Sequence[tuple[float, float, bool]]) -> np.ndarray:
    pos = [(int(round(r)), int(round(c))) for r, c, p in clicks if p]
    if not pos or not mask.any():
        return mask
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = {int(lab[r, c]) for r, c in pos} - {0}
    if not keep:
        return mask
    return np.isin(lab, sorted(keep))


def _snap_clicks(mask, block, bounds, clicks, radius, threshold):
    """Make every click's pixel take its side by moving the threshold locally to the click's own probability.

    For a positive click on a pixel below the threshold, the pixels within ``radius`` of it that the network
    rates at least as likely object (and connected to it) join the mask; for a negative click on a pixel above
    it, those rated at most as likely leave it. Later clicks win. Clicks outside the predicted block are left.
    """
    r0, c0, r1, c1 = bounds
    out = mask.copy()
    for r, c, pos in clicks:
        ri, ci = round(r), round(c)
        if out[ri, ci] == pos or not (r0 <= ri < r1 and c0 <= ci < c1):
            continue
        q = float(block[ri - r0, ci - c0])
        near = disk(out.shape, (ri, ci), radius)[r0:r1, c0:c1]
        side = (block >= min(q, threshold)) if pos else (block <= max(q, threshold))
        cand = (near & side).astype(np.uint8)
        cand[ri - r0, ci - c0] = 1
        _, lab = cv2.connectedComponents(cand, connectivity=8)
        region = lab == lab[ri - r0, ci - c0]
        sub = out[r0:r1, c0:c1]
        sub[region] = pos
    return out


def _predict_window(model: ClickModel, image, window: Window, clicks, box, previous):
    """Probabilities in ``window`` pasted into the image: ``(block, bounds, plain)``.

    ``block`` is what the mask is cut from: with ``flip_average``, the mean over the window's 4 flips (one
    batched call). ``plain`` is the unflipped pass alone in network space (None without ``flip_average``, when
    it is ``block``); it decides whether the window must grow: an object filling the window is ambiguous, the
    flips may disagree on it, and their mean would hide that it is truncated.
    """
    cfg = model.config
    x = encode(image, window, clicks, box=box, previous=previous, click_radius=cfg.click_radius,
               percentiles=cfg.percentiles)
    plain = None
    if cfg.flip_average:
        p = model.predict(np.stack([x, x[::-1], x[:, ::-1], x[::-1, ::-1]]))
        prob, plain = (p[0] + p[1][::-1] + p[2][:, ::-1] + p[3][::-1, ::-1]) / 4.0, p[0]
    else:
        prob = model.predict(x)[0]
    block, bounds = paste(prob, window, image.shape)
    return block, bounds, plain


def segment(
    image: np.ndarray,
    clicks: Sequence[tuple[float, float, bool]],
    *,
    box: tuple[float, float, float, float] | None = None,
    previous: np.ndarray | None = None,
    model: ClickModel | None = None,
) -> np.ndarray:
    """Segment the object indicated by clicks and/or a box (class-agnostic).

    Parameters
    ----------
    image : array, ``H,W``
        One slice in raw pixel values (see the module docstring for accepted layouts).
    clicks : list of ``(row, col, positive)``
        Image pixel coordinates; ``positive=False`` marks background (remove a leak).
    box : ``(row0, col0, row1, col1)``, optional
        Inclusive bounding box of the object.
    previous : bool array ``H,W``, optional
        The mask returned by the previous call for this object (iterative correction).
    model : ClickModel, optional
        A loaded model (:func:`load_model`); default: the shipped one, loaded once.

    Returns
    -------
    numpy.ndarray
        Boolean ``H,W`` mask. Deterministic: the same inputs give the same mask.

    Raises
    ------
    ValueError
        Bad image (not 2-D, empty, non-numeric) or bad prompt (see :func:`check_prompt`).
    """
    img = _check_image(image)
    clicks, box, previous = check_prompt(img.shape, clicks, box, previous)
    model = model or load_model()
    cfg: InteractiveConfig = model.config
    points = [(r, c) for r, c, _ in clicks]
    window = window_for_prompt(img.shape, points, box=box, previous=previous, size=cfg.net_size,
                               min_side=cfg.min_side, margin=cfg.margin)
    block, bounds, plain = _predict_window(model, img, window, clicks, box, previous)
    for _ in range(cfg.max_expansions if box is None else 0):
        fg = (block if plain is None else paste(plain, window, img.shape)[0]) >= cfg.threshold
        touches = _touches_inner_edge(fg, bounds, img.shape)
        if window.side >= 2 * max(img.shape) or not (touches or cfg.reframe > 0):
            break
        full = np.zeros(img.shape, bool)
        full[bounds[0]:bounds[2], bounds[1]:bounds[3]] = fg
        full = _keep_clicked(full, clicks)
        grown = window_for_prompt(img.shape, points, box=box, previous=full, size=cfg.net_size,
                                  min_side=cfg.min_side, margin=cfg.margin)
        if not touches and not (cfg.reframe > 0 and grown.side > (1.0 + cfg.reframe) * window.side):
            break  # the object lies inside the window with its context margin
        side = max(grown.side, 1.5 * window.side)  # a truncated object is larger than it looks: grow fast
        window = Window(grown.center_r, grown.center_c, min(side, 2.0 * max(img.shape)), cfg.net_size)
        block, bounds, plain = _predict_window(model, img, window, clicks, box, previous)
    out = previous.copy() if previous is not None else np.zeros(img.shape, bool)
    r0, c0, r1, c1 = bounds
    out[r0:r1, c0:c1] = block >= cfg.threshold
    if box is not None:
        inside = np.zeros_like(out)
        inside[int(np.ceil(box[0])):int(np.floor(box[2])) + 1, int(np.ceil(box[1])):int(np.floor(box[3])) + 1] = True
        out &= inside
    if cfg.click_snap_radius > 0:
        out = _snap_clicks(out, block, bounds, clicks, cfg.click_snap_radius, cfg.threshold)
    if cfg.click_force_radius > 0:
        for r, c, pos in clicks:  # later clicks win over earlier ones
            out[disk(out.shape, (r, c), cfg.click_force_radius)] = pos
    if cfg.keep_clicked_components:
        out = _keep_clicked(out, clicks)
    return out
