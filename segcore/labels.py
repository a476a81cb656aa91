"""Label maps as files: the one PNG encoder/decoder, mask loading and ground-truth pairs.

Label maps are ``H,W`` uint8 arrays of class ids (0 = background). RGB images
(``H,W,3`` uint8) are encoded as colour PNGs. No TensorFlow here: the review
store, the workspace and the app read masks through this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

__all__ = ["png_bytes", "decode_png", "load_mask", "list_pairs", "load_gt_pairs"]


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG encoding of a label map (uint8), a 16-bit image or an RGB image (``H,W,3``).

    Examples
    --------
    >>> m = np.array([[0, 1], [2, 3]], np.uint8)
    >>> decode_png(png_bytes(m)).tolist()
    [[0, 1], [2, 3]]
    """
    a = np.asarray(arr)
    if a.ndim == 3:
        a = cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_RGB2BGR)
    elif a.ndim != 2:
        raise ValueError(f"png_bytes takes an H,W label map or an H,W,3 RGB image. Got shape {a.shape}.")
    ok, buf = cv2.imencode(".png", a if a.dtype == np.uint16 else a.astype(np.uint8))
    if not ok:
        raise ValueError(f"Could not encode an array of shape {a.shape} as PNG.")
    return buf.tobytes()


def content_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label map's values, dtype and shape (a cache key that changes whenever the mask does).

    >>> a = np.zeros((2, 3), np.uint8)
    >>> content_digest(a) == content_digest(a.copy()), content_digest(a) == content_digest(a.reshape(3, 2))
    (True, False)
    """
    arr = np.ascontiguousarray(labels)
    return hashlib.sha256(arr.tobytes() + f"{arr.dtype.str}{arr.shape}".encode()).hexdigest()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes written by :func:`png_bytes` (label maps come back as ``H,W`` uint8)."""
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if out is None:
        raise ValueError("Could not decode the stored PNG (corrupt bytes).")
    return out


def load_mask(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """A label map from a PNG file (first channel if it has several), as uint8."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"Could not read mask '{path}': expected a PNG label map.")
    if m.ndim == 3:
        m = m[..., 0]
    if num_classes is not None and m.max() >= num_classes:
        raise ValueError(f"Mask '{path}' has label {m.max()} but the model has {num_classes} classes.")
    return m.astype(np.uint8)


def list_pairs(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Images in ``folder/images`` with a same-named mask in ``folder/masks``."""
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"Expected '{img_dir}' and '{mask_dir}' folders with same-named files.")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    pairs = [(p, mask_dir / p.name) for p in images if (mask_dir / p.name).is_file()]
    if not pairs:
        raise FileNotFoundError(f"No image/mask pairs with matching names in '{folder}'.")
    return [a for a, _ in pairs], [b for _, b in pairs]


def load_gt_pairs(folder: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], list]:
    """``(images, masks, scans)`` of a folder with ``images/`` and ``masks/``: 2-D raw images at their own size."""
    from .io import load_scan

    imgs, masks = list_pairs(folder)
    scans = [load_scan(p) for p in imgs]
    return [s.slice() for s in scans], [load_mask(p) for p in masks], scans
