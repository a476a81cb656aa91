"""Rendering label maps over scans (overlay, contours, diff) and writing results."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import Scan
from .labels import png_bytes

__all__ = ["instances_image", "PALETTE", "overlay", "contours", "diff_image", "to_rgb", "png_bytes", "save_label_nifti",
           "nifti_bytes", "colorize"]

# RGB per class (0 = background, unused)
PALETTE = np.array([
    [0, 0, 0], [46, 204, 113], [231, 76, 60], [52, 152, 219], [241, 196, 15],
    [155, 89, 182], [26, 188, 156], [230, 126, 34], [236, 240, 241], [149, 165, 166],
], dtype=np.uint8)


def to_rgb(gray_u8: np.ndarray) -> np.ndarray:
    g = np.asarray(gray_u8)
    if g.ndim == 3:
        return g.astype(np.uint8)
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=-1)


def colorize(labels: np.ndarray) -> np.ndarray:
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def overlay(gray_u8: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours over the image where ``labels > 0``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Got {alpha}.")
    base = to_rgb(gray_u8).astype(np.float32)
    col = colorize(labels).astype(np.float32)
    fg = (np.asarray(labels) > 0)[..., None]
    out = np.where(fg, (1 - alpha) * base + alpha * col, base)
    return np.clip(out, 0, 255).astype(np.uint8)


def contours(gray_u8: np.ndarray, labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Class outlines drawn over the image."""
    out = to_rgb(gray_u8).copy()
    for c in sorted(int(v) for v in np.unique(labels) if v != 0):
        cs, _ = cv2.findContours((labels == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, tuple(int(v) for v in PALETTE[c % len(PALETTE)]), thickness)
    return out


def diff_image(gray_u8: np.ndarray, raw: np.ndarray, refined: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Green where refinement added foreground/changed class, red where it removed foreground."""
    base = to_rgb(gray_u8).astype(np.float32) * 0.6
    added = (refined != raw) & (refined > 0)
    removed = (refined != raw) & (refined == 0)
    out = base.copy()
    out[added] = (1 - alpha) * out[added] + alpha * np.array([40, 220, 90])
    out[removed] = (1 - alpha) * out[removed] + alpha * np.array([235, 60, 60])
    return np.clip(out, 0, 255).astype(np.uint8)


def _to_nifti_layout(labels: np.ndarray) -> np.ndarray:
    # inverse of segcore.io's D,H,W = z,y,x transpose
    if labels.ndim == 3:
        return np.transpose(labels, (2, 1, 0))
    return labels.T


def nifti_bytes(labels: np.ndarray, scan: Scan | None = None) -> bytes:
    """A gzip-compressed NIfTI label map on the scan's grid (its affine)."""
    import gzip

    import nibabel as nib

    affine = scan.affine if scan is not None and scan.affine is not None else np.eye(4)
    img = nib.Nifti1Image(_to_nifti_layout(np.asarray(labels).astype(np.uint8)), affine)
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), mtime=0)


def save_label_nifti(labels: np.ndarray, scan: Scan | None, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(nifti_bytes(labels, scan))
    return path


def instances_image(gray_u8: np.ndarray, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    alpha: float = 0.5) -> np.ndarray:
    """Each instance in its own colour, with its box and score (boxes are x, y, w, h)."""
    out = to_rgb(gray_u8).astype(np.float32)
    rng = np.random.default_rng(7)
    colours = rng.integers(70, 256, (max(len(masks), 1), 3)).astype(np.float32)
    for m, c in zip(masks, colours):
        out[m] = (1 - alpha) * out[m] + alpha * c
    out = np.clip(out, 0, 255).astype(np.uint8)
    for k, (b, s, c) in enumerate(zip(boxes, scores, colours)):
        x, y, w, h = (int(round(v)) for v in b)
        col = tuple(int(v) for v in c)
        cv2.rectangle(out, (x, y), (x + w, y + h), col, 1)
        cv2.putText(out, f"{k + 1}:{s:.2f}", (x, max(y - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, col, 1, cv2.LINE_AA)
    return out
