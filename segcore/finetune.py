"""Fine-tuning that adapts to a new domain by itself, and fine-tuning towards the user's own classes.

Conventions: images are raw 2-D arrays ``H,W`` (any size, raw pixel values, as ``Scan.slice`` gives them);
masks are ``H,W`` integer label maps on the same grid, ``0`` = background, labels below the model's number of
classes. Inside, images are preprocessed exactly as at inference (:func:`segcore.infer.preprocess`) to the
model's ``input_size``. Dice is the mean foreground Dice over classes ``1..K-1`` from the confusion counts of a
whole held-out set (a class absent from both prediction and truth scores 1, as in :class:`segcore.train.DiceMetric`).
Inputs are never mutated: the model passed in is copied before training.

What :func:`adapt` decides when :class:`FineTuneSettings` is left at its defaults
---------------------------------------------------------------------------------
1. **Replay** (mixing the original training images into each batch) only when the corrections come from the
   training domain. Criterion, measured: the incoming model's mean foreground Dice on the corrections themselves.
   At or above ``in_domain_dice`` (0.85) the corrections are "in domain" and a quarter of every batch is replay;
   below it, replay would pull the model back towards a domain the user does not work on, and is left out.
   Measured with the shipped model (bench/finetune.py): 0.97 on corrected phantom validation images, 0.93 on its
   own test set; 0.73 on fluorescence nuclei when its "organ" output is renamed "nucleus" (bright blobs look
   organ-like, yet it is another domain), 0.35 with the three shipped classes, 0.00-0.03 on real MR/CT lesions.
2. **How long to train**: part of the corrections is held out and training stops early on held-out Dice
   (patience in steps, best step kept). If the held-out Dice then fell clearly (by ``overfit_drop``, 0.03, and by
   more than its own evaluation-to-evaluation noise explains) after a best reached once training had settled (not within the first ``min_steps``, where one or two held-out images
   give noisy peaks) the final model trains for the early-stopping point; if it only plateaued, the final model trains for as long as
   the time budget allows (measured on real scans: tiny held-out sets stop early on noise, while the test Dice
   kept rising with more steps; see BENCHMARKS.md). With fewer than ``min_holdout_split`` (4) corrections there is no
   spare image to hold out, so every correction is held out once (leave-one-out folds: 2 corrections = 2 folds)
   and the folds' best step counts are averaged. With more, one split holds out 20% (at most 40 images).
   A single correction cannot be validated: it trains for ``SINGLE_CORRECTION_EPOCHS`` epochs.
3. **Then the final model is trained on all corrections.** Over-fitting seen: from the incoming weights for the
   early-stopping step (scaled by ``n / n_train``). Otherwise the last hold-out run's model goes on with all
   corrections (held-out ones included) for the rest of the time budget, with a fresh warm-up + cosine decay:
   no step already taken is thrown away, and no correction is left out of the final model.
4. **Learning rate**: linear warm-up then cosine decay; the decoder and head get the peak ``learning_rate``,
   the encoder a lower one (``encoder_lr_ratio`` x peak, 0.3): the head must move to a new domain or class set,
   the low-level filters much less. Two Adam optimisers, one per group. The peak follows the same domain
   criterion as replay: 2e-4 in domain (small refinements; one step at 1e-3 already cost the shipped model Dice
   on its own test set); out of domain 3e-3 with fewer than 4 corrections (the best peak of the manual grid on
   every real case with 2 corrections) and 1e-3 with more (at 8 corrections 3e-3 gained little and once
   collapsed to all-background on the lung lesions, 1e-3 did not; bench/finetune.py). With 4 or more corrections
   out of domain the final run peaks at twice that (``FINAL_LR_BOOST``): at 1e-3 lung1 with 8 corrections was
   short of steps in 50 s (0.74-0.89 test Dice over seeds), at 2e-3 throughout brain1 with 8 corrections fell
   0.21 held-out Dice in its constant-rate hold-out run; 1e-3 for the hold-out runs and 2e-3 for the decaying
   final run gave 0.871-0.907 on lung1 (0.896-0.907 in 5 of 6 runs) and left brain1 unchanged over 4 seeds
   (bench/results/finetune_rerun.json; the full passes in bench/results/finetune.json).
5. **Augmentation**: :func:`segcore.data.augment` (flips, rot90, affine, photometric) on every sample, then a
   random crop (``crop`` px). Half the crops are drawn from the corrections that have foreground and centred on
   one of its pixels, so a small lesion on 2 of 8 corrected slices is in half the crops, not in an eighth.
6. **Time**: everything fits in ``time_budget_s`` (automatic: 50 s for up to 8 corrections, growing with the
   square root of their number): the step time is measured and step counts are capped to fit.

Manual overrides (``epochs``, ``learning_rate``, ``replay``, ...) replace the corresponding decision; with
``epochs`` set nothing is held out and the model trains on all corrections for that many epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .models import ModelConfig, default_class_colors
from .train import FineTuneCancelled  # one cancellation type for fine_tune and adapt

__all__ = [
    "class_rows",
    "class_set",
    "correction_fits",
    "FineTuneCancelled",
    "FineTuneResult",
    "FineTuneSettings",
    "adapt",
    "domain_dice",
    "holdout_splits",
    "prepare_pairs",
    "replay_decision",
    "retarget",
    "steps_per_epoch",
]


@dataclasses.dataclass
class FineTuneSettings:
    """Settings of :func:`adapt`. ``None`` means "decide automatically" (see the module docstring).

    Attributes
    ----------
    epochs : int or None
        Manual override: train on all corrections for this many epochs (an epoch shows each correction's area
        once: ``ceil(n * (H*W / crop^2) / batch_size)`` steps), no hold-out, no early stopping.
    learning_rate : float or None
        Peak learning rate of the decoder and head (automatic: out of domain 3e-3 below 4 corrections, else
        1e-3 for the hold-out runs and 2e-3 for the final run; in domain 2e-4). A manual value is used for
        every run.
    encoder_lr_ratio : float
        Encoder peak learning rate as a fraction of ``learning_rate``.
    replay : bool or None
        Mix original training images into every batch (automatic: only in domain, see ``in_domain_dice``).
    replay_fraction : float
        Fraction of each batch taken from the replay set when replay is on.
    in_domain_dice : float
        The incoming model's Dice on the corrections at or above which they count as in domain.
    batch_size, crop : int
        Samples per step and their crop size in model pixels (``crop`` >= ``input_size`` trains on whole images).
    foreground_crop_fraction : float
        Fraction of crops drawn from the corrections with foreground and centred on a foreground pixel (the rest
        from all corrections at random places; at 1 the corrections without foreground are not used).
    max_epochs : int or None
        Upper bound on the epochs of one hold-out run (automatic: whatever ``time_budget_s`` allows, at most 400).
    patience_epochs, min_patience_steps : int
        Early stopping: stop after ``max(min_patience_steps, patience_epochs * steps_per_epoch, best_step / 2)``
        steps without a better held-out Dice.
    min_epochs, min_steps : int
        Never stop a hold-out run before ``max(min_steps, min_epochs * steps_per_epoch)`` steps (a new head or
        domain often passes through an all-background phase first).
    overfit_drop : float
        Held-out Dice lost after its best (best mean of 3 consecutive evaluations to the mean of the last 3,
        averaged over folds; a best reached before ``max(min_steps, min_epochs * steps_per_epoch)`` steps does not
        count) that counts as over-fitting, raised to what the curve's own noise explains (``_fall_and_noise``):
        then the final model trains for the early-stopping point only; otherwise for what the time budget still
        allows (at least the early-stopping point). 0: always the early-stopping point.
    select_share : float
        Share of the time budget the hold-out runs may use.
    min_holdout_split : int
        With fewer corrections, leave-one-out folds are used instead of a single hold-out split.
    holdout_fraction : float
        Share of the corrections held out when there are enough.
    time_budget_s : float or None
        Wall-clock budget for the whole call (automatic: ``50 * max(1, sqrt(n / 8))`` s).
    seed : int
        Seed of the split and of the sampling.
    """

    epochs: int | None = None
    learning_rate: float | None = None
    encoder_lr_ratio: float = 0.3
    replay: bool | None = None
    replay_fraction: float = 0.25
    in_domain_dice: float = 0.85
    batch_size: int = 8
    crop: int = 128
    foreground_crop_fraction: float = 0.5
    max_epochs: int | None = None
    patience_epochs: int = 4
    min_patience_steps: int = 20
    min_epochs: int = 8
    min_steps: int = 30
    overfit_drop: float = 0.03
    select_share: float = 0.4
    min_holdout_split: int = 4
    holdout_fraction: float = 0.2
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1 or None. Got {self.epochs}."),
            (self.learning_rate is None or 0 < self.learning_rate < 1,
             f"learning_rate must be in (0, 1) or None. Got {self.learning_rate}."),
            (0 <= self.encoder_lr_ratio <= 1, f"encoder_lr_ratio must be in [0, 1]. Got {self.encoder_lr_ratio}."),
            (0 < self.replay_fraction < 1, f"replay_fraction must be in (0, 1). Got {self.replay_fraction}."),
            (self.batch_size >= 1, f"batch_size must be >= 1. Got {self.batch_size}."),
            (self.crop >= 8, f"crop must be >= 8 pixels. Got {self.crop}."),
            (0 <= self.foreground_crop_fraction <= 1,
             f"foreground_crop_fraction must be in [0, 1]. Got {self.foreground_crop_fraction}."),
            (self.max_epochs is None or self.max_epochs >= 1, f"max_epochs must be >= 1 or None. Got {self.max_epochs}."),
            (0 < self.holdout_fraction < 1, f"holdout_fraction must be in (0, 1). Got {self.holdout_fraction}."),
            (self.min_holdout_split >= 2, f"min_holdout_split must be >= 2. Got {self.min_holdout_split}."),
            (self.time_budget_s is None or self.time_budget_s > 0,
             f"time_budget_s must be positive or None. Got {self.time_budget_s}."),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def from_dict(cls, d: dict | None) -> FineTuneSettings:
        """Settings from a JSON-like dict (unknown keys raise, naming the accepted ones)."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tune settings {unknown}. Accepted: {sorted(known)}.")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FineTuneResult:
    """What :func:`adapt` returns.

    ``steps`` / ``epochs`` count every training step the returned model received (a hold-out run it continued
    from included). ``decisions`` records every automatic choice with the measurement behind it (JSON-serialisable; it goes into
    the model card and the version's metrics). ``history`` has one record per evaluation or logged step:
    ``{"phase", "fold", "step", "epoch", "loss", "val_dice"?, "elapsed"}``.
    """

    model: keras.Model
    config: ModelConfig
    epochs: float
    steps: int
    learning_rate: float
    encoder_learning_rate: float
    replay: bool
    decisions: dict
    history: list
    held_out_dice: float | None
    seconds: float


