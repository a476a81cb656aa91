"""``tf.data`` pipelines from image/mask files, with paired augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import tensorflow as tf

from .io import load_scan
from .labels import list_pairs, load_mask
from .infer import preprocess
from .models import ModelConfig

__all__ = ["list_pairs", "load_mask", "load_pair", "load_split", "make_dataset", "augment"]


def load_pair(image_path, mask_path, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed image ``H,W,1`` float32 and mask ``H,W`` uint8 at the model size."""
    scan = load_scan(image_path)
    img = preprocess(scan.slice(), config)
    mask = load_mask(mask_path, config.num_classes)
    h, w = config.input_size
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, mask


def load_split(folder, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of a split as arrays ``N,H,W,1`` and ``N,H,W``."""
    imgs, masks = list_pairs(folder)
    pairs = [load_pair(a, b, config) for a, b in zip(imgs, masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _affine_matrix(angle, scale, tx, ty, h, w):
    # inverse map output->input about the centre, as ImageProjectiveTransformV3 wants
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    c, s = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = c, -s
    b0, b1 = s, c
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None]


def augment(image: tf.Tensor, mask: tf.Tensor, *, affine: bool = True, elastic: bool = False,
            photometric: bool = True, seed: int | None = None):
    """Paired augmentation: geometry on both, photometry on the image only.

    ``image`` is ``H,W,1`` float32 in [0, 1]; ``mask`` is ``H,W`` uint8.
    """
    img = tf.convert_to_tensor(image)
    m = tf.cast(tf.convert_to_tensor(mask)[..., None], tf.float32)
    both = tf.concat([img, m], -1)
    both = tf.cond(tf.random.uniform(()) < 0.5, lambda: tf.image.flip_left_right(both), lambda: both)
    both = tf.cond(tf.random.uniform(()) < 0.5, lambda: tf.image.flip_up_down(both), lambda: both)
    both = tf.image.rot90(both, tf.random.uniform((), 0, 4, dtype=tf.int32))
    h, w = tf.shape(both)[0], tf.shape(both)[1]
    img, m = both[..., :1], both[..., 1:]
    if affine:
        angle = tf.random.uniform((), -0.26, 0.26)
        scale = tf.random.uniform((), 0.9, 1.1)
        tx = tf.random.uniform((), -0.05, 0.05) * tf.cast(w, tf.float32)
        ty = tf.random.uniform((), -0.05, 0.05) * tf.cast(h, tf.float32)
        t = _affine_matrix(angle, scale, tx, ty, tf.cast(h, tf.float32), tf.cast(w, tf.float32))
        size = tf.stack([h, w])
        img = tf.raw_ops.ImageProjectiveTransformV3(images=img[None], transforms=t, output_shape=size,
                                                    interpolation="BILINEAR", fill_mode="REFLECT",
                                                    fill_value=0.0)[0]
        m = tf.raw_ops.ImageProjectiveTransformV3(images=m[None], transforms=t, output_shape=size,
                                                  interpolation="NEAREST", fill_mode="REFLECT", fill_value=0.0)[0]
    if elastic:
        # smooth random displacement field, applied with nearest for the mask
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        coarse = tf.random.normal((1, 5, 5, 2), stddev=3.0)
        disp = tf.image.resize(coarse, (h, w), method="bicubic")[0]
        yy, xx = tf.meshgrid(tf.range(hf), tf.range(wf), indexing="ij")
        sy = tf.clip_by_value(yy + disp[..., 0], 0, hf - 1)
        sx = tf.clip_by_value(xx + disp[..., 1], 0, wf - 1)
        idx = tf.cast(tf.stack([tf.round(sy), tf.round(sx)], -1), tf.int32)
        img = tf.gather_nd(img, idx)
        m = tf.gather_nd(m, idx)
    if photometric:
        img = img * tf.random.uniform((), 0.85, 1.15) + tf.random.uniform((), -0.08, 0.08)
        gamma = tf.random.uniform((), 0.8, 1.25)
        img = tf.clip_by_value(img, 0.0, 1.0) ** gamma
        img = img + tf.random.normal(tf.shape(img), stddev=tf.random.uniform((), 0.0, 0.03))
        img = tf.clip_by_value(img, 0.0, 1.0)
    return img, tf.cast(tf.round(m[..., 0]), tf.uint8)


def make_dataset(
    images: np.ndarray | Sequence[str | Path],
    masks: np.ndarray | Sequence[str | Path],
    config: ModelConfig,
    *,
    batch_size: int = 8,
    shuffle: bool = False,
    augment_data: bool = False,
    elastic: bool = False,
    cache: bool = True,
    repeat: bool = False,
    crop: int | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(B,H,W,1) float32, (B,H,W) uint8``.

    ``images``/``masks`` are arrays already preprocessed (``N,H,W,1``/``N,H,W``)
    or file paths, which are decoded with :func:`segcore.io.load_scan` and
    preprocessed exactly as at inference; the decoded result is cached.
    ``crop`` takes one random ``crop x crop`` patch per image (same place in
    image and mask) for cheaper training steps of the fully convolutional model.
    """
    h, w = config.input_size
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[1:3] != (h, w):
            raise ValueError(f"images must be N,{h},{w},1 arrays. Got {images.shape}.")
        ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), np.asarray(masks, np.uint8)))
    else:
        paths = [str(p) for p in images]
        mpaths = [str(p) for p in masks]
        if len(paths) != len(mpaths):
            raise ValueError(f"Got {len(paths)} images but {len(mpaths)} masks.")

        def _load(a, b):
            img, m = load_pair(a.decode(), b.decode(), config)
            return img.astype(np.float32), m

        ds = tf.data.Dataset.from_tensor_slices((paths, mpaths)).map(
            lambda a, b: tf.numpy_function(_load, [a, b], [tf.float32, tf.uint8]),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).map(lambda a, b: (tf.ensure_shape(a, (h, w, 1)), tf.ensure_shape(b, (h, w))))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment_data:
        ds = ds.map(lambda a, b: augment(a, b, elastic=elastic), num_parallel_calls=tf.data.AUTOTUNE)
    if crop is not None:
        if not 0 < crop <= min(h, w):
            raise ValueError(f"crop must be in (0, {min(h, w)}]. Got {crop}.")

        def _crop(a, b):
            both = tf.concat([a, tf.cast(b[..., None], tf.float32)], -1)
            both = tf.image.random_crop(both, (crop, crop, 2))
            return both[..., :1], tf.cast(both[..., 1], tf.uint8)

        ds = ds.map(_crop, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
