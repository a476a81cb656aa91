"""Seeded generator of CT-like 2-D body phantoms with organ and lesion labels.

Used to build ``sample_data/`` (train/val/test) when no real labelled set can be
shipped. Every image is a function of ``(seed, index)`` only, so
``python -m segcore make-sample-data`` regenerates the committed files
byte-for-byte with the same library versions.

Labels: 0 background (air, body wall, fat, other tissue), 1 organ (liver-like),
2 lesion (hypo- or hyper-dense focal lesion inside the organ).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASS_NAMES", "make_phantom", "write_sample_set"]

CLASS_NAMES = ("background", "organ", "lesion")
HU_OFFSET = 1024  # stored as uint16 PNG: value = HU + 1024


def _blob(shape, center, radius, rng, irregularity=0.15, harmonics=5, angle=0.0, aspect=1.0):
    """Boolean mask of a star-shaped blob with a smoothly perturbed radius."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dx * ca + dy * sa) / aspect
    v = -dx * sa + dy * ca
    theta = np.arctan2(v, u)
    rr = np.sqrt(u * u + v * v)
    r = np.ones_like(theta)
    for k in range(2, 2 + harmonics):
        r += rng.uniform(0, irregularity / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rr <= radius * r


def _smooth_noise(shape, rng, sigma):
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def make_phantom(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like slice in HU (float32 ``H,W``) and its label map (uint8 ``H,W``).

    Examples
    --------
    >>> img, lab = make_phantom(0, size=64)
    >>> img.shape, lab.shape, sorted(set(lab.ravel().tolist())) <= [0, 1, 2]
    ((64, 64), (64, 64), True)
    """
    rng = np.random.default_rng(seed)
    s = size / 256.0
    shape = (size, size)
    hu = np.full(shape, -1000.0, np.float32)
    label = np.zeros(shape, np.uint8)

    c = (size / 2 + rng.uniform(-8, 8) * s, size / 2 + rng.uniform(-8, 8) * s)
    body_r = rng.uniform(95, 115) * s
    body = _blob(shape, c, body_r, rng, 0.06, 3, rng.uniform(-0.2, 0.2), aspect=rng.uniform(1.15, 1.35))
    fat = body & ~_blob(shape, c, body_r - rng.uniform(6, 12) * s, rng, 0.04, 3, 0, aspect=1.25)
    hu[body] = rng.uniform(20, 38)
    hu[fat] = rng.uniform(-120, -80)

    # spine and a couple of bowel/vessel structures as distractors
    spine_c = (c[0] + rng.uniform(55, 70) * s, c[1] + rng.uniform(-6, 6) * s)
    spine = _blob(shape, spine_c, rng.uniform(13, 18) * s, rng, 0.1)
    hu[spine & body] = rng.uniform(500, 800)
    for _ in range(rng.integers(1, 4)):
        bc = (c[0] + rng.uniform(-50, 40) * s, c[1] + rng.uniform(10, 70) * s)
        b = _blob(shape, bc, rng.uniform(8, 20) * s, rng, 0.2) & body & ~spine
        hu[b] = rng.uniform(-30, 20) if rng.random() < 0.6 else rng.uniform(120, 200)

    # the organ: a large lobular region on the patient's right (image left)
    oc = (c[0] + rng.uniform(-25, 10) * s, c[1] - rng.uniform(25, 45) * s)
    organ = _blob(shape, oc, rng.uniform(45, 62) * s, rng, 0.22, 5, rng.uniform(-0.6, 0.6), rng.uniform(1.0, 1.4))
    organ &= body & ~fat & ~spine
    organ_hu = rng.uniform(62, 80)
    hu[organ] = organ_hu
    label[organ] = 1

    # lesions inside the organ
    ys, xs = np.nonzero(organ)
    n_les = int(rng.choice([0, 1, 1, 2, 2, 3]))
    for _ in range(n_les):
        if len(ys) == 0:
            break
        k = rng.integers(len(ys))
        r = rng.uniform(5, 18) * s
        les = _blob(shape, (ys[k], xs[k]), r, rng, 0.25, 4, rng.uniform(0, np.pi), rng.uniform(1.0, 1.5)) & organ
        if les.sum() < 20 * s * s:
            continue
        delta = rng.uniform(35, 80) * (-1 if rng.random() < 0.7 else 1)
        # soft rim: lesion edge blends over ~1 px
        hu[les] = organ_hu + delta
        label[les] = 2

    # texture, partial-volume blur and quantum noise
    tex = _smooth_noise(shape, rng, rng.uniform(2, 4) * s) * rng.uniform(4, 9)
    hu = np.where(body, hu + tex, hu)
    hu = cv2.GaussianBlur(hu, (0, 0), rng.uniform(0.6, 1.3) * s)
    hu += rng.standard_normal(shape).astype(np.float32) * rng.uniform(8, 18)
    return hu.astype(np.float32), label


def write_sample_set(out_dir: str | Path, counts: dict[str, int] | None = None, size: int = 256, seed: int = 2026) -> dict:
    """Write ``{split}/images/*.png`` (uint16, HU+1024) and ``{split}/masks/*.png`` (uint8 labels)."""
    counts = counts or {"train": 120, "val": 20, "test": 30}
    out_dir = Path(out_dir)
    offset = 0
    written = {}
    for split, n in counts.items():
        (out_dir / split / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lab = make_phantom(seed * 100000 + offset + i, size)
            stored = np.clip(np.rint(img + HU_OFFSET), 0, 4095).astype(np.uint16)
            name = f"{split}_{i:04d}.png"
            cv2.imwrite(str(out_dir / split / "images" / name), stored)
            cv2.imwrite(str(out_dir / split / "masks" / name), lab)
        offset += n
        written[split] = n
    return written
