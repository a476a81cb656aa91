"""Train the compact Mask R-CNN on an instance set (``images/`` + ``instances/`` id maps)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from .maskrcnn import MaskRCNN, MaskRCNNConfig

__all__ = ["load_instance_split", "train_maskrcnn", "augment_pair"]


def load_instance_split(folder: str | Path):
    folder = Path(folder)
    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"No PNG images in '{folder / 'images'}'.")
    imgs = [cv2.imread(str(folder / "images" / n), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0 for n in names]
    ids = [cv2.imread(str(folder / "instances" / n), cv2.IMREAD_UNCHANGED) for n in names]
    return imgs, ids, names


def augment_pair(img, ids, rng):
    k = int(rng.integers(4))
    img, ids = np.rot90(img, k), np.rot90(ids, k)
    if rng.random() < 0.5:
        img, ids = img[:, ::-1], ids[:, ::-1]
    img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(ids)


def train_maskrcnn(data_dir, out_dir, *, steps=2500, batch_size=4, learning_rate=1e-3, seed=0, log=print):
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    from .data import ensure_train_split

    imgs, ids, _ = load_instance_split(ensure_train_split(data_dir))
    model = MaskRCNN(MaskRCNNConfig(image_size=imgs[0].shape[0]))
    step = model.make_train_step(learning_rate)
    history = []
    t0 = time.perf_counter()
    for it in range(1, steps + 1):
        if it == int(steps * 0.75):
            model.optimizer.learning_rate.assign(learning_rate * 0.1)
        pick = rng.choice(len(imgs), batch_size, replace=False)
        pairs = [augment_pair(imgs[i], ids[i], rng) for i in pick]
        batch = model.prepare_batch([p[0] for p in pairs], [p[1] for p in pairs], rng)
        total, parts = step(*batch)
        if it % 50 == 0 or it == 1:
            rec = {"step": it, "total": round(float(total), 4), **{k: round(float(v), 4) for k, v in parts.items()},
                   "seconds": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            log(json.dumps(rec))
    out = model.save(out_dir)
    (out / "train_log.json").write_text(json.dumps({"steps": steps, "batch_size": batch_size,
                                                    "seconds": round(time.perf_counter() - t0, 1),
                                                    "history": history}, indent=1))
    return model
