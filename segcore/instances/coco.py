"""COCO instance annotations: write corrected instance maps, read annotations for training.

Masks are encoded with pycocotools: compressed RLE (``counts`` a string) by
default, uncompressed RLE (``counts`` a list of run lengths) on request;
reading accepts polygons, uncompressed RLE and compressed RLE (string or
bytes). Category ids map to model classes by position: the ``k``-th
category in increasing id order is class ``k`` (1-based; 0 is background),
and class names are ``("background", *category names)``. Annotations with
``iscrowd=1`` are skipped (counted in ``CocoEntry.n_crowd``). Where masks
overlap, the instance-id map is painted largest first, so a smaller object
stays visible on top of a larger one. Instance ids in a read map are ``1..N``
in annotation order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CocoEntry",
    "build_coco",
    "decode_segmentation",
    "encode_mask",
    "instance_annotations",
    "read_coco",
    "save_coco",
]


def _mask_utils():
    try:
        import pycocotools.mask as mu
    except ImportError as exc:  # pragma: no cover
        raise ImportError("COCO RLE needs pycocotools: pip install pycocotools") from exc
    return mu


@dataclasses.dataclass
class CocoEntry:
    """One COCO image: its instance-id map ``H,W`` (int32), ``{id: class}``, and the image (raw values) if read."""

    file_name: str
    image_id: int
    ids: np.ndarray
    classes: dict
    image: np.ndarray | None = None
    n_crowd: int = 0
    annotation_ids: dict = dataclasses.field(default_factory=dict)


def encode_mask(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a bool ``H,W`` mask: ``{"size": [H, W], "counts": str}`` (or a list of runs if not compressed).

    >>> encode_mask(np.array([[0, 1], [1, 1]], bool), compressed=False)
    {'size': [2, 2], 'counts': [1, 3]}
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"Expected a 2-D mask. Got shape {m.shape}.")
    mu = _mask_utils()
    rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
    if compressed:
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = m.astype(bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist() if flat.size else []
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}


def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """Bool ``H,W`` mask from a COCO segmentation: polygons, uncompressed or compressed RLE."""
    mu = _mask_utils()
    if isinstance(seg, dict):
        counts = seg.get("counts")
        size = [int(v) for v in seg.get("size", [height, width])]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}].")
        if isinstance(counts, list):
            rle = mu.frPyObjects({"size": size, "counts": counts}, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise TypeError(f"RLE counts must be a list or a string. Got {type(counts).__name__}.")
        return mu.decode(rle).astype(bool)
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), bool)
        return mu.decode(mu.merge(mu.frPyObjects(polys, height, width))).astype(bool)
    raise ValueError(f"Unsupported segmentation of type {type(seg).__name__}: expected polygons (list) or RLE (dict).")


def instance_annotations(ids: np.ndarray, image_id: int, classes: Mapping[int, int] | None = None, *,
                         start_id: int = 1, scores: Mapping[int, float] | None = None,
                         compressed: bool = True) -> list[dict]:
    """One COCO annotation per instance of an id map (an instance in several pieces stays one annotation).

    ``classes`` maps an instance id to its class (the category id written); 1 when omitted.
    """
    mu = _mask_utils()
    a = np.asarray(ids)
    labels = np.unique(a)
    out = []
    for k, lab in enumerate(labels[labels != 0]):
        m = a == lab
        rle = encode_mask(m, compressed)
        x, y, w, h = (float(v) for v in mu.toBbox(mu.encode(np.asfortranarray(m.astype(np.uint8)))))
        ann = {"id": start_id + k, "image_id": int(image_id), "category_id": int((classes or {}).get(int(lab), 1)),
               "iscrowd": 0, "area": int(m.sum()), "bbox": [x, y, w, h], "segmentation": rle,
               "instance_id": int(lab)}
        if scores is not None and int(lab) in scores:
            ann["score"] = float(scores[int(lab)])
        out.append(ann)
    return out


def build_coco(images: Sequence[dict], class_names: Sequence[str], compressed: bool = True) -> dict:
    """A COCO dataset dict from ``[{"file_name", "ids", optional "classes", "scores", "id"}, ...]``.

    Categories are ``class_names[1:]`` with ids ``1..K-1`` (class index = category id).
    """
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": str(n)} for i, n in enumerate(class_names) if i]}
    for k, im in enumerate(images, 1):
        ids = np.asarray(im["ids"])
        if ids.ndim != 2:
            raise ValueError(f"Image '{im.get('file_name')}': expected an H,W id map. Got shape {ids.shape}.")
        image_id = int(im.get("id", k))
        coco["images"].append({"id": image_id, "file_name": str(im["file_name"]), "height": int(ids.shape[0]),
                               "width": int(ids.shape[1])})
        coco["annotations"] += instance_annotations(ids, image_id, im.get("classes"),
                                                    start_id=len(coco["annotations"]) + 1, scores=im.get("scores"),
                                                    compressed=compressed)
    return coco


def save_coco(path: str | Path, coco: dict) -> Path:
    """Write a COCO dict as JSON atomically (a reader never sees half a file)."""
    from ..store import atomic_write

    return atomic_write(path, json.dumps(coco))


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if img is None and path.is_file():
        from ..io import load_scan

        img = load_scan(path).slice()
    if img is None:
        raise ValueError(f"COCO image '{path}' not found: images are read relative to the JSON file's folder "
                         "or image_root.")
    return img if img.ndim == 2 else img[..., :3].astype(np.float32).mean(-1)


def read_coco(source: str | Path | dict, *, image_root: str | Path | None = None,
              load_images: bool = True) -> tuple[list[CocoEntry], tuple[str, ...]]:
    """Entries (one per image) and class names from a COCO file or dict.

    Images are read (raw values, any bit depth) from ``image_root`` or the
    JSON file's folder unless ``load_images`` is False.
    """
    if isinstance(source, dict):
        coco, root = source, Path(image_root) if image_root else None
    else:
        p = Path(source)
        coco = json.loads(p.read_text())
        root = Path(image_root) if image_root else p.parent
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"Not a COCO instances file: no '{key}' list (keys: {sorted(coco)}).")
    cats = sorted(int(c["id"]) for c in coco["categories"])
    if not cats:
        raise ValueError("The COCO file has no categories.")
    cls_of = {cid: k for k, cid in enumerate(cats, 1)}
    names = ("background", *[next(c["name"] for c in coco["categories"] if int(c["id"]) == cid) for cid in cats])
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    out = []
    for im in coco["images"]:
        h, w = int(im["height"]), int(im["width"])
        ids = np.zeros((h, w), np.int32)
        classes, ann_ids, crowd, decoded = {}, {}, 0, []
        for a in by_image.get(int(im["id"]), []):
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            if int(a["category_id"]) not in cls_of:
                raise ValueError(f"Annotation {a.get('id')} has category {a['category_id']}, not among the "
                                 f"categories {cats}.")
            decoded.append((decode_segmentation(a["segmentation"], h, w), a))
        for k, (m, a) in sorted(enumerate(decoded, 1), key=lambda t: -int(t[1][0].sum())):
            ids[m] = k
            classes[k] = cls_of[int(a["category_id"])]
            ann_ids[k] = a.get("id")
        present = set(np.unique(ids).tolist()) - {0}
        classes = {k: v for k, v in classes.items() if k in present}
        image = None
        if load_images and root is not None:
            image = _read_image(root / im["file_name"])
            if image.shape[:2] != (h, w):
                raise ValueError(f"Image '{im['file_name']}' is {image.shape[:2]} but the COCO file says ({h}, {w}).")
        out.append(CocoEntry(str(im["file_name"]), int(im["id"]), ids, classes, image, crowd, ann_ids))
    return out, names
