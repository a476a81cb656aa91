"""Instance-labelled phantoms (touching, overlapping nucleus/lesion-like blobs) and a COCO loader."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ["ensure_train_split", "instances_to_targets", "load_coco", "make_instance_phantom", "write_instance_set"]

# The committed set holds only the test split; the training split is regenerated (identically) on demand.
DEFAULT_COUNTS = {"train": 160, "test": 40}


def make_instance_phantom(seed: int, size: int = 128, max_objects: int = 9, *, min_objects: int = 3,
                          object_scale: float | None = None):
    """Image (float32 ``H,W`` in ~[0,1]) and instance ids (uint16 ``H,W``, 0 background).

    Blobs are ellipses of varied size and orientation, often touching or
    overlapping (a later blob occludes an earlier one), each brighter in its
    centre so touching objects can be told apart, on a textured background.
    Radii are 5-11 % of ``object_scale`` (default ``size``): a large scene with
    the objects of a 128-pixel phantom is ``size=512, object_scale=128`` with
    16 times the object count.
    """
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    ids = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    object_scale = size if object_scale is None else object_scale
    n = int(rng.integers(min_objects, max_objects + 1))
    centres: list[tuple[float, float]] = []
    k = 0
    for _ in range(n * 4):
        if k == n:
            break
        r = rng.uniform(0.05, 0.11) * object_scale
        if centres and rng.random() < 0.6:  # touch or overlap an existing object
            cy, cx = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            d = r * rng.uniform(1.3, 2.0)
            cy, cx = cy + d * np.sin(ang), cx + d * np.cos(ang)
        else:
            cy, cx = rng.uniform(r, size - r, 2)
        if not (r <= cy <= size - r and r <= cx <= size - r):
            continue
        a, b = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.65, 1.0)
        t = rng.uniform(0, np.pi)
        y0, y1 = max(int(cy - 1.3 * r) - 1, 0), min(int(cy + 1.3 * r) + 2, size)  # the ellipse's bounding square
        x0, x1 = max(int(cx - 1.3 * r) - 1, 0), min(int(cx + 1.3 * r) + 2, size)
        u = ((xx[y0:y1, x0:x1] - cx) * np.cos(t) + (yy[y0:y1, x0:x1] - cy) * np.sin(t)) / a
        v = (-(xx[y0:y1, x0:x1] - cx) * np.sin(t) + (yy[y0:y1, x0:x1] - cy) * np.cos(t)) / b
        d2 = np.full((size, size), np.inf, np.float32)
        d2[y0:y1, x0:x1] = u * u + v * v
        m = d2 <= 1.0
        if m.sum() < 20:
            continue
        k += 1
        ids[m] = k
        img[m] = rng.uniform(0.55, 0.85) * (1.0 - 0.45 * d2[m])
        centres.append((cy, cx))
    # relabel to consecutive ids of visible objects
    areas = np.bincount(ids.ravel(), minlength=k + 1)
    vis = [i for i in range(1, k + 1) if areas[i] >= 15]
    lut = np.zeros(k + 1, np.uint16)
    lut[vis] = np.arange(1, len(vis) + 1)
    out = lut[ids]
    bg = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 3) * 0.05 + 0.15
    img = np.where(out > 0, img, bg)
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.standard_normal((size, size)).astype(np.float32) * 0.03
    return np.clip(img, 0, 1).astype(np.float32), out


def write_instance_set(out_dir, counts=None, size: int = 128, seed: int = 4242) -> dict:
    """PNG images (uint8), PNG instance-id maps (uint16) and a COCO JSON per split."""
    from ..export import rle_encode

    counts = counts or DEFAULT_COUNTS
    out_dir = Path(out_dir)
    offset = 0
    for split, n in counts.items():
        d = out_dir / split
        (d / "images").mkdir(parents=True, exist_ok=True)
        (d / "instances").mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "lesion"}]}
        aid = 1
        for i in range(n):
            img, ids = make_instance_phantom(seed * 10000 + offset + i, size)
            name = f"{split}_{i:04d}.png"
            cv2.imwrite(str(d / "images" / name), np.rint(img * 255).astype(np.uint8))
            cv2.imwrite(str(d / "instances" / name), ids)
            coco["images"].append({"id": i + 1, "file_name": f"images/{name}", "height": size, "width": size})
            for j in range(1, int(ids.max()) + 1):
                m = ids == j
                ys, xs = np.nonzero(m)
                coco["annotations"].append({
                    "id": aid, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": int(m.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                    "segmentation": rle_encode(m)})
                aid += 1
        (d / "coco.json").write_text(json.dumps(coco))
        offset += n
    return counts


def ensure_train_split(data_dir: str | Path) -> Path:
    """Write ``data_dir/train`` if missing: the same files ``write_instance_set`` made (train comes first)."""
    d = Path(data_dir)
    if not (d / "train" / "images").is_dir():
        write_instance_set(d, {"train": DEFAULT_COUNTS["train"]})
    return d / "train"


def load_coco(json_path: str | Path):
    """Images and per-image ``(masks N,H,W bool, classes N)`` from a COCO JSON (polygons, RLE or compressed RLE).

    Image paths are relative to the JSON file's folder; uint8 images are scaled to [0, 1]. Crowd annotations
    are skipped; classes are the category ids. (:func:`segcore.instances.coco.read_coco` gives id maps.)
    """
    from .coco import _read_image, decode_segmentation

    json_path = Path(json_path)
    coco = json.loads(json_path.read_text())
    by_image: dict[int, list] = {}
    for a in coco.get("annotations", []):
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for im in coco["images"]:
        img = _read_image(json_path.parent / im["file_name"])
        h, w = im["height"], im["width"]
        anns = by_image.get(im["id"], [])
        masks = [decode_segmentation(a["segmentation"], h, w) for a in anns]
        masks_arr = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        out.append((img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0), masks_arr,
                    np.asarray([int(a["category_id"]) for a in anns], np.int32)))
    return out


def instances_to_targets(ids: np.ndarray, max_instances: int = 16, classes=None):
    """Instance-id map -> padded ``boxes (M,4 y1x1y2x2)``, ``masks (M,H,W)``, ``classes (M,)``, ``valid (M,)``.

    ``classes`` maps an instance id to its class index (1 for all when omitted).
    """
    h, w = ids.shape
    boxes = np.zeros((max_instances, 4), np.float32)
    masks = np.zeros((max_instances, h, w), np.float32)
    classes_of = classes
    classes = np.zeros((max_instances,), np.int32)
    valid = np.zeros((max_instances,), np.float32)
    for j, i in enumerate([v for v in np.unique(ids) if v != 0][:max_instances]):
        m = ids == i
        ys, xs = np.nonzero(m)
        boxes[j] = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        masks[j] = m
        classes[j] = 1 if classes_of is None else int(classes_of[int(i)])
        valid[j] = 1
    return boxes, masks, classes, valid
