"""A compact Mask R-CNN (He et al. 2017) in Keras 3 / TensorFlow 2.

Small residual backbone with an FPN (P2-P4), anchors at three scales and three
ratios, an RPN with objectness and box regression, proposal NMS, RoIAlign on
``tf.image.crop_and_resize``, a box head (class + box refinement) and a small
FCN mask head predicting 28x28 masks per class, trained with the paper's
multi-task loss (RPN cls + RPN box + cls + box + mask).

Boxes are ``(y1, x1, y2, x2)`` in image pixels (edges at integer coordinates).
Training batches are ``B,S,S,1`` float32, already normalised
(:func:`~segcore.instances.preprocess.normalise_intensity`), with
``S = config.image_size``. :meth:`MaskRCNN.detect` takes one raw 2-D image of
any size and dtype: it normalises the whole image, optionally rescales it by
``pixel_scale`` so that objects fall in the model's size range
(``config.object_diameter_range``), runs the fully convolutional network on
overlapping windows of ``config.tile_size`` pixels and merges the windows'
detections (see :mod:`segcore.instances.tiling`). An image with no objects
gives empty arrays.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from .preprocess import NORMALISATIONS, normalise_intensity, rescale
from .tiling import crops_to_dense, paste_mask, suppress_duplicates, tile_grid

__all__ = [
    "MaskRCNN",
    "MaskRCNNConfig",
    "build_maskrcnn",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "iou_matrix",
    "roi_align",
    "rpn_targets",
    "smooth_l1",
]

BOX_STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


@dataclasses.dataclass
class MaskRCNNConfig:
    """Architecture, training and detection settings; saved as ``config.json`` beside the weights.

    ``anchor_sizes`` (pixels, at the model's scale, one per FPN level) with
    ``anchor_ratios`` bound the object sizes the model can propose:
    :attr:`anchor_object_range`. ``object_diameter_range`` is the range of
    equivalent diameters (model pixels) of the objects it was trained on;
    :meth:`MaskRCNN.detect` rescales images by ``pixel_scale`` so that objects
    land in it. ``normalisation`` is ``"percentile"`` (raw values mapped with
    the image's ``percentiles``) or ``"none"`` (inputs already in [0, 1]).
    """

    image_size: int = 128
    num_classes: int = 2  # background included
    class_names: tuple = ("background", "object")
    strides: tuple = (4, 8, 16)
    anchor_sizes: tuple = (12, 24, 48)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    fpn_channels: int = 64
    rpn_batch: int = 128
    rpn_pos_fraction: float = 0.5
    pre_nms: int = 600  # proposals per image_size**2 pixels (scaled with the window's area at detection)
    post_nms: int = 100
    roi_batch: int = 64
    roi_pos_fraction: float = 0.25
    max_instances: int = 64
    detection_score: float = 0.5
    detection_nms: float = 0.4
    max_detections: int = 1000
    tile_size: int = 512
    tile_overlap: int = 96
    normalisation: str = "percentile"
    percentiles: tuple = (1.0, 99.8)
    pixel_scale: float = 1.0  # default scale for detect() (the scale the model's own data was trained at)
    object_diameter_range: tuple = (10.0, 60.0)

    def __post_init__(self):
        if self.num_classes != len(self.class_names):
            raise ValueError(f"num_classes ({self.num_classes}) must equal len(class_names) "
                             f"({len(self.class_names)}: {tuple(self.class_names)}).")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"Unknown normalisation '{self.normalisation}': expected one of {NORMALISATIONS}.")
        if self.tile_size % 16 or self.tile_size < self.image_size or not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"tile_size must be a multiple of 16 and >= image_size ({self.image_size}), and "
                             f"0 <= tile_overlap < tile_size. Got tile_size={self.tile_size}, "
                             f"tile_overlap={self.tile_overlap}.")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1. Got {self.max_detections}.")

    @property
    def anchor_object_range(self) -> tuple[float, float]:
        """Smallest and largest anchor side (model pixels): objects far outside cannot be proposed well."""
        r = np.asarray(self.anchor_ratios, np.float64)
        sides = np.concatenate([np.asarray(self.anchor_sizes, np.float64)[:, None] * np.sqrt(r)[None],
                                np.asarray(self.anchor_sizes, np.float64)[:, None] / np.sqrt(r)[None]])
        return float(sides.min()), float(sides.max())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, raw: dict) -> MaskRCNNConfig:
        raw = dict(raw)
        raw.setdefault("normalisation", "none")  # models saved before normalisation existed took [0, 1] input
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"Unknown Mask R-CNN config keys {unknown}: expected a subset of {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


# ---------------------------------------------------------------- boxes and anchors

def generate_anchors(image_size, strides, sizes, ratios) -> np.ndarray:
    """``(N, 4)`` anchors, level by level, row-major over positions, ratios fastest.

    ``image_size`` is an int (square) or ``(H, W)``. At each position of a
    level with stride ``s`` the anchors are centred on
    ``((i + 0.5) s, (j + 0.5) s)`` with area ``size**2`` and ``h / w = ratio``.
    """
    hh, ww = (image_size, image_size) if np.isscalar(image_size) else image_size
    out = []
    for s, size in zip(strides, sizes):
        cy, cx = np.meshgrid((np.arange(hh // s) + 0.5) * s, (np.arange(ww // s) + 0.5) * s, indexing="ij")
        per = []
        for r in ratios:
            h, w = size * np.sqrt(r), size / np.sqrt(r)
            per.append(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1))
        out.append(np.stack(per, 2).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def encode_boxes(anchors, boxes):
    """Deltas ``(dy, dx, dh, dw) / BOX_STD`` that take ``anchors`` to ``boxes`` (NumPy or TF)."""
    lib = tf if isinstance(anchors, tf.Tensor) or isinstance(boxes, tf.Tensor) else np
    ah, aw = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ay, ax = anchors[..., 0] + 0.5 * ah, anchors[..., 1] + 0.5 * aw
    bh, bw = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    by, bx = boxes[..., 0] + 0.5 * bh, boxes[..., 1] + 0.5 * bw
    d = lib.stack([(by - ay) / ah, (bx - ax) / aw, lib.math.log(bh / ah) if lib is tf else np.log(bh / ah),
                   lib.math.log(bw / aw) if lib is tf else np.log(bw / aw)], -1)
    return d / BOX_STD


def decode_boxes(anchors, deltas):
    """Inverse of :func:`encode_boxes`."""
    lib = tf if isinstance(anchors, tf.Tensor) or isinstance(deltas, tf.Tensor) else np
    d = deltas * BOX_STD
    ah, aw = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ay, ax = anchors[..., 0] + 0.5 * ah, anchors[..., 1] + 0.5 * aw
    cy, cx = ay + d[..., 0] * ah, ax + d[..., 1] * aw
    clip = np.log(1000.0 / 16)
    h = ah * lib.exp(lib.minimum(d[..., 2], clip))
    w = aw * lib.exp(lib.minimum(d[..., 3], clip))
    return lib.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], -1)


def iou_matrix(a, b):
    """Pairwise IoU ``(len(a), len(b))`` of ``y1x1y2x2`` boxes (NumPy or TF)."""
    lib = tf if isinstance(a, tf.Tensor) or isinstance(b, tf.Tensor) else np
    y1 = lib.maximum(a[:, None, 0], b[None, :, 0])
    x1 = lib.maximum(a[:, None, 1], b[None, :, 1])
    y2 = lib.minimum(a[:, None, 2], b[None, :, 2])
    x2 = lib.minimum(a[:, None, 3], b[None, :, 3])
    inter = lib.maximum(y2 - y1, 0.0) * lib.maximum(x2 - x1, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def smooth_l1(x, beta: float = 1.0 / 9):
    ax = tf.abs(x)
    return tf.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def roi_align(features, boxes, box_indices, crop_size: int, stride: float):
    """RoIAlign via ``tf.image.crop_and_resize``.

    ``boxes`` are image-pixel ``y1x1y2x2``; a feature cell ``i`` has its centre at
    image coordinate ``(i + 0.5) * stride``. Samples a ``crop_size`` grid from
    box edge to box edge (crop_and_resize's corner-aligned convention),
    bilinearly.
    """
    fh = tf.cast(tf.shape(features)[1], tf.float32)
    fw = tf.cast(tf.shape(features)[2], tf.float32)
    scale = tf.stack([fh - 1.0, fw - 1.0, fh - 1.0, fw - 1.0])
    norm = (tf.cast(boxes, tf.float32) / stride - 0.5) / scale
    return tf.image.crop_and_resize(features, norm, tf.cast(box_indices, tf.int32), (crop_size, crop_size))


def rpn_targets(anchors: np.ndarray, gt_boxes: np.ndarray, config: MaskRCNNConfig, rng: np.random.Generator):
    """Per-anchor labels (1 object, 0 background, -1 ignored) and regression targets for one image."""
    n = len(anchors)
    labels = np.full(n, -1, np.float32)
    deltas = np.zeros((n, 4), np.float32)
    if len(gt_boxes) == 0:
        neg = rng.choice(n, config.rpn_batch, replace=False)
        labels[neg] = 0
        return labels, deltas
    iou = iou_matrix(anchors, gt_boxes)
    best = iou.max(1)
    arg = iou.argmax(1)
    labels[best < 0.3] = 0
    labels[best >= 0.6] = 1
    gt_best = iou.argmax(0)  # every object gets its best anchor
    labels[gt_best[iou[gt_best, np.arange(len(gt_boxes))] > 0.1]] = 1
    pos = np.flatnonzero(labels == 1)
    max_pos = int(config.rpn_batch * config.rpn_pos_fraction)
    if len(pos) > max_pos:
        labels[rng.choice(pos, len(pos) - max_pos, replace=False)] = -1
        pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    n_neg = config.rpn_batch - len(pos)
    if len(neg) > n_neg:
        labels[rng.choice(neg, len(neg) - n_neg, replace=False)] = -1
    deltas[pos] = encode_boxes(anchors[pos], gt_boxes[arg[pos]])
    return labels, deltas


# ---------------------------------------------------------------- networks

def _res_block(x, filters, stride, name):
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu", kernel_initializer="he_normal",
                      name=f"{name}_c1")(x)
    y = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_c2")(y)
    s = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_skip")(x)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, s]))


def _backbone_fpn(config: MaskRCNNConfig) -> keras.Model:
    inp = keras.Input((None, None, 1), name="image")  # fully convolutional: sides must be multiples of 16
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_initializer="he_normal",
                      name="stem")(inp)
    c2 = _res_block(_res_block(x, 48, 2, "c2a"), 48, 1, "c2b")
    c3 = _res_block(_res_block(c2, 64, 2, "c3a"), 64, 1, "c3b")
    c4 = _res_block(_res_block(c3, 96, 2, "c4a"), 96, 1, "c4b")
    ch = config.fpn_channels
    p4 = layers.Conv2D(ch, 1, name="lat4")(c4)
    p3 = layers.Add(name="td3")([layers.Conv2D(ch, 1, name="lat3")(c3), layers.UpSampling2D(2, name="up4")(p4)])
    p2 = layers.Add(name="td2")([layers.Conv2D(ch, 1, name="lat2")(c2), layers.UpSampling2D(2, name="up3")(p3)])
    outs = [layers.Conv2D(ch, 3, padding="same", name=f"p{i}")(p) for i, p in zip((2, 3, 4), (p2, p3, p4))]
    return keras.Model(inp, outs, name="backbone_fpn")


def _rpn_head(config: MaskRCNNConfig) -> keras.Model:
    a = len(config.anchor_ratios)
    inp = keras.Input((None, None, config.fpn_channels))
    x = layers.Conv2D(config.fpn_channels, 3, padding="same", activation="relu", name="rpn_conv")(inp)
    logits = layers.Conv2D(a, 1, name="rpn_logits")(x)
    deltas = layers.Conv2D(4 * a, 1, name="rpn_deltas", kernel_initializer=keras.initializers.RandomNormal(0, 0.01))(x)
    return keras.Model(inp, [logits, deltas], name="rpn_head")


def _box_head(config: MaskRCNNConfig) -> keras.Model:
    inp = keras.Input((7, 7, config.fpn_channels))
    x = layers.Flatten()(inp)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dense(256, activation="relu", name="fc2")(x)
    cls = layers.Dense(config.num_classes, name="cls_logits")(x)
    box = layers.Dense(4 * config.num_classes, name="box_deltas",
                       kernel_initializer=keras.initializers.RandomNormal(0, 0.001))(x)
    return keras.Model(inp, [cls, box], name="box_head")


def _mask_head(config: MaskRCNNConfig) -> keras.Model:
    inp = keras.Input((14, 14, config.fpn_channels))
    x = inp
    for i in range(4):
        x = layers.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                          name=f"mask_conv{i}")(x)
    x = layers.Conv2DTranspose(64, 2, strides=2, activation="relu", name="mask_up")(x)
    out = layers.Conv2D(config.num_classes, 1, name="mask_logits")(x)
    return keras.Model(inp, out, name="mask_head")


class MaskRCNN:
    """The four sub-networks plus training and inference around them.

    Weights are saved as one ``.weights.h5`` per sub-network with the config
    as JSON beside them (:meth:`save`, :meth:`load`).
    """

    def __init__(self, config: MaskRCNNConfig | None = None):
        self.config = config or MaskRCNNConfig()
        c = self.config
        self.backbone = _backbone_fpn(c)
        self.rpn = _rpn_head(c)
        self.box_head = _box_head(c)
        self.mask_head = _mask_head(c)
        self.anchors = generate_anchors(c.image_size, c.strides, c.anchor_sizes, c.anchor_ratios)
        self._anchors_tf = tf.constant(self.anchors)
        self._anchor_cache: dict = {}
        self.optimizer = None

    # -------------------------------------------------------- pieces
    @property
    def trainable_variables(self):
        return (self.backbone.trainable_variables + self.rpn.trainable_variables
                + self.box_head.trainable_variables + self.mask_head.trainable_variables)

    def _rpn_outputs(self, feats):
        logits, deltas = [], []
        for f in feats:
            lg, dl = self.rpn(f)
            b = tf.shape(lg)[0]
            logits.append(tf.reshape(lg, (b, -1)))
            deltas.append(tf.reshape(dl, (b, -1, 4)))
        return tf.concat(logits, 1), tf.concat(deltas, 1)

    def _level_crops(self, feats, boxes, box_idx, size):
        """RoIAlign from the FPN level matched to each box's size (P2 < anchor_sizes[1] <= P3 < anchor_sizes[2] <= P4)."""
        t1, t2 = (float(v) for v in self.config.anchor_sizes[1:3])
        side = tf.sqrt(tf.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6))
        level = tf.where(side < t1, 0, tf.where(side < t2, 1, 2))
        crops = [roi_align(f, boxes, box_idx, size, s) for f, s in zip(feats, self.config.strides)]
        out = crops[0]
        for i in (1, 2):
            out = tf.where(tf.equal(level, i)[:, None, None, None], crops[i], out)
        return out

    def anchors_for(self, shape: tuple[int, int]) -> tf.Tensor:
        """Anchors of a padded input of ``shape`` (cached per shape on this model)."""
        key = (int(shape[0]), int(shape[1]))
        if key not in self._anchor_cache:
            c = self.config
            self._anchor_cache[key] = tf.constant(generate_anchors(key, c.strides, c.anchor_sizes, c.anchor_ratios))
        return self._anchor_cache[key]

    def _proposals(self, logits, deltas, n_keep, anchors=None, clip_hw=None, pre_nms=None):
        """Per image: decode, clip, top-k, NMS -> ``(B, n_keep, 4)`` boxes and a validity mask."""
        c = self.config
        anchors = self._anchors_tf if anchors is None else anchors
        clip_hw = (c.image_size, c.image_size) if clip_hw is None else clip_hw
        hi = tf.constant([clip_hw[0], clip_hw[1], clip_hw[0], clip_hw[1]], tf.float32)
        boxes_all, valid_all = [], []
        for i in range(logits.shape[0]):
            scores = tf.sigmoid(logits[i])
            boxes = tf.minimum(tf.maximum(decode_boxes(anchors, deltas[i]), 0.0), hi)
            k = min(pre_nms or c.pre_nms, int(anchors.shape[0]))
            top = tf.math.top_k(scores, k).indices
            b, s = tf.gather(boxes, top), tf.gather(scores, top)
            keep = tf.image.non_max_suppression(b, s, n_keep, iou_threshold=0.7)
            kept = tf.gather(b, keep)
            n = tf.shape(kept)[0]
            boxes_all.append(tf.pad(kept, [[0, n_keep - n], [0, 0]]))
            valid_all.append(tf.pad(tf.ones((n,)), [[0, n_keep - n]]))
        return tf.stack(boxes_all), tf.stack(valid_all)

    # -------------------------------------------------------- training
    def _sample_rois(self, proposals, pvalid, gt_boxes, gt_classes, gt_valid, gt_masks):
        """Up to ``roi_batch`` RoIs (a quarter positive, IoU >= 0.5) with class, box and 28x28 mask targets."""
        c = self.config
        gv = gt_valid > 0
        g_boxes = tf.boolean_mask(gt_boxes, gv)
        g_cls = tf.boolean_mask(gt_classes, gv)
        g_masks = tf.boolean_mask(gt_masks, gv)
        rois = tf.concat([tf.boolean_mask(proposals, pvalid > 0), g_boxes], 0)
        rois = tf.boolean_mask(rois, (rois[:, 2] - rois[:, 0] > 1) & (rois[:, 3] - rois[:, 1] > 1))
        iou = iou_matrix(rois, g_boxes)
        has_gt = tf.shape(g_boxes)[0] > 0
        best = tf.cond(has_gt, lambda: tf.reduce_max(iou, 1), lambda: tf.zeros(tf.shape(rois)[:1]))
        arg = tf.cond(has_gt, lambda: tf.argmax(iou, 1, output_type=tf.int32),
                      lambda: tf.zeros(tf.shape(rois)[:1], tf.int32))
        pos = tf.random.shuffle(tf.where(best >= 0.5)[:, 0])[: int(c.roi_batch * c.roi_pos_fraction)]
        neg = tf.random.shuffle(tf.where(best < 0.5)[:, 0])[: c.roi_batch - tf.size(pos)]
        idx = tf.concat([pos, neg], 0)
        n, n_pos = tf.size(idx), tf.size(pos)
        sel = tf.gather(rois, idx)
        match = tf.gather(arg, idx)
        is_pos = tf.range(n) < n_pos
        matched_cls = tf.cond(has_gt, lambda: tf.gather(g_cls, match), lambda: tf.zeros_like(match))
        cls = tf.where(is_pos, matched_cls, tf.zeros_like(matched_cls))
        safe_gt = tf.cond(has_gt, lambda: tf.gather(g_boxes, match), lambda: sel)
        box_t = tf.where(is_pos[:, None], encode_boxes(sel, safe_gt), 0.0)
        pad = c.roi_batch - n
        sel = tf.pad(sel, [[0, pad], [0, 0]], constant_values=0.0)
        sel = tf.where(tf.range(c.roi_batch)[:, None] < n, sel, tf.constant([[0.0, 0.0, 8.0, 8.0]]))
        weight = tf.pad(tf.ones((n,)), [[0, pad]])
        cls = tf.pad(cls, [[0, pad]])
        box_t = tf.pad(box_t, [[0, pad], [0, 0]])
        is_pos = tf.pad(is_pos, [[0, pad]])
        match = tf.pad(match, [[0, pad]])
        # mask targets: the matched object's mask cropped to the RoI, 28x28
        h = float(c.image_size)
        norm = (sel - 0.5) / (h - 1.0)  # image coordinates -> crop_and_resize's pixel-centre convention
        mt = tf.cond(has_gt, lambda: tf.image.crop_and_resize(g_masks[..., None], norm, match, (28, 28))[..., 0],
                     lambda: tf.zeros((c.roi_batch, 28, 28)))
        return sel, weight, cls, box_t, tf.cast(is_pos, tf.float32), tf.cast(mt >= 0.5, tf.float32)

    def losses(self, images, rpn_labels, rpn_deltas_t, gt_boxes, gt_classes, gt_valid, gt_masks, training=True):
        c = self.config
        feats = self.backbone(images, training=training)
        logits, deltas = self._rpn_outputs(feats)
        sampled = tf.cast(rpn_labels >= 0, tf.float32)
        pos = tf.cast(rpn_labels > 0, tf.float32)
        n_s = tf.maximum(tf.reduce_sum(sampled), 1.0)
        rpn_cls = tf.reduce_sum(sampled * tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.maximum(rpn_labels, 0.0), logits=logits)) / n_s
        rpn_box = tf.reduce_sum(pos[..., None] * smooth_l1(deltas - rpn_deltas_t)) / n_s
        proposals, pvalid = self._proposals(tf.stop_gradient(logits), tf.stop_gradient(deltas), c.post_nms)
        sels, ws, clss, bts, poss, mts, bidx = [], [], [], [], [], [], []
        for i in range(images.shape[0]):
            s, w, cl, bt, p, mt = self._sample_rois(proposals[i], pvalid[i], gt_boxes[i], gt_classes[i],
                                                    gt_valid[i], gt_masks[i])
            sels.append(s), ws.append(w), clss.append(cl), bts.append(bt), poss.append(p), mts.append(mt)
            bidx.append(tf.fill((c.roi_batch,), i))
        rois, w, cls_t = tf.concat(sels, 0), tf.concat(ws, 0), tf.concat(clss, 0)
        box_t, is_pos, mask_t, bidx = tf.concat(bts, 0), tf.concat(poss, 0), tf.concat(mts, 0), tf.concat(bidx, 0)
        crops7 = self._level_crops(feats, rois, bidx, 7)
        cls_logits, box_d = self.box_head(crops7, training=training)
        n_w = tf.maximum(tf.reduce_sum(w), 1.0)
        cls_loss = tf.reduce_sum(w * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=cls_t, logits=cls_logits)) / n_w
        box_d = tf.reshape(box_d, (-1, c.num_classes, 4))
        box_pred = tf.gather(box_d, cls_t, batch_dims=1)
        box_loss = tf.reduce_sum(is_pos[:, None] * smooth_l1(box_pred - box_t)) / n_w
        crops14 = self._level_crops(feats, rois, bidx, 14)
        m_logits = self.mask_head(crops14, training=training)  # R,28,28,K
        m_logits = tf.gather(tf.transpose(m_logits, (0, 3, 1, 2)), cls_t, batch_dims=1)
        m_ce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_t, logits=m_logits), (1, 2))
        mask_loss = tf.reduce_sum(is_pos * m_ce) / tf.maximum(tf.reduce_sum(is_pos), 1.0)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "cls": cls_loss, "box": box_loss, "mask": mask_loss}

    def make_train_step(self, learning_rate=1e-3):
        self.optimizer = keras.optimizers.Adam(learning_rate, clipnorm=5.0)
        self.optimizer.build(self.trainable_variables)

        @tf.function
        def step(*batch):
            with tf.GradientTape() as tape:
                parts = self.losses(*batch)
                total = tf.add_n(list(parts.values()))
            grads = tape.gradient(total, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return total, parts

        return step

    def prepare_batch(self, images, id_maps, rng, classes=None):
        """NumPy inputs of :meth:`losses` from normalised images ``B,S,S`` and instance-id maps ``B,S,S``.

        ``classes``: per image, a mapping from instance id to class index (1 for every instance when omitted).
        """
        from .data import instances_to_targets

        c = self.config
        out = [[] for _ in range(7)]
        for k, (img, ids) in enumerate(zip(images, id_maps)):
            boxes, masks, classes_k, valid = instances_to_targets(ids, c.max_instances,
                                                                  None if classes is None else classes[k])
            lab, dt = rpn_targets(self.anchors, boxes[valid > 0], c, rng)
            for lst, v in zip(out, (img[..., None], lab, dt, boxes, classes_k, valid, masks)):
                lst.append(v)
        return tuple(tf.constant(np.stack(v)) for v in out)

    # -------------------------------------------------------- inference
    def resolve_scale(self, pixel_scale: float | None = None, object_diameter: float | None = None) -> float:
        """The factor an image is resized by before detection.

        ``pixel_scale`` wins; else ``object_diameter`` (typical object diameter
        in the image's pixels) is mapped to the geometric centre of
        ``config.object_diameter_range``; else ``config.pixel_scale``.
        """
        c = self.config
        if pixel_scale is not None:
            scale = float(pixel_scale)
        elif object_diameter is not None:
            if not object_diameter > 0:
                raise ValueError(f"object_diameter must be positive (pixels). Got {object_diameter}.")
            lo, hi = c.object_diameter_range
            scale = float(np.sqrt(lo * hi) / object_diameter)
        else:
            scale = float(c.pixel_scale)
        if not 0.05 <= scale <= 20:
            raise ValueError(f"pixel_scale must be in [0.05, 20]. Got {scale}.")
        return scale

    def _detect_window(self, x: np.ndarray, max_detections: int):
        """Detections in one normalised window ``h,w`` (padded with zeros to multiples of 16, at least image_size).

        Returns boxes ``(N,4)`` y1x1y2x2 in window pixels, scores, classes and soft 28x28 masks.
        """
        c = self.config
        h, w = x.shape
        ph = max(c.image_size, -(-h // 16) * 16)
        pw = max(c.image_size, -(-w // 16) * 16)
        padded = np.zeros((1, ph, pw, 1), np.float32)
        padded[0, :h, :w, 0] = x
        area = ph * pw / float(c.image_size ** 2)
        feats = self.backbone(padded, training=False)
        logits, deltas = self._rpn_outputs(feats)
        props, pvalid = self._proposals(logits, deltas, int(np.ceil(c.post_nms * area)), self.anchors_for((ph, pw)),
                                        (h, w), int(np.ceil(c.pre_nms * area)))
        props = tf.boolean_mask(props[0], pvalid[0] > 0)
        none = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                np.zeros((0, 28, 28), np.float32))
        if int(tf.shape(props)[0]) == 0:
            return none
        bidx = tf.zeros(tf.shape(props)[:1], tf.int32)
        cls_logits, box_d = self.box_head(self._level_crops(feats, props, bidx, 7), training=False)
        probs = tf.nn.softmax(cls_logits).numpy()
        cls = probs[:, 1:].argmax(1) + 1
        score = probs[np.arange(len(cls)), cls]
        box_d = tf.reshape(box_d, (-1, c.num_classes, 4)).numpy()[np.arange(len(cls)), cls]
        boxes = np.clip(decode_boxes(props.numpy(), box_d), 0, [h, w, h, w]).astype(np.float32)
        keep = (score >= c.detection_score) & (boxes[:, 2] - boxes[:, 0] > 0.5) & (boxes[:, 3] - boxes[:, 1] > 0.5)
        boxes, score, cls = boxes[keep], score[keep], cls[keep]
        if len(boxes) == 0:
            return none
        sel = tf.image.non_max_suppression(boxes, score, max_detections, iou_threshold=c.detection_nms).numpy()
        boxes, score, cls = boxes[sel], score[sel], cls[sel]
        m = self.mask_head(self._level_crops(feats, tf.constant(boxes), tf.zeros(len(boxes), tf.int32), 14),
                           training=False)
        m = tf.sigmoid(m).numpy()[np.arange(len(cls)), :, :, cls]  # N,28,28
        return boxes, score.astype(np.float32), cls.astype(np.int32), m

    def detect(self, image: np.ndarray, pixel_scale: float | None = None, *, object_diameter: float | None = None,
               intensity_range: tuple[float, float] | None = None, tile_size: int | None = None,
               tile_overlap: int | None = None, max_detections: int | None = None) -> dict:
        """Instances in one 2-D image of any size, at its native resolution.

        Parameters
        ----------
        image : np.ndarray
            ``H,W`` or ``H,W,C``, raw values of any dtype (normalised here with
            ``config.normalisation`` over the whole image).
        pixel_scale : float, optional
            Resize factor applied before detection (2.0: objects twice as wide
            to the network); use it when objects are outside
            ``config.object_diameter_range``. Default ``config.pixel_scale``.
        object_diameter : float, optional
            Typical object diameter in the image's pixels; sets the scale when
            ``pixel_scale`` is not given (:meth:`resolve_scale`).
        intensity_range : tuple of float, optional
            Raw ``(low, high)`` mapped to 0 and 1 instead of the image's percentiles.
        tile_size, tile_overlap : int, optional
            Window side and overlap in model pixels (defaults from the config). Windows
            are fully convolutional passes; detections are merged across windows.
        max_detections : int, optional
            Cap on returned instances (default ``config.max_detections``).

        Returns
        -------
        dict
            ``boxes`` ``(N,4)`` x,y,w,h in image pixels, ``scores`` ``(N,)``,
            ``classes`` ``(N,)`` int (1..num_classes-1), ``masks`` ``(N,H,W)`` bool;
            sorted by decreasing score.
        """
        c = self.config
        limit = int(max_detections or c.max_detections)
        if limit < 1:
            raise ValueError(f"max_detections must be >= 1. Got {limit}.")
        tile = int(tile_size or c.tile_size)
        overlap = int(c.tile_overlap if tile_overlap is None else tile_overlap)
        img = normalise_intensity(image, c.normalisation, c.percentiles, intensity_range)
        h0, w0 = img.shape
        scale = self.resolve_scale(pixel_scale, object_diameter)
        x = img if scale == 1.0 else rescale(img, scale)
        sy, sx = x.shape[0] / h0, x.shape[1] / w0
        parts = []
        for g, win in enumerate(tile_grid(x.shape, tile, overlap)):
            boxes, score, cls, m = self._detect_window(x[win.y0:win.y1, win.x0:win.x1], limit)
            boxes = boxes + np.array([win.y0, win.x0, win.y0, win.x0], np.float32)
            own = win.owns((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
            parts.append((boxes[own], score[own], cls[own], m[own], np.full(int(own.sum()), g)))
        boxes, score, cls, m, group = (np.concatenate(v) for v in zip(*parts))
        if len(boxes) == 0:
            return _empty(h0, w0)
        boxes = boxes / np.array([sy, sx, sy, sx], np.float32)
        crops = [paste_mask(mk, b, (h0, w0)) for mk, b in zip(m, boxes)]
        keep = suppress_duplicates(boxes, score, crops, group, iou=0.5)
        keep = np.asarray([k for k in keep if crops[k][2].any()], np.int64)[:limit]
        if len(keep) == 0:
            return _empty(h0, w0)
        boxes, score, cls = boxes[keep], score[keep], cls[keep]
        xywh = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], 1)
        return {"boxes": xywh.astype(np.float32), "scores": score.astype(np.float32),
                "classes": cls.astype(np.int32), "masks": crops_to_dense([crops[k] for k in keep], (h0, w0))}

    # -------------------------------------------------------- copies
    def reconfigured(self, **changes) -> MaskRCNN:
        """A new model with ``config`` fields replaced and this model's weights copied.

        When the class list changes size, the class-dependent outputs (class
        logits, per-class box deltas and mask logits) are warm-started: a new
        class ``j`` starts from this model's class ``min(j, K - 1)``.
        """
        if "class_names" in changes:
            changes["class_names"] = tuple(changes["class_names"])
            changes.setdefault("num_classes", len(changes["class_names"]))
        new = MaskRCNN(dataclasses.replace(self.config, **changes))
        k_old, k_new = self.config.num_classes, new.config.num_classes
        src = np.minimum(np.arange(k_new), k_old - 1)
        for part in self._PARTS:
            old_w, new_w = getattr(self, part).get_weights(), getattr(new, part).get_weights()
            out = []
            for a, b in zip(old_w, new_w):
                if a.shape == b.shape:
                    out.append(a.copy())
                elif a.shape[-1] == k_old and b.shape[-1] == k_new:  # class logits / mask logits
                    out.append(a[..., src].copy())
                elif a.shape[-1] == 4 * k_old and b.shape[-1] == 4 * k_new:  # per-class box deltas
                    out.append(a.reshape(*a.shape[:-1], k_old, 4)[..., src, :].reshape(b.shape).copy())
                else:
                    raise ValueError(f"Cannot carry weights of shape {a.shape} in '{part}' over to {b.shape}.")
            getattr(new, part).set_weights(out)
        return new

    def copy(self) -> MaskRCNN:
        """An independent copy (same config, same weights, no optimizer state)."""
        return self.reconfigured()

    def with_classes(self, class_names) -> MaskRCNN:
        """A copy predicting ``class_names`` (background first), warm-started from this model's classes."""
        names = tuple(class_names)
        if len(names) < 2:
            raise ValueError(f"class_names needs the background and at least one class. Got {names}.")
        return self.reconfigured(class_names=names)

    # -------------------------------------------------------- persistence
    _PARTS = ("backbone", "rpn", "box_head", "mask_head")

    def save(self, directory: str | Path) -> Path:
        """Weights as float16 in one compressed ``weights.npz`` (half the size; inference is unaffected
        beyond float16 rounding) plus ``config.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in self._PARTS:
            for i, w in enumerate(getattr(self, name).get_weights()):
                arrays[f"{name}/{i:03d}"] = w.astype(np.float16)
        np.savez_compressed(d / "weights.npz", **arrays)
        for old in d.glob("*.weights.h5"):
            old.unlink()
        (d / "config.json").write_text(self.config.to_json())
        return d

    @classmethod
    def load(cls, directory: str | Path) -> MaskRCNN:
        d = Path(directory)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"No Mask R-CNN in '{d}': expected config.json and weights.npz.")
        cfg = MaskRCNNConfig.from_dict(json.loads((d / "config.json").read_text()))
        m = cls(cfg)
        if (d / "weights.npz").is_file():
            with np.load(d / "weights.npz") as z:
                for name in cls._PARTS:
                    part = getattr(m, name)
                    n = len(part.get_weights())
                    part.set_weights([z[f"{name}/{i:03d}"].astype(np.float32) for i in range(n)])
        else:  # full-precision Keras weight files
            for name in cls._PARTS:
                getattr(m, name).load_weights(d / f"{name}.weights.h5")
        return m


def _empty(h, w):
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "classes": np.zeros(0, np.int32), "masks": np.zeros((0, h, w), bool)}


def build_maskrcnn(**kwargs) -> MaskRCNN:
    return MaskRCNN(MaskRCNNConfig(**kwargs))