# --------------------------------------------------------------------------- small pure helpers
def steps_per_epoch(n: int, input_size: Sequence[int], crop: int, batch_size: int) -> int:
    """Steps that show each of ``n`` images' area once with ``crop``-sized samples.

    >>> steps_per_epoch(8, (256, 256), 128, 8)
    4
    >>> steps_per_epoch(2, (256, 256), 128, 8)
    1
    """
    h, w = input_size
    c = min(crop, h, w)
    per_image = (h * w) / float(c * c)
    return max(1, math.ceil(n * per_image / batch_size))


def holdout_splits(n: int, settings: FineTuneSettings | None = None,
                   foreground: Sequence[bool] | None = None) -> list[tuple[list[int], list[int]]]:
    """``(train, held_out)`` index lists: leave-one-out folds for few corrections, else one seeded split.

    ``foreground[i]`` says whether correction ``i`` has any non-background pixel. Held-out images without
    foreground say nothing about how well a class is learnt (their Dice is 0 or 1), so leave-one-out keeps only
    folds that hold out an image with foreground and train on one (all folds if none qualifies), and the single
    split is stratified: held-out images with foreground in proportion, at least one, never all of them.

    >>> holdout_splits(2)
    [([1], [0]), ([0], [1])]
    >>> holdout_splits(3, foreground=[True, False, True])
    [([1, 2], [0]), ([0, 1], [2])]
    >>> [len(v) for _, v in holdout_splits(10)]
    [2]
    >>> _, held = holdout_splits(10, foreground=[i < 2 for i in range(10)])[0]
    >>> sum(i < 2 for i in held)
    1
    """
    s = settings or FineTuneSettings()
    if n < 2:
        raise ValueError(f"Holding out needs at least 2 corrections. Got {n}.")
    fg = [True] * n if foreground is None else [bool(f) for f in foreground]
    if len(fg) != n:
        raise ValueError(f"foreground has {len(fg)} entries for {n} corrections.")
    if n < s.min_holdout_split:
        folds = [([j for j in range(n) if j != i], [i]) for i in range(n)]
        useful = [(tr, va) for tr, va in folds if fg[va[0]] and any(fg[j] for j in tr)]
        return useful or folds
    k = int(min(40, max(1, round(s.holdout_fraction * n))))
    rng = np.random.default_rng(s.seed)
    with_fg = [int(i) for i in rng.permutation([i for i in range(n) if fg[i]])]
    without = [int(i) for i in rng.permutation([i for i in range(n) if not fg[i]])]
    k_fg = min(len(with_fg) - 1, max(1, round(k * len(with_fg) / n))) if len(with_fg) >= 2 else 0
    k_fg = max(k_fg, k - len(without))
    held = sorted(with_fg[:k_fg] + without[:k - k_fg])
    return [([i for i in range(n) if i not in held], held)]


