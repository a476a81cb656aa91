"""Training (``model.fit`` or a custom ``GradientTape`` loop) and fine-tuning."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from . import metrics as seg_metrics
from .losses import CombinedLoss, CrossEntropy, DiceLoss, UncertaintyWeightedLoss
from .models import ModelConfig

__all__ = ["DiceMetric", "train", "evaluate_model", "fine_tune", "make_strategy", "FineTuneCancelled"]


@keras.saving.register_keras_serializable(package="segcore")
class DiceMetric(keras.metrics.Metric):
    """Mean foreground Dice over a dataset from accumulated confusion counts."""

    def __init__(self, num_classes: int, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.cm = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros", name="cm")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        p = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
        cm = tf.math.confusion_matrix(y, p, num_classes=self.num_classes, dtype=tf.float32)
        self.cm.assign_add(cm)

    def result(self):
        tp = tf.linalg.diag_part(self.cm)
        denom = tf.reduce_sum(self.cm, 0) + tf.reduce_sum(self.cm, 1)
        d = tf.where(denom > 0, 2 * tp / tf.maximum(denom, 1e-8), tf.ones_like(tp))
        return tf.reduce_mean(d[1:])

    def reset_state(self):
        self.cm.assign(tf.zeros_like(self.cm))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def make_strategy(devices: int | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs, or over ``devices`` logical CPUs/GPUs; default strategy for one."""
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    pool = gpus if gpus else cpus
    if devices is None:
        devices = len(pool)
    if devices <= 1:
        return tf.distribute.get_strategy()
    if len(pool) < devices:
        raise ValueError(f"Asked for {devices} devices but only {len(pool)} are visible: {[d.name for d in pool]}.")
    return tf.distribute.MirroredStrategy([d.name for d in pool[:devices]])


class _JsonLog(keras.callbacks.Callback):
    def __init__(self, path: Path, progress: Callable[[dict], Any] | None = None, total_epochs: int = 0):
        super().__init__()
        self.path, self.progress, self.total = path, progress, total_epochs
        self.history: list[dict] = []
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        rec = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._t0, 3)}
        rec.update({k: float(v) for k, v in (logs or {}).items()})
        self.history.append(rec)
        if self.path is not None:
            self.path.write_text(json.dumps(self.history, indent=1))
        if self.progress is not None and self.progress({**rec, "total_epochs": self.total}) is False:
            self.model.stop_training = True
            self.cancelled = True


class FineTuneCancelled(RuntimeError):
    """Raised when the progress callback asks to stop; no model is returned."""


def train(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    *,
    num_classes: int,
    epochs: int = 50,
    steps_per_epoch: int | None = None,
    loss: keras.losses.Loss | None = None,
    learning_rate: float = 1e-3,
    out_dir: str | Path | None = None,
    custom_loop: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    patience: int = 12,
    progress: Callable[[dict], Any] | None = None,
) -> list[dict]:
    """Train ``model`` in place and return the per-epoch log.

    With ``model.fit`` (default): EarlyStopping on ``val_dice``, a cosine
    learning-rate schedule, ModelCheckpoint of the best ``val_dice`` (in
    ``out_dir/best.keras``), a CSV log and a JSON log. ``custom_loop=True`` runs
    the equivalent ``tf.GradientTape`` loop (also chosen for a loss with
    trainable weights such as :class:`UncertaintyWeightedLoss`). Both run under
    ``strategy`` (build the model inside ``strategy.scope()``).

    ``progress(record)`` is called after each epoch; returning False stops.
    """
    strategy = strategy or tf.distribute.get_strategy()
    loss = loss or CombinedLoss([CrossEntropy(), DiceLoss()])
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1. Got {epochs}.")
    if steps_per_epoch is None:
        card = int(train_ds.cardinality())
        steps_per_epoch = card if card > 0 else None
    decay_steps = max(1, epochs * (steps_per_epoch or 1))
    if isinstance(loss, UncertaintyWeightedLoss):
        custom_loop = True
    if custom_loop:
        return _custom_loop(model, train_ds, val_ds, num_classes=num_classes, epochs=epochs,
                            steps_per_epoch=steps_per_epoch, loss=loss, learning_rate=learning_rate,
                            decay_steps=decay_steps, out=out, strategy=strategy, patience=patience,
                            progress=progress)
    with strategy.scope():
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[DiceMetric(num_classes)])
    log = _JsonLog(out / "log.json" if out else None, progress, epochs)
    cbs: list[keras.callbacks.Callback] = [log]
    if val_ds is not None:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_dice", mode="max", patience=patience,
                                                 restore_best_weights=True))
        if out:
            cbs.append(keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_dice", mode="max",
                                                       save_best_only=True))
    if out:
        cbs.append(keras.callbacks.CSVLogger(str(out / "log.csv")))
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
              callbacks=cbs, verbose=0)
    if getattr(log, "cancelled", False):
        raise FineTuneCancelled("Training was cancelled.")
    return log.history


