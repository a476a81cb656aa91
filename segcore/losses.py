"""Segmentation losses as Keras 3 ``Loss`` subclasses built on ``keras.ops``.

All take ``y_true`` as integer labels ``B,H,W`` (or ``B,H,W,1``) and ``y_pred``
as softmax probabilities ``B,H,W,K``, and return one value per image.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "CrossEntropy",
    "WeightedCrossEntropy",
    "DiceLoss",
    "JaccardLoss",
    "CombinedLoss",
    "UncertaintyWeightedLoss",
    "class_weights_from_masks",
    "get_loss",
]

_EPS = 1e-7


def _one_hot(y_true, num_classes):
    y = ops.convert_to_tensor(y_true)
    if len(y.shape) == 4:
        y = ops.squeeze(y, -1)
    return ops.one_hot(ops.cast(y, "int32"), num_classes)


@keras.saving.register_keras_serializable(package="segcore")
class CrossEntropy(keras.losses.Loss):
    """Pixel-wise categorical cross-entropy, averaged over pixels of each image."""

    def __init__(self, name: str = "cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def _pixel_ce(self, y_true, y_pred):
        k = y_pred.shape[-1]
        oh = _one_hot(y_true, k)
        p = ops.clip(y_pred, _EPS, 1.0)
        return -ops.sum(oh * ops.log(p), axis=-1), oh

    def call(self, y_true, y_pred):
        ce, _ = self._pixel_ce(y_true, y_pred)
        return ops.mean(ce, axis=(1, 2))


@keras.saving.register_keras_serializable(package="segcore")
class WeightedCrossEntropy(CrossEntropy):
    """Cross-entropy with a weight per class (e.g. inverse class frequency).

    The weighted mean over pixels is ``sum(w[y] * ce) / sum(w[y])``, so with all
    weights equal it reduces to :class:`CrossEntropy`.

    Parameters
    ----------
    class_weights : sequence of float
        One non-negative weight per class; see :func:`class_weights_from_masks`.
    """

    def __init__(self, class_weights: Sequence[float], name: str = "weighted_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        w = [float(v) for v in class_weights]
        if not w or min(w) < 0:
            raise ValueError(f"class_weights must be a non-empty list of non-negative floats. Got {class_weights}.")
        self.class_weights = w

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] != len(self.class_weights):
            raise ValueError(
                f"WeightedCrossEntropy has {len(self.class_weights)} class weights but predictions have "
                f"{y_pred.shape[-1]} classes."
            )
        ce, oh = self._pixel_ce(y_true, y_pred)
        w = ops.sum(oh * ops.convert_to_tensor(self.class_weights, dtype=oh.dtype), axis=-1)
        return ops.sum(w * ce, axis=(1, 2)) / (ops.sum(w, axis=(1, 2)) + _EPS)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def class_weights_from_masks(masks, num_classes: int, *, normalise: bool = True, power: float = 1.0) -> list[float]:
    """Inverse class frequency weights from label maps.

    Parameters
    ----------
    masks : array-like or iterable of arrays
        Integer label maps.
    num_classes : int
    normalise : bool
        Scale so that the weights average to 1 over classes.
    power : float
        Damping exponent: ``0.5`` gives square-rooted inverse frequencies (what
        the default model was trained with), ``1.0`` plain inverse frequencies.

    Returns
    -------
    list of float
        ``(total / (num_classes * count_c)) ** power``; classes never seen get
        the largest weight observed.

    Examples
    --------
    >>> class_weights_from_masks(np.array([[0, 0, 0, 1]]), 2, normalise=False)
    [0.6666666666666666, 2.0]
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    arrays = [masks] if isinstance(masks, np.ndarray) else masks
    for m in arrays:
        m = np.asarray(m)
        if m.size and (m.min() < 0 or m.max() >= num_classes):
            raise ValueError(f"Mask labels must be in [0, {num_classes - 1}]. Got range [{m.min()}, {m.max()}].")
        counts += np.bincount(m.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    total = counts.sum()
    if total == 0:
        raise ValueError("class_weights_from_masks got no pixels.")
    seen = counts > 0
    w = np.zeros(num_classes)
    w[seen] = total / (num_classes * counts[seen])
    w[~seen] = w[seen].max()
    w = w**power
    if normalise:
        w = w / w.mean()
    return [float(v) for v in w]


def _soft_overlap(y_true, y_pred, include_background, batch=False):
    k = y_pred.shape[-1]
    oh = ops.cast(_one_hot(y_true, k), y_pred.dtype)
    inter = ops.sum(oh * y_pred, axis=(1, 2))
    sums = ops.sum(oh, axis=(1, 2)) + ops.sum(y_pred, axis=(1, 2))
    if batch:  # pool the counts over the batch: rare classes absent from an image don't dominate
        ones = ops.ones_like(inter[:, :1])
        inter = ones * ops.sum(inter, axis=0, keepdims=True)
        sums = ones * ops.sum(sums, axis=0, keepdims=True)
    if not include_background:
        inter, sums = inter[:, 1:], sums[:, 1:]
    return inter, sums


@keras.saving.register_keras_serializable(package="segcore")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss ``1 - mean_c (2 I_c + s) / (|P_c| + |G_c| + s)`` per image.

    Parameters
    ----------
    smooth : float
        Added to numerator and denominator; an empty class predicted empty scores 1.
    include_background : bool
        Whether class 0 takes part in the mean.
    batch : bool
        Pool intersections and sums over the whole batch ("batch Dice"); every
        image then carries the same value.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = True, batch: bool = False,
                 name: str = "dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0. Got {smooth}.")
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.batch = bool(batch)

    def call(self, y_true, y_pred):
        inter, sums = _soft_overlap(y_true, y_pred, self.include_background, self.batch)
        dice = (2.0 * inter + self.smooth) / (sums + self.smooth + _EPS)
        return 1.0 - ops.mean(dice, axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "include_background": self.include_background,
                "batch": self.batch}


