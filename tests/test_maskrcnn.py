import numpy as np
import pytest
import tensorflow as tf

from segcore.instances.data import instances_to_targets, load_coco, make_instance_phantom, write_instance_set
from segcore.instances.maskrcnn import (MaskRCNN, MaskRCNNConfig, decode_boxes, encode_boxes, generate_anchors,
                                        iou_matrix, roi_align, rpn_targets)


def test_anchor_generation():
    a = generate_anchors(32, (8,), (16,), (0.5, 1.0, 2.0))
    assert a.shape == (4 * 4 * 3, 4)
    first = a[:3]
    np.testing.assert_allclose((first[:, 0] + first[:, 2]) / 2, 4.0)  # centred on (0.5 * stride)
    hw = np.stack([first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]], 1)
    np.testing.assert_allclose(hw[:, 0] * hw[:, 1], 256.0, rtol=1e-5)
    np.testing.assert_allclose(hw[:, 0] / hw[:, 1], [0.5, 1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(a[3, :2] - a[0, :2], [0, 8])  # next position along x


def test_box_encoding_roundtrip_numpy_and_tf():
    rng = np.random.default_rng(0)
    anchors = np.abs(rng.normal(20, 5, (50, 2)))
    anchors = np.concatenate([anchors, anchors + rng.uniform(5, 30, (50, 2))], 1).astype(np.float32)
    boxes = anchors + rng.normal(0, 3, (50, 4)).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    d = encode_boxes(anchors, boxes)
    np.testing.assert_allclose(decode_boxes(anchors, d), boxes, atol=1e-3)
    dt = encode_boxes(tf.constant(anchors), tf.constant(boxes))
    np.testing.assert_allclose(dt.numpy(), d, atol=1e-4)
    np.testing.assert_allclose(decode_boxes(tf.constant(anchors), dt).numpy(), boxes, atol=1e-3)


def test_iou_matrix_hand_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 25 / 175, 0.0]], atol=1e-6)


def _bilinear(feat, y, x):
    h, w = feat.shape[:2]
    if y < 0 or y > h - 1 or x < 0 or x > w - 1:
        return np.zeros(feat.shape[2:])
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    return (feat[y0, x0] * (1 - dy) * (1 - dx) + feat[y0, x1] * (1 - dy) * dx
            + feat[y1, x0] * dy * (1 - dx) + feat[y1, x1] * dy * dx)


def test_roi_align_matches_numpy_reference():
    rng = np.random.default_rng(0)
    feat = rng.random((2, 16, 16, 3)).astype(np.float32)
    stride = 4.0
    boxes = np.array([[8, 12, 40, 36], [0, 0, 64, 64], [20.5, 3.2, 30.1, 50.7]], np.float32)
    idx = np.array([0, 1, 1])
    got = roi_align(tf.constant(feat), tf.constant(boxes), tf.constant(idx), 5, stride).numpy()
    for k, (b, i) in enumerate(zip(boxes, idx)):
        fy1, fx1, fy2, fx2 = b / stride - 0.5  # image edges -> feature-cell-centre coordinates
        for r in range(5):
            for c in range(5):
                y = fy1 + r * (fy2 - fy1) / 4
                x = fx1 + c * (fx2 - fx1) / 4
                np.testing.assert_allclose(got[k, r, c], _bilinear(feat[i], y, x), atol=1e-5)


def test_rpn_targets_sampling():
    cfg = MaskRCNNConfig()
    anchors = generate_anchors(128, cfg.strides, cfg.anchor_sizes, cfg.anchor_ratios)
    gt = np.array([[10, 10, 34, 34], [60, 60, 72, 90]], np.float32)
    labels, deltas = rpn_targets(anchors, gt, cfg, np.random.default_rng(0))
    assert (labels >= 0).sum() == cfg.rpn_batch
    pos = labels == 1
    assert 2 <= pos.sum() <= cfg.rpn_batch // 2
    assert iou_matrix(anchors[pos], gt).max(1).min() > 0.1
    np.testing.assert_allclose(decode_boxes(anchors[pos], deltas[pos]),
                               gt[iou_matrix(anchors[pos], gt).argmax(1)], atol=1e-3)


def test_losses_on_a_tiny_hand_made_case():
    import keras

    keras.utils.set_random_seed(0)
    m = MaskRCNN(MaskRCNNConfig(image_size=64, anchor_sizes=(8, 16, 32), max_instances=2, roi_batch=16, post_nms=20,
                                pre_nms=100))
    img = np.zeros((64, 64), np.float32)
    ids = np.zeros((64, 64), np.uint16)
    ids[10:26, 10:26] = 1
    img[ids > 0] = 1.0
    batch = m.prepare_batch([img], [ids], np.random.default_rng(0))
    parts = {k: float(v) for k, v in m.losses(*batch).items()}
    assert set(parts) == {"rpn_cls", "rpn_box", "cls", "box", "mask"}
    assert all(np.isfinite(v) and v >= 0 for v in parts.values())
    # untrained objectness logits are ~0: binary cross-entropy of log(2) per sampled anchor
    assert parts["rpn_cls"] == pytest.approx(np.log(2), abs=0.15)
    # a perfect RPN regression target gives zero RPN box loss
    labels, deltas = batch[1], batch[2]
    feats = m.backbone(batch[0])
    _, pred = m._rpn_outputs(feats)
    from segcore.instances.maskrcnn import smooth_l1

    pos = tf.cast(labels > 0, tf.float32)
    zero = tf.reduce_sum(pos[..., None] * smooth_l1(pred - pred))
    assert float(zero) == 0.0
    assert float(tf.reduce_sum(pos[..., None] * smooth_l1(pred - deltas))) > 0