def _dice_from_counts(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    d = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-8), 1.0)
    return float(d[1:].mean())


def _confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    idx = truth.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def prepare_pairs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess raw images and resize masks to the model size: ``(N,H,W,1) float32, (N,H,W) uint8``."""
    import cv2

    from .infer import preprocess

    if len(images) == 0 or len(images) != len(masks):
        raise ValueError(f"Fine-tuning needs pairs of images and masks. Got {len(images)} images and "
                         f"{len(masks)} masks.")
    h, w = config.input_size
    xs, ys = [], []
    for i, (im, m) in enumerate(zip(images, masks)):
        m = np.asarray(m)
        if m.ndim != 2 or m.shape != np.shape(im)[:2]:
            raise ValueError(f"Mask {i} has shape {m.shape}; expected the image's {np.shape(im)[:2]}.")
        if m.min(initial=0) < 0 or m.max(initial=0) >= config.num_classes:
            raise ValueError(f"Mask {i} has labels in [{m.min()}, {m.max()}] but the model has "
                             f"{config.num_classes} classes {list(config.class_names)}.")
        xs.append(preprocess(im, config))
        ys.append(cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.uint8)


def _predict_labels(model: keras.Model, x: np.ndarray, batch: int = 8) -> np.ndarray:
    out = [np.asarray(model(x[i:i + batch], training=False)).argmax(-1) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.uint8)


def _dice_on(model: keras.Model, x: np.ndarray, y: np.ndarray, k: int) -> float:
    pred = _predict_labels(model, x)
    return _dice_from_counts(sum(_confusion(p, t, k) for p, t in zip(pred, y)))


def domain_dice(model: keras.Model, config: ModelConfig, images: Sequence[np.ndarray],
                masks: Sequence[np.ndarray]) -> float:
    """The model's mean foreground Dice on the corrections themselves (the replay criterion)."""
    x, y = prepare_pairs(images, masks, config)
    return _dice_on(model, x, y, config.num_classes)


# --------------------------------------------------------------------------- classes
def class_rows(names: Sequence[str], colors: Sequence[Sequence[int]]) -> list[dict]:
    """A class set as editable rows ``{"class", "colour"}`` (colour as ``#rrggbb``); :func:`class_set` reads them.

    >>> class_rows(["background", "organ"], [(0, 0, 0), (46, 204, 113)])
    [{'class': 'background', 'colour': '#000000'}, {'class': 'organ', 'colour': '#2ecc71'}]
    """
    return [{"class": n, "colour": "#%02x%02x%02x" % tuple(int(v) for v in c)} for n, c in zip(names, colors)]


def class_set(rows: Sequence[dict]) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """``(names, colours)`` from rows ``{"class": name, "colour": "#rrggbb"}`` (blank rows skipped).

    Raises ValueError naming the row when a name is missing or repeated or a colour is not ``#rrggbb``.

    >>> class_set([{"class": "background", "colour": "#000000"}, {"class": " nucleus ", "colour": "#FF00aa"}])
    (('background', 'nucleus'), ((0, 0, 0), (255, 0, 170)))
    >>> class_set([{"class": "background", "colour": "#000000"}, {"class": "cell", "colour": "red"}])
    Traceback (most recent call last):
    ...
    ValueError: Row 2 (cell): colour 'red' is not #rrggbb (e.g. #2ecc71).
    """
    import re

    names, colors = [], []
    for i, r in enumerate(rows, 1):
        name, col = str(r.get("class") or "").strip(), str(r.get("colour") or "").strip()
        if not name and not col:
            continue
        if not name:
            raise ValueError(f"Row {i}: a class needs a name.")
        if name in names:
            raise ValueError(f"Row {i}: class '{name}' is listed twice; class names must be distinct.")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", col):
            raise ValueError(f"Row {i} ({name}): colour '{col}' is not #rrggbb (e.g. #2ecc71).")
        names.append(name)
        colors.append(tuple(int(col[k:k + 2], 16) for k in (1, 3, 5)))
    if len(names) < 2:
        raise ValueError(f"A class set needs background and at least one class. Got {names}.")
    return tuple(names), tuple(colors)


