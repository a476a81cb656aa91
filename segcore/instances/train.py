"""Train and fine-tune the compact Mask R-CNN on instance samples of any size.

Training draws random crops of ``config.image_size`` pixels (at the model's
scale: each sample's ``pixel_scale`` with a random jitter) from whole images
normalised once as :meth:`MaskRCNN.detect` normalises them, with rot90/flip
and intensity jitter, and keeps the weights with the best validation mask
AP50 (whole images through :meth:`MaskRCNN.detect`, the mean over the
validation groups so that a small data set counts as much as a large one),
stopping when it has not improved for ``patience`` evaluations. The starting
weights are evaluated first, so training never returns a model that scores
below them on the validation split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np

from .datasets import InstanceSample, object_diameters, split_held_out
from .evaluate import mask_ap
from .maskrcnn import MaskRCNN, MaskRCNNConfig
from .preprocess import normalise_intensity

__all__ = [
    "fine_tune_config",
    "FineTuneResult",
    "InstanceTrainConfig",
    "augment_pair",
    "diameter_range",
    "evaluate_ap",
    "fine_tune_instances",
    "load_instance_split",
    "random_crop",
    "samples_from",
    "train_from_coco",
    "train_instances",
    "train_maskrcnn",
]


@dataclasses.dataclass
class InstanceTrainConfig:
    """Settings of :func:`train_instances`.

    ``scale_jitter``: crops are taken at ``pixel_scale * exp(U(-j, j))``. The learning rate drops tenfold
    at ``lr_drop_at`` of ``steps`` or of ``max_seconds``, whichever comes first.
    ``patience``: evaluations (every ``eval_every`` steps) without a better
    validation AP50 before stopping. ``max_seconds``: wall-clock budget.
    """

    steps: int = 3000
    batch_size: int = 4
    learning_rate: float = 1e-3
    lr_drop_at: float = 0.75
    eval_every: int = 250
    patience: int = 4
    scale_jitter: float = 0.25
    min_object_area: int = 4
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError(f"steps, batch_size and eval_every must be >= 1. Got {self.steps}, {self.batch_size}, "
                             f"{self.eval_every}.")


@dataclasses.dataclass
class FineTuneResult:
    """A fine-tuned copy of a model and its held-out AP50 next to the original's (the evaluation gate)."""

    model: MaskRCNN
    ap50_before: float
    ap50_after: float
    n_train_objects: int
    n_val_objects: int
    history: list

    @property
    def promote(self) -> bool:
        """Whether the new model does not lose to the old one on the held-out split."""
        return bool(self.ap50_after >= self.ap50_before)


# ---------------------------------------------------------------- legacy phantom folders

