"""Instance data sets used to train and measure the Mask R-CNN: blob phantoms and the real StarDist nuclei stack.

A sample is an :class:`InstanceSample`: a raw 2-D image (any dtype; the
model normalises it), an instance-id map on the same grid (0 background),
optional ``{id: class}`` classes (class 1 otherwise), and the ``pixel_scale``
at which its objects fall in the model's size range.

The StarDist split (``stardist_split``) is by pixels, never seen in training:
every slice ``z`` of the ``(31, 61, 57)`` stack is cut at column 28; the right
part (columns 28-56) of all 31 slices is the **test** set; the left part
(columns 0-27) of slices ``z < 8`` is the **validation** set (early stopping,
baseline tuning) and of slices ``z >= 8`` the **training** set. Nuclei span
about 7 slices and up to ~20 columns, so a nucleus crossing column 28 is seen
in part on both sides, but no test pixel is ever trained on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = [
    "STARDIST_PIXEL_SCALE",
    "InstanceSample",
    "load_stardist",
    "mosaic",
    "object_diameters",
    "phantom_samples",
    "phantom_scenes",
    "split_held_out",
    "stardist_split",
]

STARDIST_PIXEL_SCALE = 2.0  # nuclei are ~11 px across (median); twice that is the middle of the model's range
_STARDIST_CUT_X = 28
_STARDIST_VAL_Z = 8
# phantom seeds: the committed/regenerated files use offsets 0-159 (train) and 160-199 (test); val is new
_PHANTOM_SEED = 4242
_VAL_OFFSET, _SCENE_OFFSET = 200, 300


@dataclasses.dataclass
class InstanceSample:
    """One image with its instances. ``image`` ``H,W`` raw values; ``ids`` ``H,W`` int (0 background)."""

    image: np.ndarray
    ids: np.ndarray
    classes: dict | None = None
    pixel_scale: float = 1.0
    name: str = ""
    group: str = ""

    def __post_init__(self):
        if np.shape(self.image)[:2] != np.shape(self.ids):
            raise ValueError(f"Image {np.shape(self.image)} and instance ids {np.shape(self.ids)} differ in size "
                             f"({self.name or 'unnamed sample'}).")

    @property
    def n_objects(self) -> int:
        return int(len(np.unique(self.ids)) - (1 if (self.ids == 0).any() else 0))


def _quantised_phantom(seed: int, **kwargs):
    from .data import make_instance_phantom

    img, ids = make_instance_phantom(seed, **kwargs)
    return np.rint(img * 255).astype(np.uint8), ids.astype(np.int32)  # as written to PNG


def phantom_samples(split: str, data_dir: str | Path | None = None) -> list[InstanceSample]:
    """The 128x128 blob phantoms: ``"train"`` (160), ``"val"`` (20, seeds never used elsewhere), ``"test"`` (40).

    Images are uint8 as stored in ``sample_data/instances``; train and test are read from there
    (train is regenerated if missing), val is generated in memory.
    """
    from .data import ensure_train_split
    from .train import load_instance_split

    root = Path(data_dir) if data_dir else Path(__file__).resolve().parents[2] / "sample_data" / "instances"
    if split == "val":
        pairs = [_quantised_phantom(_PHANTOM_SEED * 10000 + _VAL_OFFSET + i) for i in range(20)]
        return [InstanceSample(img, ids, name=f"val_{i:04d}", group="phantoms") for i, (img, ids) in enumerate(pairs)]
    if split not in ("train", "test"):
        raise ValueError(f"Unknown phantom split '{split}': expected 'train', 'val' or 'test'.")
    folder = ensure_train_split(root) if split == "train" else root / "test"
    imgs, ids, names = load_instance_split(folder)
    return [InstanceSample(np.rint(i * 255).astype(np.uint8), d.astype(np.int32), name=n, group="phantoms")
            for i, d, n in zip(imgs, ids, names)]


def phantom_scenes(n: int = 4, size: int = 512) -> list[InstanceSample]:
    """Large phantom scenes (``size`` square) with the 128-phantom's object sizes and 5-9 objects per 128² area."""
    out = []
    area = (size / 128) ** 2
    for i in range(n):
        img, ids = _quantised_phantom(_PHANTOM_SEED * 10000 + _SCENE_OFFSET + i, size=size,
                                      max_objects=int(9 * area), min_objects=int(5 * area), object_scale=128)
        out.append(InstanceSample(img, ids, name=f"scene_{i:02d}", group="phantom_scenes"))
    return out