def correction_fits(correction, class_names: Sequence[str]) -> str | None:
    """None when every label of a saved correction is a class of ``class_names``; else why it cannot train them.

    Labels are class indices: a correction drawn as ``organ`` (label 1) trains class 1 of the new set, whatever
    its new name (a rename). ``correction`` is a :class:`segcore.store.Correction` (its ``labels``).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(labels=(0, 1, 2), class_names=("background", "organ", "lesion"))
    >>> correction_fits(c, ["background", "organ", "lesion"]) is None
    True
    >>> correction_fits(c, ["background", "nucleus"])
    'it has label 2 (lesion); the new class set has 2 classes (background, nucleus)'
    """
    names = list(class_names)
    extra = [int(v) for v in getattr(correction, "labels", ()) if int(v) >= len(names)]
    if not extra:
        return None
    old = getattr(correction, "class_names", None) or ()
    named = ", ".join(f"{v} ({old[v]})" if v < len(old) else str(v) for v in extra)
    return (f"it has label{'s' if len(extra) > 1 else ''} {named}; the new class set has {len(names)} classes "
            f"({', '.join(names)})")


def retarget(model: keras.Model, config: ModelConfig, class_names: Sequence[str],
             colors: Sequence[Sequence[int]] | None = None, *, new_head: bool = False
             ) -> tuple[keras.Model, ModelConfig]:
    """A copy of ``model`` whose softmax head predicts ``class_names`` (index 0 is background).

    Every layer but the head keeps its weights. Head weights are copied per new class from the old class of
    the same name, else (a rename) from the old class at the same index when that class is not kept under its
    own name elsewhere; remaining classes start fresh (small random kernel, zero bias). ``new_head=True``
    copies nothing. The model passed in is not modified.

    Parameters
    ----------
    class_names : sequence of str
        At least 2 distinct, non-empty names; ``class_names[0]`` is background.
    colors : sequence of RGB triples, optional
        One per class; default: the old colour of classes kept by name, the display palette for the others.

    Returns
    -------
    (keras.Model, ModelConfig)
        The new model and a new config (``num_classes``, ``class_names``, ``class_colors``; the mapping is
        recorded in ``config.card["retarget"]``).

    Raises
    ------
    ValueError
        Bad class names or colours, or a model without a layer named ``head``.
    """
    names = tuple(str(n).strip() for n in class_names)
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"class_names must be at least 2 distinct non-empty names, background first. "
                         f"Got {list(class_names)}.")
    try:
        old_head = model.get_layer("head")
    except ValueError as exc:
        raise ValueError(f"Model '{model.name}' has no layer named 'head'; retarget needs the segcore builders' "
                         "1x1 softmax head.") from exc
    old_names = list(config.class_names)
    mapping: dict[int, int] = {}
    if not new_head:
        for i, n in enumerate(names):
            if n in old_names:
                mapping[i] = old_names.index(n)
        kept = set(mapping.values())
        for i, n in enumerate(names):
            if i not in mapping and i < len(old_names) and i not in kept and old_names[i] not in names:
                mapping[i] = i
    k = len(names)
    if colors is None:
        palette = default_class_colors(k)
        colors = [config.class_colors[mapping[i]] if i in mapping and names[i] in old_names else palette[i]
                  for i in range(k)]
    colors = tuple(tuple(int(v) for v in c) for c in colors)

    from .train import clone_model

    base = clone_model(model)
    features = base.get_layer("head").input
    head = keras.layers.Conv2D(k, 1, activation="softmax", name="head", dtype="float32")
    inputs = base.inputs[0] if len(base.inputs) == 1 else base.inputs
    new = keras.Model(inputs, head(features), name=model.name)
    old_kernel, old_bias = (np.asarray(v) for v in old_head.get_weights())
    kernel = np.random.default_rng(0).normal(0.0, 0.01, (*old_kernel.shape[:-1], k)).astype(np.float32)
    bias = np.zeros(k, np.float32)
    for i, j in mapping.items():
        kernel[..., i] = old_kernel[..., j]
        bias[i] = old_bias[j]
    head.set_weights([kernel, bias])
    new_config = copy.deepcopy(config)
    new_config.num_classes = k
    new_config.class_names = names
    new_config.class_colors = colors  # type: ignore[assignment]
    new_config.card = {**(new_config.card or {}),
                       "retarget": {"from": old_names, "to": list(names),
                                    "copied": {names[i]: old_names[j] for i, j in sorted(mapping.items())}}}
    new_config.__post_init__()  # validate names vs colours
    return new, new_config