def _custom_loop(model, train_ds, val_ds, *, num_classes, epochs, steps_per_epoch, loss, learning_rate,
                 decay_steps, out, strategy, patience, progress):
    extra_vars = list(getattr(loss, "trainable_variables", []) or [])
    with strategy.scope():
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.05)
        optimizer = keras.optimizers.Adam(schedule)
        train_dice = DiceMetric(num_classes)
        val_dice = DiceMetric(num_classes)
        train_vars = model.trainable_variables + extra_vars
        optimizer.build(train_vars)
    dist_train = strategy.experimental_distribute_dataset(train_ds)

    def step(x, y):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = loss.call(y, p)
            batch = tf.shape(per_example)[0] * strategy.num_replicas_in_sync
            value = tf.reduce_sum(per_example) / tf.cast(batch, tf.float32)
            if model.losses:
                value += tf.add_n(model.losses) / strategy.num_replicas_in_sync
        grads = tape.gradient(value, train_vars)
        optimizer.apply_gradients(zip(grads, train_vars))
        train_dice.update_state(y, p)
        return value

    @tf.function
    def dist_step(x, y):
        per_replica = strategy.run(step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def val_step(x, y):
        def _v(x, y):
            val_dice.update_state(y, model(x, training=False))
        strategy.run(_v, args=(x, y))

    history, best, best_weights, waited = [], -1.0, None, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        train_dice.reset_state()
        losses, it = [], iter(dist_train)
        n = 0
        while steps_per_epoch is None or n < steps_per_epoch:
            try:
                x, y = next(it)
            except StopIteration:
                if steps_per_epoch is None:
                    break
                it = iter(dist_train)
                x, y = next(it)
            losses.append(float(dist_step(x, y)))
            n += 1
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "dice": float(train_dice.result())}
        if val_ds is not None:
            val_dice.reset_state()
            for x, y in strategy.experimental_distribute_dataset(val_ds):
                val_step(x, y)
            rec["val_dice"] = float(val_dice.result())
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(rec)
        if out:
            (out / "log.json").write_text(json.dumps(history, indent=1))
        if progress is not None and progress({**rec, "total_epochs": epochs}) is False:
            raise FineTuneCancelled("Training was cancelled.")
        score = rec.get("val_dice", rec["dice"])
        if score > best:
            best, best_weights, waited = score, model.get_weights(), 0
            if out:
                model.save(out / "best.keras")
        else:
            waited += 1
            if val_ds is not None and waited >= patience:
                break
    if best_weights is not None and val_ds is not None:
        model.set_weights(best_weights)
    return history


def evaluate_model(model: keras.Model, config: ModelConfig, images: list[np.ndarray], masks: list[np.ndarray],
                   spacing=None) -> dict:
    """Per-class Dice, IoU, HD95 (mm with spacing) on raw 2-D images at their own size."""
    from .infer import predict_batch

    probs = predict_batch(model, images, config)
    k = config.num_classes
    rows = []
    for p, m in zip(probs, masks):
        pred = p.argmax(-1)
        rows.append(seg_metrics.evaluate_pair(pred, np.asarray(m), k, spacing))
    return summarise(rows, config.class_names)


def summarise(rows: list[dict], class_names) -> dict:
    k = len(class_names)
    dice = np.array([r["dice"] for r in rows])
    iou = np.array([r["iou"] for r in rows])
    hd = np.array([r["hd95"] for r in rows])
    per_class = {}
    for c in range(k):
        finite = hd[:, c][np.isfinite(hd[:, c])]
        per_class[class_names[c]] = {
            "dice": float(dice[:, c].mean()),
            "iou": float(iou[:, c].mean()),
            "hd95": float(np.median(finite)) if finite.size else float("inf"),
            "hd95_infinite_cases": int((~np.isfinite(hd[:, c])).sum()),
        }
    return {
        "n_images": len(rows),
        "mean_foreground_dice": float(dice[:, 1:].mean()),
        "mean_foreground_iou": float(iou[:, 1:].mean()),
        "per_class": per_class,
    }


def clone_model(model: keras.Model) -> keras.Model:
    """A trainable copy with the same weights; the original is never touched."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fine_tune(
    model: keras.Model,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    *,
    config: ModelConfig,
    epochs: int = 5,
    replay_images: np.ndarray | None = None,
    replay_masks: np.ndarray | None = None,
    replay_ratio: float = 1.0,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    progress: Callable[[dict], Any] | None = None,
    eval_images: list[np.ndarray] | None = None,
    eval_masks: list[np.ndarray] | None = None,
    loss: keras.losses.Loss | None = None,
    seed: int = 0,
) -> tuple[keras.Model, dict]:
    """Fine-tune a copy of ``model`` on corrected pairs plus a replay sample.

    Parameters
    ----------
    images, masks : list of arrays
        Raw 2-D images (any size, raw pixel values) and their corrected label maps.
    replay_images, replay_masks : arrays, optional
        Preprocessed original training data (``N,H,W,1``/``N,H,W``); a random
        sample of ``replay_ratio * len(images)`` (at least one batch) is mixed
        in so the model does not forget.
    progress : callable, optional
        Called with each epoch's record; return False to cancel
        (:class:`FineTuneCancelled` is raised and the copy is discarded).

    Returns
    -------
    (keras.Model, dict)
        The new model and ``{"history": [...], "eval": {...}}``.
    """
    import cv2

    from .infer import preprocess

    if len(images) == 0 or len(images) != len(masks):
        raise ValueError(f"fine_tune needs pairs of images and masks. Got {len(images)} images and {len(masks)} masks.")
    h, w = config.input_size
    x_new, y_new = [], []
    for im, m in zip(images, masks):
        m = np.asarray(m)
        if m.shape != np.shape(im)[:2]:
            raise ValueError(f"Mask shape {m.shape} does not match image shape {np.shape(im)[:2]}.")
        if m.max(initial=0) >= config.num_classes:
            raise ValueError(f"Mask has label {m.max()} but the model has {config.num_classes} classes.")
        x_new.append(preprocess(im, config))
        y_new.append(cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST))
    x, y = np.stack(x_new), np.stack(y_new)
    rng = np.random.default_rng(seed)
    if replay_images is not None and len(replay_images):
        n = min(len(replay_images), max(batch_size, int(round(replay_ratio * len(x)))))
        idx = rng.choice(len(replay_images), n, replace=False)
        x = np.concatenate([x, replay_images[idx]])
        y = np.concatenate([y, np.asarray(replay_masks)[idx]])
    from .data import make_dataset

    ds = make_dataset(x, y, config, batch_size=batch_size, shuffle=True, augment_data=True, seed=seed)
    new = clone_model(model)
    if loss is None:
        # the loss the default model was trained with: sqrt-inverse-frequency weighted CE + batch Dice
        from .losses import class_weights_from_masks, get_loss

        loss = get_loss("wce_batch_dice", class_weights=class_weights_from_masks(y, config.num_classes, power=0.5))
    history = train(new, ds, None, num_classes=config.num_classes, epochs=epochs, learning_rate=learning_rate,
                    progress=progress, loss=loss)
    result: dict = {"history": history}
    if eval_images is not None and eval_masks is not None and len(eval_images):
        result["eval"] = evaluate_model(new, config, list(eval_images), list(eval_masks))
    return new, result
