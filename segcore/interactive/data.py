"""Real labelled objects for training and held-out evaluation of the click network, with honest splits.

* stardist nuclei (``stardist/img3d.tif``, ``mask3d.tif``; 31 x 61 x 57, z,y,x, 51 nuclei):
  split by nucleus along x. Test nuclei are the ones lying entirely at
  ``x >= STARDIST_SPLIT_X`` (21 of 51); training sees only the sub-volume
  ``x < STARDIST_SPLIT_X`` (z-slices, y-z and x-z planes), which holds no pixel of a
  test nucleus. Test objects are the per-z-slice cross-sections of test nuclei of at
  least ``min_area`` pixels, segmented in the full slice.
* radiomics lesions (brain1 MR, breast1 MR, lung1 CT): every connected lesion component
  of every labelled axial slice is a test object. The shipped model never trained on
  them; a model that did (``radiomics_cases``) is scored on each case by a model that
  never saw that case (:func:`held_out_models`, leave one case out).
* phantom lesions: connected lesion components (label 2) of ``sample_data/phantom/test``
  (seeds disjoint from the phantoms generated for training).

Validation objects (:func:`validation_objects`), for choosing inference settings and
deciding whether a retrained model ships, never overlap the test objects: lesions of
``sample_data/phantom/val``; nuclei lying entirely in the stardist training sub-volume
(``x < STARDIST_SPLIT_X``; seen in training, so they measure fit to the annotation
convention, not generalisation); fresh synthetic scenes and 512x512 phantoms (large
lesions) with seeds that no training run uses.

Every object is ``(image, mask, meta)``: raw pixel values (float32 ``H,W``, as stored),
a boolean ``H,W`` mask and a small dict saying where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["STARDIST_SPLIT_X", "stardist_split", "radiomics_objects", "phantom_lesion_objects", "components",
           "validation_objects"]

VALIDATION_SEEDS = {"synth": 9_900_000, "phantom512": 9_500_000}  # training uses 5e6-8.2e6; samples 2.026e8+

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
    return train_planes, _nucleus_sections(img, ids, test_ids, min_area, "stardist")


def _nucleus_sections(img: np.ndarray, ids: np.ndarray, nuclei, min_area: int, source: str) -> list:
    """``(slice, mask, meta)`` for each z cross-section of ``nuclei`` with at least ``min_area`` pixels."""
    out = []
    for z in range(img.shape[0]):
        for i in nuclei:
            m = ids[z] == i
            if m.sum() >= min_area:
                out.append((img[z], m, {"source": source, "z": z, "nucleus": i, "area": int(m.sum())}))
    return out


RADIOMICS_CASES = ("brain1", "breast1", "lung1")


def check_radiomics_cases(cases: Sequence[str]) -> tuple[str, ...]:
    """``cases`` as a tuple, each one of :data:`RADIOMICS_CASES`.

    >>> check_radiomics_cases(["lung1"])
    ('lung1',)

    Raises
    ------
    ValueError
        A single string instead of a sequence of names, or an unknown case.
    """
    if isinstance(cases, str):
        raise ValueError(f"radiomics cases must be a sequence of case names, e.g. ('brain1', 'lung1'). Got the "
                         f"string {cases!r}.")
    cases = tuple(cases)
    unknown = sorted(set(cases) - set(RADIOMICS_CASES))
    if unknown:
        raise ValueError(f"Unknown radiomics case(s) {unknown}: the cases are {', '.join(RADIOMICS_CASES)}.")
    return cases


def radiomics_objects(root: str | Path, *, min_area: int = 10, cases: Sequence[str] = RADIOMICS_CASES):
    """Every lesion component of every labelled axial slice of the ``cases`` (default brain1, breast1 and lung1)."""
    import nrrd

    cases = check_radiomics_cases(cases)
    root = Path(root)
    out = []
    for case in (c for c in RADIOMICS_CASES if c in cases):
        arr, _ = nrrd.read(str(root / f"{case}_image.nrrd"))
        lab, _ = nrrd.read(str(root / f"{case}_label.nrrd"))
        for z in np.flatnonzero((lab > 0).any((0, 1))):
            image = np.ascontiguousarray(arr[:, :, z].T).astype(np.float32)  # rows = y, cols = x
            for k, m in enumerate(components(np.ascontiguousarray(lab[:, :, z].T) > 0, min_area)):
                out.append((image, m, {"source": case, "z": int(z), "component": k, "area": int(m.sum())}))
    return out


def trained_cases(config) -> set[str]:
    """The radiomics cases a click model (an :class:`~segcore.interactive.InteractiveConfig`) trained on,
    through every stage it continued from (``training["parent"]``).

    >>> from segcore.interactive import InteractiveConfig
    >>> cfg = InteractiveConfig(training={"settings": {"radiomics_cases": []},
    ...                                   "parent": {"settings": {"radiomics_cases": ["lung1"]}}})
    >>> sorted(trained_cases(cfg))
    ['lung1']
    """
    tr, out = config.training or {}, set()
    while tr:
        out |= set((tr.get("settings") or {}).get("radiomics_cases") or ())
        tr = tr.get("parent") or {}
    return out


def held_out_models(model, folds_dir: str | Path | None, *, inference: Sequence[str] = ()) -> dict:
    """``{case: model}``: for every radiomics case, a click model that never trained on it.

    ``model`` itself when it trained on no case; otherwise the leave-one-case-out models
    ``folds_dir/fold_<case>`` (``python -m segcore train-interactive --radiomics-cases ...``), each checked against
    its own training record, with the ``inference`` settings (config field names) copied from ``model``.

    Raises
    ------
    ValueError
        ``model`` trained on a case and no ``folds_dir`` was given, or a fold trained on the case it would score.
    FileNotFoundError
        A fold folder is missing.
    """
    import dataclasses

    from .model import ClickModel

    seen = trained_cases(model.config)
    if not seen:
        return {case: model for case in RADIOMICS_CASES}
    if not folds_dir:
        raise ValueError(f"The model trained on the radiomics cases {sorted(seen)}, so its radiomics results would "
                         "not be held out: give the folder of the leave-one-case-out models fold_<case>.")
    out = {}
    for case in RADIOMICS_CASES:
        fold = ClickModel.load(Path(folds_dir) / f"fold_{case}")
        if case in trained_cases(fold.config):
            raise ValueError(f"{Path(folds_dir) / f'fold_{case}'} trained on {case}: it cannot score {case}.")
        fold.config = dataclasses.replace(fold.config, **{k: getattr(model.config, k) for k in inference})
        out[case] = fold
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


def stardist_train_nuclei(root: str | Path, *, min_area: int = 30):
    """z cross-sections of the nuclei lying entirely at ``x < STARDIST_SPLIT_X`` (the training side), in full slices."""
    import tifffile

    root = Path(root)
    img = tifffile.imread(root / "img3d.tif").astype(np.float32)
    ids = tifffile.imread(root / "mask3d.tif").astype(np.int32)
    labels = [int(i) for i in np.unique(ids) if i > 0]
    inside = sorted(i for i in labels if int(np.nonzero(ids == i)[2].max()) < STARDIST_SPLIT_X)
    return _nucleus_sections(img, ids, inside, min_area, "stardist_train")


def validation_objects(root: str | Path, shared: str | Path | None, *, n_nuclei: int = 80, n_synth: int = 60,
                       n_large: int = 30) -> dict[str, list]:
    """Validation sets ``{name: [(image, mask, meta), ...]}`` (see the module docstring); deterministic.

    ``root`` is the repository (for ``sample_data/phantom/val``), ``shared`` the data folder with
    ``stardist/`` (skipped when absent).
    """
    from ..phantom import make_phantom
    from .synth import make_scene

    sets = {"phantom_val": phantom_lesion_objects(Path(root) / "sample_data" / "phantom" / "val")}
    if shared is not None and (Path(shared) / "stardist" / "img3d.tif").is_file():
        nuc = stardist_train_nuclei(Path(shared) / "stardist")
        sets["nuclei_trainvol"] = nuc[:: max(1, len(nuc) // n_nuclei)][:n_nuclei]
    synth: list = []
    seed = VALIDATION_SEEDS["synth"]
    while len(synth) < n_synth:
        img, ids = make_scene(seed)
        synth += [(img, ids == i, {"source": "synth", "seed": seed, "id": i, "area": int((ids == i).sum())})
                  for i in range(1, int(ids.max()) + 1) if (ids == i).sum() >= 30]
        seed += 1
    sets["synth_fresh"] = synth[:n_synth]
    large: list = []
    seed = VALIDATION_SEEDS["phantom512"]
    while len(large) < n_large:
        img, lab = make_phantom(seed, size=512)
        large += [(img + 1024.0, m, {"source": "phantom512", "seed": seed, "component": k, "area": int(m.sum())})
                  for k, m in enumerate(components(lab == 2, 200))]
        seed += 1
    sets["phantom512_fresh"] = large[:n_large]
    return sets