# --------------------------------------------------------------------------- training engine
class _WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` then cosine decay to ``floor * peak`` at ``total`` (constant if total is 0)."""

    def __init__(self, peak: float, warmup: int, total: int, floor: float = 0.05):
        self.peak = tf.Variable(float(peak), trainable=False, dtype=tf.float32)
        self.warmup = tf.Variable(float(max(1, warmup)), trainable=False, dtype=tf.float32)
        self.total = tf.Variable(float(total), trainable=False, dtype=tf.float32)
        self.floor = float(floor)

    def set(self, peak: float, warmup: int, total: int) -> None:
        self.peak.assign(float(peak))
        self.warmup.assign(float(max(1, warmup)))
        self.total.assign(float(total))

    def __call__(self, step):
        s = tf.cast(step, tf.float32) + 1.0
        warm = self.peak * tf.minimum(1.0, s / self.warmup)
        span = tf.maximum(self.total - self.warmup, 1.0)
        frac = tf.clip_by_value((s - self.warmup) / span, 0.0, 1.0)
        cos = self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + tf.cos(math.pi * frac)))
        decayed = tf.where(s <= self.warmup, warm, cos)
        return tf.where(self.total > 0, decayed, warm)

    def get_config(self):
        return {"peak": float(self.peak.numpy()), "warmup": int(self.warmup.numpy()),
                "total": int(self.total.numpy()), "floor": self.floor}


def _is_encoder(layer_name: str) -> bool:
    return layer_name.startswith(("enc", "bottleneck")) or layer_name.endswith("_encoder")


class _Trainer:
    """One working copy of the model, two optimisers and one traced train step, reused by every run."""

    def __init__(self, model: keras.Model, config: ModelConfig, loss: keras.losses.Loss):
        from .train import clone_model

        self.config = config
        self.net = clone_model(model)
        self.base_weights = [np.array(w) for w in model.get_weights()]
        enc, dec = [], []
        for layer in self.net.layers:
            (enc if _is_encoder(layer.name) else dec).extend(layer.trainable_variables)
        self.groups = [g for g in (dec, enc) if g]
        self.schedules = [_WarmupCosine(1e-3, 1, 0) for _ in self.groups]
        self.optimizers = [keras.optimizers.Adam(s) for s in self.schedules]
        for opt, g in zip(self.optimizers, self.groups):
            opt.build(g)
        self.loss = loss
        self._step = tf.function(self._train_step, reduce_retracing=True)

    def _train_step(self, x, y):
        variables = [v for g in self.groups for v in g]
        with tf.GradientTape() as tape:
            p = self.net(x, training=True)
            value = self.loss(y, p)
        grads = tape.gradient(value, variables)
        i = 0
        for opt, g in zip(self.optimizers, self.groups):
            opt.apply_gradients(zip(grads[i:i + len(g)], g))
            i += len(g)
        return value

    def reset(self, peaks: Sequence[float], warmup: int, total: int, *, keep_weights: bool = False) -> None:
        """Fresh optimiser state and a new schedule; back to the incoming weights unless ``keep_weights``."""
        if not keep_weights:
            self.net.set_weights(self.base_weights)
        for opt, sched, peak in zip(self.optimizers, self.schedules, peaks):
            for v in opt.variables:
                v.assign(tf.zeros_like(v))
            sched.set(peak, warmup, total)

    def step(self, x, y) -> float:
        return float(self._step(tf.convert_to_tensor(x), tf.convert_to_tensor(y)))


def _sample_dataset(x: np.ndarray, y: np.ndarray, idx: Sequence[int], settings: FineTuneSettings,
                    replay: tuple[np.ndarray, np.ndarray] | None, seed: int) -> tf.data.Dataset:
    """An endless dataset of augmented, foreground-oversampled crops (batches of ``settings.batch_size``).

    A fraction ``foreground_crop_fraction`` of the crops is drawn from the corrections that have foreground and
    centred on one of its pixels (nnU-Net's oversampling, per crop rather than per batch); the rest are drawn from
    all corrections at random places. When most corrected slices are empty (a small lesion on 2 of 8 slices),
    the lesion is still in that fraction of the crops instead of in a quarter of it.
    """
    from .data import augment

    h, w = x.shape[1:3]
    crop = min(settings.crop, h, w)
    p_fg = float(settings.foreground_crop_fraction)

    def crop_fn(img, m, centred: bool):
        if crop >= min(h, w):
            return img, m
        fg = tf.where(m > 0)
        n_fg = tf.shape(fg)[0]
        pick = tf.random.uniform((), 0, tf.maximum(n_fg, 1), dtype=tf.int32)
        random_centre = tf.stack([tf.random.uniform((), 0, h, dtype=tf.int32),
                                  tf.random.uniform((), 0, w, dtype=tf.int32)])
        if centred:  # augmentation can move the foreground out of the image: then a random place
            centre = tf.cond(n_fg > 0, lambda: tf.cast(fg[tf.minimum(pick, tf.maximum(n_fg - 1, 0))], tf.int32),
                             lambda: random_centre)
        else:
            centre = random_centre
        top = tf.clip_by_value(centre[0] - crop // 2, 0, h - crop)
        left = tf.clip_by_value(centre[1] - crop // 2, 0, w - crop)
        return img[top:top + crop, left:left + crop], m[top:top + crop, left:left + crop]

    def pipeline(xa, ya, s, centred: bool):
        ds = tf.data.Dataset.from_tensor_slices((xa, ya)).repeat().shuffle(max(16, len(xa)), seed=s)
        return ds.map(lambda a, b: crop_fn(*augment(a, b), centred), num_parallel_calls=2)

    def oversampled(xa, ya, s):
        """Crops of ``xa, ya``: ``p_fg`` of them from the images with foreground, centred on it."""
        with_fg = [i for i in range(len(ya)) if (ya[i] > 0).any()]
        if crop >= min(h, w) or not with_fg or p_fg <= 0:
            return pipeline(xa, ya, s, False)
        if p_fg >= 1:
            return pipeline(xa[with_fg], ya[with_fg], s, True)
        return tf.data.Dataset.sample_from_datasets(
            [pipeline(xa[with_fg], ya[with_fg], s, True), pipeline(xa, ya, s + 2, False)],
            weights=[p_fg, 1 - p_fg], seed=s + 3)

    rows = list(idx)
    ds = oversampled(x[rows], y[rows], seed)
    if replay is not None:  # the replay set is oversampled the same way: its small structures stay in view
        ds = tf.data.Dataset.sample_from_datasets(
            [ds, oversampled(replay[0], replay[1], seed + 10)],
            weights=[1 - settings.replay_fraction, settings.replay_fraction], seed=seed + 4)
    # no tf.data autotuning: its optimisation thread made dropping an iterator wait up to 17 s (idle) at the end
    # of a run, which pushed 8-correction fine-tunes past their time budget; fixed parallelism is as fast here
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.batch(settings.batch_size, drop_remainder=True).prefetch(2).with_options(options)


@dataclasses.dataclass
class _Run:
    """One training run: what it trains on, how long, and (for hold-out runs) what it is judged on."""

    phase: str
    fold: int
    train_idx: list
    val_idx: list
    max_steps: int
    deadline: float
    peaks: tuple
    warmup: int
    cosine: bool
    patience: int = 0
    eval_every: int = 1
    min_steps: int = 0
    continue_from_current: bool = False


class _Context:
    """Progress, cancellation and the history shared by all runs of one :func:`adapt` call.

    ``fraction`` in each record is an estimate of the whole call's progress for a progress bar: hold-out runs
    fill the first ``select_share`` in proportion to their time budget, the final run the rest step by step.
    """

    def __init__(self, progress, cancel, t0: float, spe: int, select_budget: float, select_share: float):
        self.progress, self.cancel, self.t0, self.spe = progress, cancel, t0, spe
        self.select_budget, self.select_share = select_budget, select_share
        self.final_steps = 0
        self.history: list[dict] = []

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise FineTuneCancelled("Fine-tuning was cancelled.")

    def report(self, rec: dict) -> None:
        elapsed = time.perf_counter() - self.t0
        if rec["phase"] == "select":
            frac = self.select_share * min(1.0, elapsed / max(self.select_budget, 1e-6))
        else:
            frac = self.select_share + (1 - self.select_share) * rec["step"] / max(1, self.final_steps)
        rec = {**rec, "elapsed": round(elapsed, 3), "fraction": round(min(frac, 1.0), 4)}
        self.history.append(rec)
        if self.progress is not None:
            self.progress(rec)


def _execute(trainer: _Trainer, run: _Run, x, y, settings: FineTuneSettings, replay, ctx: _Context) -> dict:
    """Train one run; with a held-out set, early-stop on its Dice and return the best step."""
    total = run.max_steps if run.cosine else 0
    trainer.reset(run.peaks, run.warmup, total, keep_weights=run.continue_from_current)
    ds = iter(_sample_dataset(x, y, run.train_idx, settings, replay, settings.seed + run.fold))
    k = trainer.config.num_classes
    xv, yv = (x[run.val_idx], y[run.val_idx]) if run.val_idx else (None, None)
    best, best_step, waited, step, losses = -1.0, 0, 0, 0, []
    step_times: list[float] = []
    curve: list[float] = []
    while step < run.max_steps:
        ctx.check_cancel()
        if step >= 2 and time.perf_counter() > run.deadline:
            break
        ts = time.perf_counter()
        xb, yb = next(ds)
        losses.append(trainer.step(xb, yb))
        step_times.append(time.perf_counter() - ts)
        step += 1
        rec = {"phase": run.phase, "fold": run.fold, "step": step, "epoch": round(step / ctx.spe, 3),
               "loss": float(np.mean(losses[-ctx.spe:]))}
        if xv is not None and (step % run.eval_every == 0 or step == run.max_steps):
            d = _dice_on(trainer.net, xv, yv, k)
            rec["val_dice"] = d
            if step >= run.min_steps:  # the all-background start and the jump out of it are not noise
                curve.append(d)
            if d > best + 1e-4:
                best, best_step, waited = d, step, 0
            else:
                waited += run.eval_every
            ctx.report(rec)
            if step >= run.min_steps and waited >= max(run.patience, best_step // 2):
                break
        else:
            ctx.report(rec)
    drop, noise = _fall_and_noise(curve)
    return {"best_dice": best if (xv is not None and best >= 0) else None, "best_step": best_step, "steps": step,
            "drop_after_best": round(drop, 4), "fall_noise": round(noise, 4),
            "step_seconds": float(np.mean(step_times[1:] or step_times or [0.0]))}


def _fall_and_noise(curve: Sequence[float]) -> tuple[float, float]:
    """How far a held-out Dice curve fell after its best, and the fall its noise alone would explain.

    ``curve`` holds the evaluations made once training settled (the all-background start of a new head and the
    jump out of it are left out). The fall is from the best mean of 3 consecutive evaluations to the mean of the
    last 3. The noise is the
    evaluation-to-evaluation scatter (``std(diff) / sqrt(2)`` per evaluation), turned into two standard errors of a
    difference of two 3-means: a held-out set with one small lesion jumps by 0.2-0.4 between evaluations, and
    such a jump is not over-fitting.

    >>> _fall_and_noise([0.8, 0.85, 0.86, 0.8, 0.75, 0.72])  # a steady fall: over-fitting
    (0.08, 0.0471)
    >>> _fall_and_noise([0.2, 0.67, 0.36, 0.26, 0.47, 0.45, 0.27])  # one small held-out lesion: noise
    (0.0333, 0.2993)
    """
    c = np.asarray(curve, np.float64)
    if c.size < 2:
        return 0.0, 0.0
    means = np.convolve(c, np.ones(3) / 3, mode="valid") if c.size >= 3 else c
    fall = float(means.max() - means[-1])
    sigma = float(np.std(np.diff(c)) / np.sqrt(2))
    return round(max(fall, 0.0), 4), round(float(2 * sigma * np.sqrt(2 / 3)), 4)


SINGLE_CORRECTION_EPOCHS = 40
NEW_DOMAIN_LR_FEW = 3e-3  # decoder/head peak out of the training domain (or a new head), fewer than 4 corrections
NEW_DOMAIN_LR = 1e-3  # ... 4 or more corrections
IN_DOMAIN_LR = 2e-4  # ... when they are in domain: small corrections, do not forget what works
FINAL_LR_BOOST = 2.0  # the final run's peak over the hold-out runs' (out of domain, 4+ corrections, automatic lr)


def replay_decision(domain_dice_value: float, settings: FineTuneSettings, has_replay: bool) -> tuple[bool, str]:
    """Whether to mix the replay set in, and why (the criterion of the module docstring).

    >>> replay_decision(0.9, FineTuneSettings(), True)
    (True, "incoming model's Dice on the corrections 0.900 >= 0.85: in domain")
    >>> replay_decision(0.3, FineTuneSettings(), True)[0], replay_decision(0.9, FineTuneSettings(replay=False), True)[0]
    (False, False)
    """
    if settings.replay is not None:
        return bool(settings.replay) and has_replay, f"manual override replay={settings.replay}"
    if not has_replay:
        return False, "no replay set given"
    inside = domain_dice_value >= settings.in_domain_dice
    return inside, (f"incoming model's Dice on the corrections {domain_dice_value:.3f} "
                    f"{'>=' if inside else '<'} {settings.in_domain_dice}: {'in' if inside else 'out of'} domain")


def _auto_budget(n: int) -> float:
    return 50.0 * max(1.0, math.sqrt(n / 8.0))


def adapt(model: keras.Model, config: ModelConfig, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
          settings: FineTuneSettings | None = None, replay: tuple[np.ndarray, np.ndarray] | None = None,
          progress: Callable[[dict], Any] | None = None, cancel: Callable[[], bool] | None = None
          ) -> FineTuneResult:
    """Fine-tune a copy of ``model`` on corrected images, choosing the schedule by itself.

    Parameters
    ----------
    model, config : keras.Model, ModelConfig
        The starting point (e.g. the active version, or :func:`retarget`'s output for new classes).
        Not modified.
    images, masks : sequences of arrays
        Raw 2-D images ``H,W`` and their corrected label maps ``H,W`` (labels < ``config.num_classes``).
    settings : FineTuneSettings, optional
        Defaults decide everything (see the module docstring); set fields to override.
    replay : (array, array), optional
        Original training data, preprocessed (``N,H,W,1`` float32, ``N,H,W`` uint8 at ``config.input_size``),
        used only when the replay decision says so.
    progress : callable, optional
        Called with a record after every training step: ``{"phase": "select"|"final", "fold", "step",
        "epoch", "loss", "val_dice"? (hold-out runs, when evaluated), "elapsed" (s), "fraction"}``;
        ``fraction`` estimates the progress of the whole call in [0, 1] for a progress bar.
    cancel : callable, optional
        Checked before every step; when it returns True :class:`FineTuneCancelled` is raised.

    Returns
    -------
    FineTuneResult

    Raises
    ------
    ValueError
        Mismatched images and masks, labels outside the model's classes, a bad replay set.
    FineTuneCancelled
        ``cancel()`` returned True.
    """
    from .losses import class_weights_from_masks, get_loss

    s = settings or FineTuneSettings()
    t0 = time.perf_counter()
    x, y = prepare_pairs(images, masks, config)
    n = len(x)
    h, w = config.input_size
    spe = steps_per_epoch(n, (h, w), s.crop, s.batch_size)
    budget = s.time_budget_s or _auto_budget(n)
    decisions: dict[str, Any] = {"n_corrections": n, "steps_per_epoch": spe, "time_budget_s": round(budget, 1),
                                 "batch_size": s.batch_size, "crop": min(s.crop, h, w)}

    # -- replay: only when the corrections come from the training domain
    if replay is not None:
        rx, ry = np.asarray(replay[0], np.float32), np.asarray(replay[1], np.uint8)
        if rx.ndim != 4 or rx.shape[1:3] != (h, w) or ry.shape != rx.shape[:3]:
            raise ValueError(f"replay must be (N,{h},{w},1) images and (N,{h},{w}) masks. Got {rx.shape} and "
                             f"{ry.shape}.")
        if ry.max(initial=0) >= config.num_classes:
            raise ValueError(f"Replay masks have label {ry.max()} but the model has {config.num_classes} classes.")
        replay = (rx, ry)
    base_dice = _dice_on(model, x, y, config.num_classes)
    decisions["domain_dice"] = round(base_dice, 4)
    use_replay, decisions["replay_reason"] = replay_decision(base_dice, s, replay is not None)
    decisions["replay"] = use_replay
    replay_used = replay if use_replay else None

    # -- learning rates: higher for decoder/head, lower for the encoder; gentler for in-domain corrections
    in_domain = base_dice >= s.in_domain_dice
    auto_lr = IN_DOMAIN_LR if in_domain else (NEW_DOMAIN_LR_FEW if n < s.min_holdout_split else NEW_DOMAIN_LR)
    lr = float(s.learning_rate or auto_lr)
    decisions["learning_rate_reason"] = ("manual override" if s.learning_rate else
                                         f"{'in' if in_domain else 'out of'} domain (Dice {base_dice:.3f} vs "
                                         f"{s.in_domain_dice}), {n} corrections: peak {lr:g}")
    peaks = (lr, lr * s.encoder_lr_ratio)
    # the final cosine run of an out-of-domain fine-tune with 4+ corrections peaks higher than the hold-out runs:
    # their constant rate at 2e-3 made one case fall after its best (read as over-fitting), the cosine run's decay
    # does not, and 1e-3 left lung1 with 8 corrections short of steps in 50 s (bench/results/finetune_rerun.json)
    boost = s.learning_rate is None and not in_domain and n >= s.min_holdout_split
    final_peaks = tuple(p * FINAL_LR_BOOST for p in peaks) if boost else peaks
    decisions.update(learning_rate=lr, encoder_learning_rate=lr * s.encoder_lr_ratio,
                     schedule="linear warm-up + cosine decay to 5% (final run); warm-up + constant (hold-out runs)")

    loss = get_loss("wce_batch_dice", class_weights=class_weights_from_masks(y, config.num_classes, power=0.5))
    trainer = _Trainer(model, config, loss)
    manual = s.epochs is not None or n < 2
    select_budget = s.select_share * budget
    ctx = _Context(progress, cancel, t0, spe, select_budget, 0.0 if manual else s.select_share)
    held_out_dice = None

    if s.epochs is not None:
        final_steps = s.epochs * spe
        decisions["epochs_reason"] = f"manual override epochs={s.epochs}"
        decisions["holdout"] = "none (manual epochs)"
    elif n < 2:
        final_steps = SINGLE_CORRECTION_EPOCHS * spe
        decisions["epochs_reason"] = (f"one correction: nothing to hold out, trained for {SINGLE_CORRECTION_EPOCHS} "
                                      "epochs (the typical choice for 2 corrections in bench/finetune.py)")
        decisions["holdout"] = "none (one correction)"
    else:
        folds = holdout_splits(n, s, foreground=[bool((m > 0).any()) for m in y])
        decisions["holdout"] = ("leave-one-out" if len(folds) > 1 else "single split") + \
            f": {len(folds)} fold(s), held out {[v for _, v in folds]}"
        patience = max(s.min_patience_steps, s.patience_epochs * spe)
        cap = (s.max_epochs or 400) * spe
        best_steps, best_dices, fold_info = [], [], []
        for f, (tr, va) in enumerate(folds):
            start = time.perf_counter()
            remaining = select_budget - (start - t0)
            deadline = start + remaining / (len(folds) - f)
            run = _Run("select", f, tr, va, cap, deadline, peaks, warmup=max(3, spe), cosine=False,
                       patience=patience, eval_every=max(1, min(spe, 4)) if spe > 1 else 2,
                       min_steps=max(s.min_steps, s.min_epochs * spe))
            out = _execute(trainer, run, x, y, s, replay_used, ctx)
            best_steps.append(out["best_step"])
            best_dices.append(out["best_dice"])
            fold_info.append({"train": tr, "held_out": va, **out})
        scored = [d for d in best_dices if d is not None]
        held_out_dice = float(np.mean(scored)) if scored else None
        n_train = np.mean([len(tr) for tr, _ in folds])
        scale = n / n_train if len(folds) == 1 else 1.0
        chosen = max(spe, round(float(np.mean(best_steps)) * scale))
        # a fall counts only after the volatile start: a peak before the minimum hold-out steps is noise (measured on
        # the real lesion cases: peaks at steps 6-20 then falls of 0.05-0.19, while the test Dice kept rising with
        # more training in the manual grid)
        settled = max(s.min_steps, s.min_epochs * spe)
        drop = float(np.mean([fi["drop_after_best"] if fi["best_step"] >= settled else 0.0 for fi in fold_info]))
        threshold = max(s.overfit_drop, float(np.mean([fi["fall_noise"] for fi in fold_info])))
        step_s = float(np.mean([fi["step_seconds"] for fi in fold_info]))
        remaining = 0.95 * (budget - (time.perf_counter() - t0)) - 1.0
        affordable = max(spe, int(remaining / max(step_s, 1e-3)))
        decisions["folds"] = fold_info
        stops = (f"held-out Dice best at step(s) {best_steps} "
                 f"({[None if d is None else round(d, 4) for d in best_dices]}), x{scale:.2f} for all {n} = {chosen}")
        if s.overfit_drop == 0 or drop >= threshold:
            final_steps = min(chosen, affordable)
            decisions["epochs_reason"] = (f"early stopping: {stops}; held-out Dice fell {drop:.3f} after its best "
                                          f"(>= {threshold:.3f}: over-fitting), so the final model trains from the "
                                          f"incoming weights for that point ({final_steps} steps)")
            if chosen > affordable:
                decisions["capped_by_time"] = {"wanted_steps": chosen, "affordable_steps": affordable}
        else:
            # no over-fitting seen: keep what the last hold-out run learnt and go on with all corrections
            continued = fold_info[-1]["steps"]
            final_steps = affordable
            decisions["continued_from_hold_out_run"] = {"fold": len(folds) - 1, "steps": continued}
            decisions["epochs_reason"] = (f"{stops}; held-out Dice fell only {drop:.3f} after its best "
                                          f"(< {threshold:.3f}, the larger of {s.overfit_drop} and its noise: no "
                                          f"over-fitting seen), so the last hold-out run's "
                                          f"model ({continued} steps) goes on with all {n} corrections for the "
                                          f"{affordable} steps the time budget allows")
    decisions["final_steps"] = final_steps
    ctx.final_steps = final_steps
    decisions["final_learning_rate"] = final_peaks[0]
    run = _Run("final", -1, list(range(n)), [], final_steps,
               float("inf") if s.epochs is not None else t0 + budget + 2.0, final_peaks,
               warmup=max(1, min(final_steps // 10, 3 * spe)), cosine=True,
               continue_from_current="continued_from_hold_out_run" in decisions)
    trained = _execute(trainer, run, x, y, s, replay_used, ctx)["steps"]  # the deadline may stop it early
    decisions["final_steps_trained"] = trained
    if trained < final_steps:
        decisions["stopped_by_time_budget"] = {"planned_steps": final_steps, "trained_steps": trained}
    total_steps = trained + decisions.get("continued_from_hold_out_run", {}).get("steps", 0)
    decisions["total_steps"] = total_steps
    new_config = copy.deepcopy(config)
    seconds = time.perf_counter() - t0
    decisions["seconds"] = round(seconds, 2)
    new_config.card = {**(new_config.card or {}), "fine_tuning": _jsonable(decisions)}
    return FineTuneResult(model=trainer.net, config=new_config, epochs=round(total_steps / spe, 3),
                          steps=total_steps, learning_rate=lr, encoder_learning_rate=lr * s.encoder_lr_ratio,
                          replay=use_replay, decisions=_jsonable(decisions), history=ctx.history,
                          held_out_dice=held_out_dice, seconds=seconds)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj
