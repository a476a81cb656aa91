"""Preprocessing and prediction shared by training, the CLI and the app."""

from __future__ import annotations

import cv2
import keras
import numpy as np

from .models import ModelConfig

__all__ = ["normalise", "preprocess", "predict_proba", "predict_batch", "entropy", "mc_dropout", "mc_dropout_map"]


def normalise(pixels: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Map raw pixel values to the model's input range [0, 1] (float32).

    ``percentile`` normalisation uses the image's own percentiles and is thus
    invariant to offsets and scales (HU, HU+1024 PNGs, MR units);
    ``relative_window`` is a fixed-width window centred on a percentile of the
    image (offset invariant: HU and HU+1024 PNGs give the same input);
    ``window`` is a fixed window in the image's units.
    """
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x.mean(axis=-1)
    if x.ndim != 2:
        raise ValueError(f"normalise takes a 2-D image (H,W) or (H,W,3). Got shape {np.shape(pixels)}.")
    norm = config.normalisation or {"type": "percentile"}
    kind = norm.get("type", "percentile")
    if kind == "percentile":
        lo, hi = np.percentile(x, [norm.get("low", 0.5), norm.get("high", 99.5)])
    elif kind == "relative_window":
        # a window of fixed width centred on a percentile of the image: for CT the
        # 75th percentile falls in soft tissue, so HU and HU+1024 PNGs match
        c = float(np.percentile(x, norm.get("percentile", 75.0))) + norm.get("offset", 0.0)
        lo, hi = c - norm["width"] / 2, c + norm["width"] / 2
    elif kind == "window":
        lo = norm["center"] - norm["width"] / 2
        hi = norm["center"] + norm["width"] / 2
    else:
        raise ValueError(f"Unknown normalisation type '{kind}'. Expected 'percentile', 'relative_window' or 'window'.")
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess(pixels: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Normalise and resize one 2-D image to ``input_size``: returns ``H,W,1``."""
    x = normalise(pixels, config)
    h, w = config.input_size
    if x.shape != (h, w):
        interp = cv2.INTER_AREA if x.shape[0] > h else cv2.INTER_LINEAR
        x = cv2.resize(x, (w, h), interpolation=interp)
    return x[..., None]


def _resize_probs(p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if p.shape[:2] == tuple(shape):
        return p
    out = cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:
        out = out[..., None]
    out = np.clip(out, 0, None)
    return out / np.maximum(out.sum(-1, keepdims=True), 1e-8)


def predict_batch(model: keras.Model, images: list[np.ndarray], config: ModelConfig, batch_size: int = 8) -> list[np.ndarray]:
    """Softmax probabilities ``H,W,K`` for each 2-D image, at each image's own size."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.stack([preprocess(im, config) for im in chunk])
        probs = np.asarray(model(x, training=False))
        out.extend(_resize_probs(p, np.shape(im)[:2]) for p, im in zip(probs, chunk))
    return out


def predict_proba(model: keras.Model, image: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Softmax probabilities ``H,W,K`` for one 2-D image at its own size."""
    return predict_batch(model, [image], config)[0]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-pixel predictive entropy normalised to [0, 1] by ``log K``."""
    p = np.clip(probs, 1e-8, 1.0)
    return (-(p * np.log(p)).sum(-1) / np.log(p.shape[-1])).astype(np.float32)


def mc_dropout(model: keras.Model, image: np.ndarray, config: ModelConfig, samples: int = 8, seed: int = 0):
    """Monte-Carlo dropout: mean probabilities and per-pixel std of the argmax class.

    Works on a clone of ``model`` (the cached model is never touched) with
    batch norm kept in inference mode and dropout active.

    Raises
    ------
    ValueError
        The model has no Dropout layer.
    """
    if not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers):
        raise ValueError(f"Model '{model.name}' has no Dropout layer; MC-dropout needs one (build with dropout>0).")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # BN runs in inference mode even when training=True
    keras.utils.set_random_seed(seed)
    x = np.repeat(preprocess(image, config)[None], samples, axis=0)
    p = np.asarray(clone(x, training=True))
    mean = p.mean(0)
    std = p.std(0)
    cls = mean.argmax(-1)
    unc = np.take_along_axis(std, cls[..., None], -1)[..., 0]
    shape = np.shape(image)[:2]
    return _resize_probs(mean, shape), cv2.resize(unc, (shape[1], shape[0]))


def mc_dropout_map(model: keras.Model, image: np.ndarray, config: ModelConfig, samples: int = 8) -> np.ndarray:
    """MC-dropout spread of the winning class (see :func:`mc_dropout`) scaled to [0, 1] by its maximum."""
    unc = mc_dropout(model, image, config, samples=samples)[1]
    return (unc / max(float(unc.max()), 1e-6)).astype(np.float32)