@pytest.mark.slow
def test_overfit_one_image_reaches_near_perfect_masks(tmp_path):
    import keras

    from segcore.metrics import dice

    keras.utils.set_random_seed(1)
    img, ids = make_instance_phantom(3, 128)
    m = MaskRCNN()
    step = m.make_train_step(1e-3)
    rng = np.random.default_rng(0)
    for _ in range(250):
        step(*m.prepare_batch([img], [ids], rng))
    det = m.detect(img)
    n_gt = int(ids.max())
    assert len(det["masks"]) >= n_gt - 1
    pred = np.zeros_like(ids)
    for k in np.argsort(det["scores"]):
        pred[det["masks"][k]] = 1
    assert dice(pred, (ids > 0).astype(int), 2)[1] > 0.9
    # each object is found by some instance with IoU >= 0.5
    found = 0
    for j in range(1, n_gt + 1):
        g = ids == j
        ious = [(g & pm).sum() / max((g | pm).sum(), 1) for pm in det["masks"]]
        found += max(ious, default=0) >= 0.5
    assert found >= n_gt - 1
    # save/load round trip: weights stored as float16, detections agree up to that rounding
    m.save(tmp_path / "m")
    back = MaskRCNN.load(tmp_path / "m")
    for a, b in zip(m.backbone.get_weights() + m.mask_head.get_weights(),
                    back.backbone.get_weights() + back.mask_head.get_weights()):
        np.testing.assert_array_equal(a.astype(np.float16).astype(np.float32), b)
    det2 = back.detect(img)
    assert len(det2["scores"]) == len(det["scores"])
    np.testing.assert_allclose(np.sort(det2["scores"]), np.sort(det["scores"]), atol=0.02)
    union = np.logical_or.reduce(det["masks"])
    union2 = np.logical_or.reduce(det2["masks"])
    assert (union & union2).sum() / (union | union2).sum() > 0.97
    back.save(tmp_path / "m2")
    again = MaskRCNN.load(tmp_path / "m2")  # a second round trip is exact
    for a, b in zip(back.box_head.get_weights(), again.box_head.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_instance_data_and_coco_roundtrip(tmp_path):
    write_instance_set(tmp_path, {"test": 3})
    items = load_coco(tmp_path / "test" / "coco.json")
    assert len(items) == 3
    img, ids = make_instance_phantom(4242 * 10000 + 0, 128)
    masks = items[0][1]
    assert len(masks) == int(ids.max())
    for j, m in enumerate(masks, 1):
        np.testing.assert_array_equal(m, ids == j)
    boxes, bm, classes, valid = instances_to_targets(ids, 16)
    assert valid.sum() == ids.max() and (classes[valid > 0] == 1).all()
    with pytest.raises(FileNotFoundError, match="expected config.json and weights.npz"):
        MaskRCNN.load(tmp_path / "nothing")


def test_committed_instance_test_split_regenerates_byte_for_byte(tmp_path, root):
    write_instance_set(tmp_path)
    committed = root / "sample_data" / "instances" / "test"
    names = sorted(p.name for p in (committed / "images").glob("*.png"))
    assert len(names) == 40
    for n in names[:5] + names[-3:]:
        for kind in ("images", "instances"):
            assert (tmp_path / "test" / kind / n).read_bytes() == (committed / kind / n).read_bytes()
    assert (tmp_path / "test" / "coco.json").read_bytes() == (committed / "coco.json").read_bytes()


def test_training_step_on_an_image_without_objects():
    import keras

    keras.utils.set_random_seed(0)
    m = MaskRCNN(MaskRCNNConfig(image_size=64, anchor_sizes=(8, 16, 32), roi_batch=16, post_nms=20, pre_nms=100))
    batch = m.prepare_batch([np.zeros((64, 64), np.float32)], [np.zeros((64, 64), np.uint16)],
                            np.random.default_rng(0))
    parts = {k: float(v) for k, v in m.losses(*batch).items()}
    assert parts["box"] == 0.0 and parts["mask"] == 0.0 and parts["rpn_box"] == 0.0
    assert parts["cls"] > 0 and parts["rpn_cls"] > 0
    det = m.detect(np.zeros((50, 70), np.float32))
    assert det["masks"].shape[1:] == (50, 70)
