"""Instance corrections on an instance-id map: delete, merge, split with a line, add from a mask.

An instance-id map is an integer ``H,W`` array, 0 for background and one
positive id per instance (ids need not be consecutive). Every function
returns a new array (the input is never modified) and raises ``ValueError``
naming the id or shape it could not use. Points are ``(x, y)`` pixel
coordinates (column, row), as a canvas reports a click; pixel ``(x, y)``
covers ``[x, x + 1) x [y, y + 1)`` and its centre is ``(x + 0.5, y + 0.5)``.
For lists of masks use :func:`ids_from_masks` / :func:`masks_from_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "add_instance",
    "delete_instance",
    "ids_from_masks",
    "masks_from_ids",
    "merge_instances",
    "relabel_sequential",
    "split_instance",
]


def _check_ids(ids) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"Expected an integer H,W instance-id map. Got shape {a.shape}, dtype {a.dtype}.")
    return a


def _check_label(ids: np.ndarray, label: int) -> None:
    if label == 0 or not (ids == label).any():
        present = np.unique(ids)
        raise ValueError(f"Instance {label} is not in the map; present ids: {present[present != 0].tolist()}.")


def ids_from_masks(masks: np.ndarray, scores: Sequence[float] | None = None) -> np.ndarray:
    """Instance-id map (int32, ids ``1..N`` in the order of ``masks``) from bool masks ``(N,H,W)``.

    Where masks overlap, the higher score wins (the smaller mask without scores).

    >>> m = np.zeros((2, 1, 3), bool); m[0, 0, :2] = True; m[1, 0, 1:] = True
    >>> ids_from_masks(m, scores=[0.9, 0.5]).tolist()
    [[1, 1, 2]]
    """
    m = np.asarray(masks, bool)
    if m.ndim != 3:
        raise ValueError(f"Expected masks of shape (N, H, W). Got {m.shape}.")
    key = -m.reshape(len(m), -1).sum(1) if scores is None else np.asarray(scores, np.float64)
    if len(key) != len(m):
        raise ValueError(f"Got {len(m)} masks but {len(key)} scores.")
    out = np.zeros(m.shape[1:], np.int32)
    for k in np.argsort(key, kind="stable"):  # lowest priority painted first
        out[m[k]] = k + 1
    return out


def masks_from_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (N,H,W) bool, labels (N,))`` in increasing id order.

    >>> masks_from_ids(np.array([[0, 3], [3, 1]]))[1].tolist()
    [1, 3]
    """
    a = _check_ids(ids)
    labels = np.unique(a)
    labels = labels[labels != 0]
    return a[None] == labels[:, None, None], labels.astype(np.int64)


def delete_instance(ids: np.ndarray, label: int) -> np.ndarray:
    """The map with instance ``label`` set to background.

    >>> delete_instance(np.array([[1, 2]]), 2).tolist()
    [[1, 0]]
    """
    a = _check_ids(ids)
    _check_label(a, label)
    out = a.copy()
    out[a == label] = 0
    return out


def merge_instances(ids: np.ndarray, keep: int, *others: int) -> np.ndarray:
    """The map with instances ``others`` relabelled ``keep`` (one instance, possibly in several pieces).

    >>> merge_instances(np.array([[1, 2, 3]]), 1, 3).tolist()
    [[1, 2, 1]]
    """
    a = _check_ids(ids)
    if not others:
        raise ValueError("merge_instances needs at least two instances: got only one id.")
    for lab in (keep, *others):
        _check_label(a, lab)
    out = a.copy()
    out[np.isin(a, others)] = keep
    return out


def split_instance(ids: np.ndarray, label: int, p0: tuple[float, float], p1: tuple[float, float],
                   new_label: int | None = None) -> tuple[np.ndarray, int]:
    """Cut instance ``label`` in two along the straight line through ``p0`` and ``p1`` (``(x, y)`` points).

    Pixels whose centres lie on the left of the direction ``p0 -> p1`` (or on
    the line) keep ``label``; the others get ``new_label`` (default: the
    largest id + 1).

    Returns
    -------
    tuple
        ``(new map, new_label)``.

    Raises
    ------
    ValueError
        If the points coincide or the line leaves the whole instance on one side.

    >>> a = np.ones((2, 4), np.int32)
    >>> split_instance(a, 1, (2, -1), (2, 5))[0].tolist()
    [[2, 2, 1, 1], [2, 2, 1, 1]]
    """
    a = _check_ids(ids)
    _check_label(a, label)
    (x0, y0), (x1, y1) = (tuple(float(v) for v in p) for p in (p0, p1))
    dx, dy = x1 - x0, y1 - y0
    if dx == 0 and dy == 0:
        raise ValueError(f"The split line needs two different points. Got {p0} twice.")
    ys, xs = np.nonzero(a == label)
    side = dx * (ys + 0.5 - y0) - dy * (xs + 0.5 - x0)  # > 0: right of p0 -> p1 in image coordinates (y down)
    move = side > 0
    if move.all() or not move.any():
        raise ValueError(f"The line through {p0} and {p1} does not cross instance {label}.")
    new = int(a.max()) + 1 if new_label is None else int(new_label)
    if new <= 0 or (new != label and (a == new).any()):
        raise ValueError(f"new_label {new} must be a positive id not already in the map.")
    out = a.copy()
    out[ys[move], xs[move]] = new
    return out, new


def add_instance(ids: np.ndarray, mask: np.ndarray, *, label: int | None = None,
                 overwrite: bool = False) -> tuple[np.ndarray, int]:
    """Add an instance drawn as a bool mask.

    With ``overwrite=False`` the new instance only takes background pixels
    (existing instances keep theirs); with ``True`` it takes all of ``mask``.

    Returns
    -------
    tuple
        ``(new map, label)``; ``label`` defaults to the largest id + 1.

    >>> add_instance(np.array([[1, 0, 0]]), np.array([[True, True, False]]))[0].tolist()
    [[1, 2, 0]]
    """
    a = _check_ids(ids)
    m = np.asarray(mask, bool)
    if m.shape != a.shape:
        raise ValueError(f"Mask shape {m.shape} differs from the instance map's {a.shape}.")
    lab = int(a.max()) + 1 if label is None else int(label)
    if lab <= 0 or (a == lab).any():
        raise ValueError(f"label {lab} must be a positive id not already in the map.")
    paint = m if overwrite else m & (a == 0)
    if not paint.any():
        raise ValueError("The new instance is empty" + ("" if overwrite else " (every pixel of the mask already "
                                                        "belongs to an instance; use overwrite=True)") + ".")
    out = a.copy()
    if np.iinfo(out.dtype).max < lab:
        out = out.astype(np.int64)
    out[paint] = lab
    return out, lab


def relabel_sequential(ids: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Ids renumbered ``1..N`` in increasing order, and the ``{old: new}`` mapping.

    >>> relabel_sequential(np.array([[0, 7, 3]]))[0].tolist()
    [[0, 2, 1]]
    """
    a = _check_ids(ids)
    labels = np.unique(a)
    labels = labels[labels != 0]
    mapping = {int(v): k for k, v in enumerate(labels, 1)}
    out = np.zeros(a.shape, np.int32)
    for old, new in mapping.items():
        out[a == old] = new
    return out, mapping