def load_instance_split(folder: str | Path):
    """``images/*.png`` (uint8, scaled to [0, 1]) and ``instances/*.png`` id maps of one phantom split."""
    folder = Path(folder)
    names = sorted(p.name for p in (folder / "images").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"No PNG images in '{folder / 'images'}'.")
    imgs = [cv2.imread(str(folder / "images" / n), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0 for n in names]
    ids = [cv2.imread(str(folder / "instances" / n), cv2.IMREAD_UNCHANGED) for n in names]
    return imgs, ids, names


def augment_pair(img, ids, rng, intensity: bool = True):
    """Random rot90 / flip of an image and its id map, and a gain / offset jitter of the image."""
    k = int(rng.integers(4))
    img, ids = np.rot90(img, k), np.rot90(ids, k)
    if rng.random() < 0.5:
        img, ids = img[:, ::-1], ids[:, ::-1]
    if intensity:
        img = img * rng.uniform(0.8, 1.25) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(ids)


# ---------------------------------------------------------------- crops

def random_crop(image: np.ndarray, ids: np.ndarray, size: int, scale: float, rng: np.random.Generator,
                min_area: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` crop at the model's scale from a normalised image and its id map.

    A region of ``size / scale`` image pixels is cut at a random place
    (the whole image where it is smaller), resized by ``scale`` (ids by
    nearest neighbour) and zero-padded at the bottom / right; objects cut
    down to fewer than ``min_area`` pixels become background.
    """
    h, w = ids.shape
    side = max(1, int(np.ceil(size / scale)))
    ch, cw = min(side, h), min(side, w)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    im = image[y0:y0 + ch, x0:x0 + cw]
    lab = ids[y0:y0 + ch, x0:x0 + cw].astype(np.int32)
    oh, ow = min(size, max(1, round(ch * scale))), min(size, max(1, round(cw * scale)))
    if (oh, ow) != (ch, cw):
        im = cv2.resize(im, (ow, oh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (ow, oh), interpolation=cv2.INTER_NEAREST)
    out_im = np.zeros((size, size), np.float32)
    out_ids = np.zeros((size, size), np.int32)
    out_im[:oh, :ow] = im
    out_ids[:oh, :ow] = lab
    if out_ids.any():
        areas = np.bincount(out_ids.ravel())
        small = np.flatnonzero((areas < min_area) & (areas > 0))
        if len(small):
            out_ids[np.isin(out_ids, small)] = 0
    return out_im, out_ids


# ---------------------------------------------------------------- evaluation

def evaluate_ap(model: MaskRCNN, samples: list[InstanceSample], by_group: bool = True) -> dict:
    """Mask AP of whole-image :meth:`MaskRCNN.detect` on samples: per group and ``mean_AP50`` over groups."""
    groups: dict[str, list[InstanceSample]] = {}
    for s in samples:
        groups.setdefault(s.group if by_group else "all", []).append(s)
    out = {}
    for g, ss in groups.items():
        preds = [model.detect(s.image, pixel_scale=s.pixel_scale) for s in ss]
        out[g] = mask_ap([s.ids for s in ss], preds, [s.classes for s in ss] if ss[0].classes else None)
    vals = [v["AP50"] for v in out.values() if np.isfinite(v["AP50"])]
    out["mean_AP50"] = float(np.mean(vals)) if vals else float("nan")
    return out


# ---------------------------------------------------------------- training

def diameter_range(samples: list[InstanceSample], config: MaskRCNNConfig) -> tuple[float, float]:
    """10th-90th percentile of the training objects' equivalent diameters (model pixels), within the anchors'
    range: the object sizes the model is trained for (``config.object_diameter_range``)."""
    d = object_diameters(samples)
    lo_a, hi_a = config.anchor_object_range
    if len(d) == 0:
        return config.object_diameter_range
    lo, hi = (float(v) for v in np.percentile(d, (10, 90)))
    return round(min(max(lo, lo_a), hi_a), 1), round(max(min(hi, hi_a), lo_a), 1)


def _weights(model: MaskRCNN) -> list:
    return [getattr(model, p).get_weights() for p in MaskRCNN._PARTS]


def _set_weights(model: MaskRCNN, weights: list) -> None:
    for p, w in zip(MaskRCNN._PARTS, weights):
        getattr(model, p).set_weights(w)


def train_instances(model: MaskRCNN, train: list[InstanceSample], val: list[InstanceSample],
                    config: InstanceTrainConfig | None = None, log=print, group_weights: dict | None = None,
                    progress=None, cancel=None) -> dict:
    """Train ``model`` in place on ``train``, keep the weights with the best validation AP50.

    Parameters
    ----------
    model : MaskRCNN
        Starting weights (fresh or loaded); its classes must cover the samples' classes.
    train, val : list of InstanceSample
        Raw images of any size with instance ids. ``val`` may be empty (no early stopping).
    config : InstanceTrainConfig
    log : callable
        Receives one JSON line per logged step / evaluation.
    group_weights : dict, optional
        Sampling weight of each ``group`` (default: equal per group, so that
        a small data set is drawn as often as a large one).
    progress : callable, optional
        Called after every step with ``{"phase": "train", "step", "steps", "fraction", "elapsed"}``.
    cancel : callable, optional
        Checked before every step; when it returns True :class:`segcore.finetune.FineTuneCancelled` is raised
        (the model keeps the weights of the last step).

    Returns
    -------
    dict
        ``history`` (list of records), ``best`` (the best evaluation record), ``steps_run``, ``seconds``.
    """
    import keras

    cfg = config or InstanceTrainConfig()
    if not train:
        raise ValueError("No training samples.")
    n_cls = model.config.num_classes
    for s in train + val:
        bad = {c for c in (s.classes or {}).values() if not 1 <= int(c) < n_cls}
        if bad:
            raise ValueError(f"Sample '{s.name}' has classes {sorted(bad)}; the model has classes 1..{n_cls - 1} "
                             f"({model.config.class_names[1:]}).")
    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    c = model.config
    norm = [normalise_intensity(s.image, c.normalisation, c.percentiles) for s in train]
    groups = sorted({s.group for s in train})
    gw = {g: (group_weights or {}).get(g, 1.0) for g in groups}
    p = np.array([gw[s.group] / sum(t.group == s.group for t in train) for s in train], np.float64)
    p /= p.sum()
    step = model.make_train_step(cfg.learning_rate)
    t0 = time.perf_counter()
    history: list[dict] = []

    def evaluate(it):
        ev = evaluate_ap(model, val)
        rec = {"step": it, "val": {g: round(v["AP50"], 4) for g, v in ev.items() if g != "mean_AP50"},
               "val_mean_AP50": round(ev["mean_AP50"], 4), "seconds": round(time.perf_counter() - t0, 1)}
        history.append(rec)
        log(json.dumps(rec))
        return ev["mean_AP50"]

    best_ap = evaluate(0) if val else -1.0
    best_w, best_step, since = _weights(model), 0, 0
    it, dropped = 0, False
    for it in range(1, cfg.steps + 1):
        if cancel is not None and cancel():
            from ..finetune import FineTuneCancelled

            raise FineTuneCancelled(f"Fine-tuning was cancelled before step {it}.")
        late = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.lr_drop_at * cfg.max_seconds
        if not dropped and (it >= int(cfg.steps * cfg.lr_drop_at) or late):
            model.optimizer.learning_rate.assign(cfg.learning_rate * 0.1)
            dropped = True
            log(json.dumps({"learning_rate": cfg.learning_rate * 0.1, "step": it}))
        imgs, idss, clss = [], [], []
        for i in rng.choice(len(train), cfg.batch_size, p=p):
            s = train[i]
            scale = s.pixel_scale * float(np.exp(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)))
            im, ids = random_crop(norm[i], np.asarray(s.ids), c.image_size, scale, rng, cfg.min_object_area)
            im, ids = augment_pair(im, ids, rng)
            imgs.append(im)
            idss.append(ids)
            clss.append(s.classes)
        batch = model.prepare_batch(imgs, idss, rng, None if all(x is None for x in clss) else
                                    [x or _ones(ids) for x, ids in zip(clss, idss)])
        total, parts = step(*batch)
        if progress is not None:
            progress({"phase": "train", "step": it, "steps": cfg.steps, "fraction": round(it / cfg.steps, 4),
                      "elapsed": round(time.perf_counter() - t0, 3)})
        if it % 50 == 0 or it == 1:
            rec = {"step": it, "total": round(float(total), 4), **{k: round(float(v), 4) for k, v in parts.items()},
                   "seconds": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            log(json.dumps(rec))
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        if val and (it % cfg.eval_every == 0 or it == cfg.steps or out_of_time):
            ap = evaluate(it)
            if ap > best_ap:
                best_ap, best_w, best_step, since = ap, _weights(model), it, 0
            else:
                since += 1
            if since >= cfg.patience:
                log(json.dumps({"early_stop": it, "best_step": best_step, "best_val_mean_AP50": round(best_ap, 4)}))
                break
        if out_of_time:
            log(json.dumps({"time_budget_reached": it}))
            break
    if val:
        _set_weights(model, best_w)
    best = next((h for h in history if h.get("step") == best_step and "val" in h), None)
    return {"history": history, "best": best, "best_step": best_step, "steps_run": it,
            "seconds": round(time.perf_counter() - t0, 1)}


def _ones(ids):
    return {int(v): 1 for v in np.unique(ids) if v != 0}


# ---------------------------------------------------------------- fine-tuning entry

def samples_from(data, pixel_scale: float = 1.0, image_root: str | Path | None = None) -> tuple[list, tuple | None]:
    """Instance samples from a COCO file / dict, or a list of ``(image, ids)`` / ``(image, masks N,H,W)`` pairs
    or :class:`InstanceSample`. Returns ``(samples, class_names)`` (class names only from COCO)."""
    from .coco import read_coco

    if isinstance(data, (str, Path, dict)):
        entries, names = read_coco(data, image_root=image_root)
        return [InstanceSample(e.image, e.ids, e.classes, pixel_scale, e.file_name, "user")
                for e in entries if e.image is not None], names
    out = []
    for k, item in enumerate(data):
        if isinstance(item, InstanceSample):
            out.append(item)
            continue
        image, lab = item[0], np.asarray(item[1])
        if lab.ndim == 3:
            from .edit import ids_from_masks

            lab = ids_from_masks(lab)
        out.append(InstanceSample(np.asarray(image), lab.astype(np.int32), None, pixel_scale, f"pair_{k}", "user"))
    return out, None


def fine_tune_config(steps: int = 400) -> InstanceTrainConfig:
    """:func:`fine_tune_instances`' default settings: ``steps`` at learning rate 3e-4, evaluated every 100 steps
    (or at the end), stopped after 2 evaluations without a better held-out AP50."""
    return InstanceTrainConfig(steps=steps, learning_rate=3e-4, eval_every=min(100, steps), patience=2)


def fine_tune_instances(model: MaskRCNN, coco_or_pairs, *, config: InstanceTrainConfig | None = None,
                        val_fraction: float = 0.25, pixel_scale: float | None = None,
                        image_root: str | Path | None = None, log=None, progress=None,
                        cancel=None) -> FineTuneResult:
    """Fine-tune a copy of ``model`` on corrected instances and measure both on a held-out split.

    Parameters
    ----------
    model : MaskRCNN
        Not modified.
    coco_or_pairs : path, dict or list
        A COCO JSON path or dict (images are read next to it or under
        ``image_root``), or ``(image, ids)`` / ``(image, masks)`` pairs.
    config : InstanceTrainConfig, optional
        Default: :func:`fine_tune_config` (400 steps, learning rate 3e-4, evaluation every 100 steps).
    val_fraction : float
        Held-out share: whole images when there are enough, else the right
        part of every image (:func:`~segcore.instances.datasets.split_held_out`).
    pixel_scale : float, optional
        Scale of these images (default: the model's ``pixel_scale``).
    log, progress, cancel : callable, optional
        As in :func:`train_instances`.

    Returns
    -------
    FineTuneResult
        The new model with ``ap50_before`` / ``ap50_after`` on the held-out split; promote it only if
        :attr:`FineTuneResult.promote`.
    """
    cfg = config or fine_tune_config()
    scale = model.config.pixel_scale if pixel_scale is None else float(pixel_scale)
    samples, names = samples_from(coco_or_pairs, scale, image_root)
    if not any(s.n_objects for s in samples):
        raise ValueError("No annotated objects to fine-tune on.")
    train, val = split_held_out(samples, val_fraction)
    new = model.copy() if names is None or tuple(names) == tuple(model.config.class_names) else \
        model.with_classes(names)
    before = evaluate_ap(model if new.config.class_names == model.config.class_names else new, val, by_group=False)
    result = train_instances(new, train, val, cfg, log=log or (lambda s: None), progress=progress, cancel=cancel)
    after = evaluate_ap(new, val, by_group=False)
    return FineTuneResult(new, before["mean_AP50"], after["mean_AP50"], sum(s.n_objects for s in train),
                          sum(s.n_objects for s in val), result["history"])


def _save_run(model: MaskRCNN, out_dir, result: dict, train: list, extra: dict) -> Path:
    out = model.save(out_dir)
    (out / "train_log.json").write_text(json.dumps({
        "steps": result["steps_run"], "best_step": result["best_step"], "seconds": result["seconds"], **extra,
        "train_sets": {g: sum(s.group == g for s in train) for g in sorted({s.group for s in train})},
        "best": result["best"], "history": result["history"]}, indent=1))
    return out


def train_from_coco(coco, out_dir, *, val_coco=None, val_fraction: float = 0.2, pixel_scale: float = 1.0,
                    init: str | Path | None = None, config: InstanceTrainConfig | None = None,
                    image_root=None, log=print) -> MaskRCNN:
    """Train on a COCO file (images of any size, polygons or RLE, several classes; crowd regions skipped).

    Starts from the model in ``init`` (its classes replaced by the COCO categories where they differ) or
    from scratch (``init=None``); validates on ``val_coco`` or a held-out ``val_fraction`` of ``coco``.
    """
    cfg = config or InstanceTrainConfig()
    samples, names = samples_from(coco, pixel_scale, image_root)
    if val_coco:
        train, (val, _) = samples, samples_from(val_coco, pixel_scale, image_root)
    else:
        train, val = split_held_out(samples, val_fraction, cfg.seed)
    if init:
        model = MaskRCNN.load(init)
        model = model.reconfigured(class_names=names, pixel_scale=pixel_scale, normalisation="percentile")
    else:
        model = MaskRCNN(MaskRCNNConfig(class_names=names, num_classes=len(names), pixel_scale=pixel_scale))
    model = model.reconfigured(object_diameter_range=diameter_range(train, model.config))
    log(json.dumps({"train_images": len(train), "train_objects": sum(s.n_objects for s in train),
                    "val_images": len(val), "val_objects": sum(s.n_objects for s in val), "classes": names,
                    "init": str(init) if init else "scratch"}))
    result = train_instances(model, train, val, cfg, log=log)
    _save_run(model, out_dir, result, train, {"coco": str(coco), "val_coco": str(val_coco) if val_coco else None,
                                               "init": str(init) if init else None, **dataclasses.asdict(cfg)})
    return model


# ---------------------------------------------------------------- the shipped model's recipe

def train_maskrcnn(data_dir, out_dir, *, steps=2500, batch_size=4, learning_rate=1e-3, seed=0, log=print,
                   stardist_dir=None, init=None, max_seconds=None, eval_every=250, patience=4):
    """Train on the blob phantoms (and the StarDist training slices when ``stardist_dir`` is given),
    starting from the model in ``init`` (a folder) or from scratch, and save to ``out_dir``."""
    from .datasets import phantom_samples, stardist_split

    train = phantom_samples("train", data_dir)
    val = phantom_samples("val")
    if stardist_dir:
        sd = stardist_split(stardist_dir)
        train, val = train + sd["train"], val + sd["val"]
    if init:
        model = MaskRCNN.load(init)
        upgrade = {"normalisation": "percentile", "max_detections": 1000, "max_instances": 64}
        model = model.reconfigured(**{k: v for k, v in upgrade.items() if getattr(model.config, k) != v})
        if model.config.class_names != ("background", "object"):
            model = model.reconfigured(class_names=("background", "object"))
    else:
        model = MaskRCNN(MaskRCNNConfig())
    model = model.reconfigured(object_diameter_range=diameter_range(train, model.config))
    cfg = InstanceTrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                              max_seconds=max_seconds, eval_every=eval_every, patience=patience)
    result = train_instances(model, train, val, cfg, log=log)
    _save_run(model, out_dir, result, train, {"init": str(init) if init else None, **dataclasses.asdict(cfg)})
    return model