@keras.saving.register_keras_serializable(package="segcore")
class JaccardLoss(DiceLoss):
    """Soft Jaccard/IoU loss ``1 - mean_c (I_c + s) / (|P_c| + |G_c| - I_c + s)``."""

    def __init__(self, smooth: float = 1.0, include_background: bool = True, batch: bool = False,
                 name: str = "jaccard_loss", **kwargs):
        super().__init__(smooth=smooth, include_background=include_background, batch=batch, name=name, **kwargs)

    def call(self, y_true, y_pred):
        inter, sums = _soft_overlap(y_true, y_pred, self.include_background, self.batch)
        iou = (inter + self.smooth) / (sums - inter + self.smooth + _EPS)
        return 1.0 - ops.mean(iou, axis=-1)


@keras.saving.register_keras_serializable(package="segcore")
class CombinedLoss(keras.losses.Loss):
    """Static weighted sum of losses, e.g. ``CE + Dice``."""

    def __init__(self, losses: Sequence, weights: Sequence[float] | None = None, name: str = "combined_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.losses = [keras.losses.deserialize(x) if isinstance(x, dict) else x for x in losses]
        if not self.losses:
            raise ValueError("CombinedLoss needs at least one loss.")
        self.weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.losses):
            raise ValueError(f"Got {len(self.losses)} losses but {len(self.weights)} weights.")

    def call(self, y_true, y_pred):
        total = 0.0
        for w, loss in zip(self.weights, self.losses):
            total = total + w * loss.call(y_true, y_pred)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "losses": [keras.losses.serialize(x) for x in self.losses],
            "weights": self.weights,
        }


@keras.saving.register_keras_serializable(package="segcore")
class UncertaintyWeightedLoss(CombinedLoss):
    """Losses weighted by learned homoscedastic uncertainty (Kendall et al. 2018).

    ``L = sum_i exp(-s_i) L_i + 0.5 s_i`` with trainable ``s_i = log sigma_i^2``.
    The ``s_i`` live in :attr:`trainable_variables`; :func:`segcore.train.train`
    trains them with the model (it switches to its custom loop for this loss).
    """

    def __init__(self, losses: Sequence, initial_log_vars: Sequence[float] | None = None,
                 name: str = "uncertainty_weighted_loss", **kwargs):
        kwargs.pop("weights", None)
        super().__init__(losses, None, name=name, **kwargs)
        init = [0.0] * len(self.losses) if initial_log_vars is None else [float(v) for v in initial_log_vars]
        self.log_vars = keras.Variable(np.asarray(init, np.float32), trainable=True, name="loss_log_vars")

    @property
    def trainable_variables(self):
        return [self.log_vars]

    def call(self, y_true, y_pred):
        total = 0.0
        for i, loss in enumerate(self.losses):
            s = self.log_vars[i]
            total = total + ops.exp(-s) * loss.call(y_true, y_pred) + 0.5 * s
        return total

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("weights", None)
        cfg["initial_log_vars"] = [float(v) for v in np.asarray(self.log_vars.numpy())]
        return cfg


def get_loss(name: str, *, class_weights: Sequence[float] | None = None) -> keras.losses.Loss:
    """Loss by name: "ce", "weighted_ce", "dice", "jaccard", "ce_dice", "wce_batch_dice", "learned_ce_dice"."""
    names = ("ce", "weighted_ce", "dice", "jaccard", "ce_dice", "wce_batch_dice", "learned_ce_dice")
    if name == "wce_batch_dice":
        if class_weights is None:
            raise ValueError("wce_batch_dice needs class_weights (see class_weights_from_masks).")
        return CombinedLoss([WeightedCrossEntropy(class_weights), DiceLoss(include_background=False, batch=True)])
    if name == "ce":
        return CrossEntropy()
    if name == "weighted_ce":
        if class_weights is None:
            raise ValueError("weighted_ce needs class_weights (see class_weights_from_masks).")
        return WeightedCrossEntropy(class_weights)
    if name == "dice":
        return DiceLoss()
    if name == "jaccard":
        return JaccardLoss()
    if name == "ce_dice":
        return CombinedLoss([CrossEntropy(), DiceLoss()], [1.0, 1.0])
    if name == "learned_ce_dice":
        return UncertaintyWeightedLoss([CrossEntropy(), DiceLoss()])
    raise ValueError(f"Unknown loss '{name}'. Valid names: {list(names)}.")
