"""Real labelled objects for training and held-out evaluation of the click network, with honest splits.

* stardist nuclei (``stardist/img3d.tif``, ``mask3d.tif``; 31 x 61 x 57, z,y,x, 51 nuclei):
  split by nucleus along x. Test nuclei are the ones lying entirely at
  ``x >= STARDIST_SPLIT_X`` (21 of 51); training sees only the sub-volume
  ``x < STARDIST_SPLIT_X`` (z-slices, y-z and x-z planes), which holds no pixel of a
  test nucleus. Test objects are the per-z-slice cross-sections of test nuclei of at
  least ``min_area`` pixels, segmented in the full slice.
* radiomics lesions (brain1 MR, breast1 MR, lung1 CT): never used for training;
  every connected lesion component of every labelled axial slice is a test object.
* phantom lesions: connected lesion components (label 2) of ``sample_data/phantom/test``
  (seeds disjoint from the phantoms generated for training).

Every object is ``(image, mask, meta)``: raw pixel values (float32 ``H,W``, as stored),
a boolean ``H,W`` mask and a small dict saying where it came from.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["STARDIST_SPLIT_X", "stardist_split", "radiomics_objects", "phantom_lesion_objects", "components"]

STARDIST_SPLIT_X = 28


def components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Connected components (8-connectivity) of a boolean mask with at least ``min_area`` pixels."""
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [lab == i for i in range(1, n) if (lab == i).sum() >= min_area]


def stardist_split(root: str | Path, *, min_area: int = 30):
    """``(train_planes, test_objects)`` from the stardist stack (see the module docstring).

    ``train_planes`` is a list of ``(image, ids)`` planes cut from the training
    sub-volume; ``test_objects`` a list of ``(image, mask, meta)``.
    """
    import tifffile

    root = Path(root)
    img = tifffile.imread(root / "img3d.tif").astype(np.float32)
    ids = tifffile.imread(root / "mask3d.tif").astype(np.int32)
    c = STARDIST_SPLIT_X
    labels = [int(i) for i in np.unique(ids) if i > 0]
    min_x = {i: int(np.nonzero(ids == i)[2].min()) for i in labels}
    test_ids = sorted(i for i in labels if min_x[i] >= c)
    train_planes = [(img[z, :, :c], ids[z, :, :c]) for z in range(img.shape[0])]
    train_planes += [(img[:, y, :c], ids[:, y, :c]) for y in range(0, img.shape[1], 2)]
    train_planes += [(img[:, :, x], ids[:, :, x]) for x in range(0, c, 2)]
    if np.isin(ids[:, :, :c], test_ids).any():  # by construction never; guards a changed split rule
        raise RuntimeError("a held-out stardist nucleus reaches into the training sub-volume")
    test = []
    for z in range(img.shape[0]):
        for i in test_ids:
            m = ids[z] == i
            if m.sum() >= min_area:
                test.append((img[z], m, {"source": "stardist", "z": z, "nucleus": i, "area": int(m.sum())}))
    return train_planes, test


def radiomics_objects(root: str | Path, *, min_area: int = 10):
    """Every lesion component of every labelled axial slice of brain1, breast1 and lung1."""
    import nrrd

    root = Path(root)
    out = []
    for case in ("brain1", "breast1", "lung1"):
        arr, _ = nrrd.read(str(root / f"{case}_image.nrrd"))
        lab, _ = nrrd.read(str(root / f"{case}_label.nrrd"))
        for z in np.flatnonzero((lab > 0).any((0, 1))):
            image = np.ascontiguousarray(arr[:, :, z].T).astype(np.float32)  # rows = y, cols = x
            for k, m in enumerate(components(np.ascontiguousarray(lab[:, :, z].T) > 0, min_area)):
                out.append((image, m, {"source": case, "z": int(z), "component": k, "area": int(m.sum())}))
    return out


def phantom_lesion_objects(folder: str | Path, *, min_area: int = 10):
    """Lesion components (label 2) of a phantom split folder with ``images/`` and ``masks/`` PNGs."""
    folder = Path(folder)
    out = []
    for p in sorted((folder / "images").glob("*.png")):
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32)
        labels = cv2.imread(str(folder / "masks" / p.name), cv2.IMREAD_UNCHANGED)
        for k, m in enumerate(components(labels == 2, min_area)):
            out.append((image, m, {"source": "phantom", "file": p.name, "component": k, "area": int(m.sum())}))
    return out