def load_stardist(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``img3d.tif`` (uint16 ``Z,Y,X``) and ``mask3d.tif`` (instance ids) from the StarDist data folder."""
    import tifffile

    folder = Path(folder)
    files = [folder / "img3d.tif", folder / "mask3d.tif"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"StarDist data not found: missing {missing}. Expected img3d.tif and mask3d.tif "
                                "(the stardist package's data/images folder).")
    img, ids = (tifffile.imread(f) for f in files)
    if img.shape != ids.shape or img.ndim != 3:
        raise ValueError(f"Expected two Z,Y,X stacks of one shape. Got {img.shape} and {ids.shape}.")
    return img, ids.astype(np.int32)


def stardist_split(folder: str | Path, pixel_scale: float = STARDIST_PIXEL_SCALE) -> dict[str, list[InstanceSample]]:
    """Train / val / test slices of the StarDist stack, split by pixels (see the module docstring)."""
    img, ids = load_stardist(folder)
    out: dict[str, list[InstanceSample]] = {"train": [], "val": [], "test": []}
    cut = _STARDIST_CUT_X
    for z in range(img.shape[0]):
        left = "val" if z < _STARDIST_VAL_Z else "train"
        for split, sl in ((left, np.s_[:, :cut]), ("test", np.s_[:, cut:])):
            out[split].append(InstanceSample(np.ascontiguousarray(img[z][sl]), np.ascontiguousarray(ids[z][sl]),
                                             pixel_scale=pixel_scale, name=f"z{z:02d}_{split}", group="stardist"))
    return out


def mosaic(samples: list[InstanceSample], cols: int, name: str = "mosaic") -> InstanceSample:
    """One image made of equally sized samples laid out row by row (empty cells are 0); ids made unique."""
    h, w = samples[0].ids.shape
    if any(s.ids.shape != (h, w) for s in samples):
        raise ValueError("mosaic needs samples of one size.")
    rows = -(-len(samples) // cols)
    img = np.zeros((rows * h, cols * w), np.asarray(samples[0].image).dtype)
    ids = np.zeros((rows * h, cols * w), np.int32)
    classes, offset = {}, 0
    for k, s in enumerate(samples):
        r, c = divmod(k, cols)
        img[r * h:(r + 1) * h, c * w:(c + 1) * w] = s.image
        labels = np.unique(s.ids)
        labels = labels[labels != 0]
        lut = np.zeros(int(s.ids.max()) + 1, np.int32)
        lut[labels] = np.arange(offset + 1, offset + 1 + len(labels))
        ids[r * h:(r + 1) * h, c * w:(c + 1) * w] = lut[s.ids]
        for v in labels:
            classes[int(lut[v])] = 1 if s.classes is None else int(s.classes[int(v)])
        offset += len(labels)
    return InstanceSample(img, ids, classes, samples[0].pixel_scale, name, samples[0].group)


def split_held_out(samples: list[InstanceSample], fraction: float = 0.25,
                   seed: int = 0) -> tuple[list[InstanceSample], list[InstanceSample]]:
    """``(train, held_out)``: whole images when there are at least ``1 / fraction`` of them, else the right
    ``fraction`` of every image's columns (pixels never seen in training; objects on the cut are split)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1). Got {fraction}.")
    if not samples:
        raise ValueError("No samples to split.")
    if len(samples) >= round(1 / fraction):
        order = np.random.default_rng(seed).permutation(len(samples))
        n_val = max(1, round(fraction * len(samples)))
        return [samples[i] for i in sorted(order[n_val:])], [samples[i] for i in sorted(order[:n_val])]
    train, val = [], []
    for s in samples:
        w = s.ids.shape[1]
        cut = round(w * (1 - fraction))
        if cut < 1 or cut >= w:
            raise ValueError(f"Image '{s.name}' ({w} px wide) is too narrow to hold out {fraction:.0%} of it.")
        for part, sl in ((train, np.s_[:, :cut]), (val, np.s_[:, cut:])):
            part.append(dataclasses.replace(s, image=np.ascontiguousarray(np.asarray(s.image)[sl]),
                                            ids=np.ascontiguousarray(s.ids[sl])))
    return train, val


def object_diameters(samples: list[InstanceSample]) -> np.ndarray:
    """Equivalent diameters ``2 sqrt(area / pi)`` of all objects, at each sample's pixel scale."""
    out = []
    for s in samples:
        areas = np.bincount(np.asarray(s.ids, np.int64).ravel())[1:]
        out.append(2 * np.sqrt(areas[areas > 0] / np.pi) * s.pixel_scale)
    return np.concatenate(out) if out else np.zeros(0)
