import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from segcore.instances.classical import ClassicalConfig, classical_instances, tune_classical
from segcore.instances.coco import build_coco, encode_mask, read_coco, save_coco
from segcore.instances.data import instances_to_targets, load_coco, make_instance_phantom, write_instance_set
from segcore.instances.datasets import InstanceSample, phantom_scenes, split_held_out
from segcore.instances.edit import (
    add_instance,
    delete_instance,
    ids_from_masks,
    masks_from_ids,
    merge_instances,
    relabel_sequential,
    split_instance,
)
from segcore.instances.evaluate import coco_mask_ap, mask_ap, mask_iou_matrix
from segcore.instances.maskrcnn import (
    MaskRCNN,
    MaskRCNNConfig,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    iou_matrix,
    roi_align,
    rpn_targets,
)
from segcore.instances.preprocess import normalise_intensity
from segcore.instances.tiling import paste_mask, suppress_duplicates, tile_grid


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
    m = MaskRCNN(MaskRCNNConfig(normalisation="none"))  # trained on [0, 1] images as they are
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
    _img, ids = make_instance_phantom(4242 * 10000 + 0, 128)
    masks = items[0][1]
    assert len(masks) == int(ids.max())
    for j, m in enumerate(masks, 1):
        np.testing.assert_array_equal(m, ids == j)
    _boxes, _bm, classes, valid = instances_to_targets(ids, 16)
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


# ---------------------------------------------------------------- any image size, tiles, corrections (issue 15)

@pytest.fixture(scope="module")
def shipped(root):
    return MaskRCNN.load(root / "sample_data" / "models" / "maskrcnn")


def _blob_image(shape, centres, radius=11.0, seed=0):
    """Phantom-like bright discs (brighter in the centre) on a noisy background, and their ids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    img = np.full(shape, 0.15, np.float32)
    ids = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
        img = np.where(d2 <= 1, 0.75 * (1 - 0.45 * d2), img)
        ids[d2 <= 1] = k
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.standard_normal(shape).astype(np.float32) * 0.03
    return np.clip(img, 0, 1), ids


def _best_iou(masks, gt):
    return mask_iou_matrix(masks, gt[None]).ravel() if len(masks) else np.zeros(0)


def test_tile_grid_cores_partition_the_image_and_paste_mask_matches_brute_force():
    for shape, tile, overlap in (((300, 100), 128, 32), ((512, 700), 128, 64), ((90, 60), 512, 96)):
        wins = tile_grid(shape, tile, overlap)
        cy, cx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
        owners = sum(w.owns(cy, cx).astype(int) for w in wins)
        assert (owners == 1).all()  # every point belongs to exactly one core
        for w in wins:
            assert w.y1 - w.y0 <= tile and w.x1 - w.x0 <= tile
            inside = w.owns(cy, cx)
            if inside.any():  # a core keeps >= overlap / 2 from its window's inner edges
                ys, _xs = np.nonzero(inside)
                assert ys.min() - w.y0 >= overlap / 2 - 1 or w.y0 == 0
                assert w.y1 - ys.max() - 1 >= overlap / 2 - 1 or w.y1 == shape[0]
    rng = np.random.default_rng(0)
    soft = rng.random((28, 28)).astype(np.float32)
    box = (3.3, 5.6, 20.9, 17.2)
    y0, x0, crop = paste_mask(soft, box, (30, 30))
    for j in range(crop.shape[0]):
        for i in range(crop.shape[1]):
            u = (y0 + j + 0.5 - box[0]) * 27 / (box[2] - box[0])
            v = (x0 + i + 0.5 - box[1]) * 27 / (box[3] - box[1])
            if 0.05 < u < 26.95 and 0.05 < v < 26.95:
                a, b = int(u), int(v)
                du, dv = u - a, v - b
                val = (soft[a, b] * (1 - du) * (1 - dv) + soft[a, b + 1] * (1 - du) * dv
                       + soft[a + 1, b] * du * (1 - dv) + soft[a + 1, b + 1] * du * dv)
                if abs(val - 0.5) > 0.02:
                    assert crop[j, i] == (val >= 0.5), (j, i)


def test_tiled_detection_equals_single_tile_detection(shipped):
    # an image within one window: detect() is exactly the network's single-window pass
    img, _ = make_instance_phantom(11, 128)
    det = shipped.detect(img)
    c = shipped.config
    boxes, scores, _, _ = shipped._detect_window(normalise_intensity(img, c.normalisation, c.percentiles), 1000)
    np.testing.assert_allclose(det["scores"], np.sort(scores)[::-1], rtol=1e-6)
    np.testing.assert_allclose(det["boxes"][:, :2], boxes[np.argsort(-scores, kind="stable")][:, [1, 0]], atol=1e-4)
    # a 256x256 scene as nine overlapping 128-pixel windows vs one window: the same instances
    img, ids = make_instance_phantom(5, 256, max_objects=36, min_objects=20, object_scale=128)
    one = shipped.detect(img)
    many = shipped.detect(img, tile_size=128, tile_overlap=64)
    assert len(tile_grid(img.shape, 128, 64)) == 9 and len(tile_grid(img.shape, c.tile_size, c.tile_overlap)) == 1
    assert abs(len(one["scores"]) - len(many["scores"])) <= 1
    iou = mask_iou_matrix(one["masks"], many["masks"])
    assert (iou.max(1) >= 0.8).mean() >= 0.95 and (iou.max(0) >= 0.8).mean() >= 0.95
    ap_one, ap_many = mask_ap([ids], [one])["AP50"], mask_ap([ids], [many])["AP50"]
    assert ap_one > 0.85 and abs(ap_one - ap_many) <= 0.05


def test_object_straddling_a_tile_seam_is_found_once(shipped):
    wins = tile_grid((128, 224), 128, 32)
    assert [(w.x0, w.x1) for w in wins] == [(0, 128), (96, 224)] and wins[0].cx1 == 112.0
    for cx in (100.0, 105.0, 109.0, 112.0, 115.0, 119.0, 124.0):  # on and around the seam between the two cores
        img, ids = _blob_image((128, 224), [(64.0, cx), (40.0, 30.0), (90.0, 200.0)])
        det = shipped.detect(img, tile_size=128, tile_overlap=32)
        ious = _best_iou(det["masks"], ids == 1)
        assert (ious >= 0.5).sum() == 1 and (ious > 0.05).sum() == 1, (cx, np.round(ious[ious > 0], 3))
        assert len(det["scores"]) == 3
    # the merge itself: the same object reported by both windows with centres either side of the core line
    crop = np.ones((20, 20), bool)
    b = np.array([[50, 110, 70, 130], [50, 111, 70, 131]], np.float32)
    keep = suppress_duplicates(b, np.array([0.8, 0.9]), [(50, 110, crop), (50, 111, crop)], np.array([0, 1]))
    assert keep.tolist() == [1]


def test_more_than_100_objects_are_all_returned(shipped):
    scene = phantom_scenes(1)[0]
    assert scene.ids.shape == (512, 512) and scene.n_objects > 100
    det = shipped.detect(scene.image)
    assert len(det["scores"]) > 100
    found = mask_iou_matrix(masks_from_ids(scene.ids)[0], det["masks"]).max(1) >= 0.5
    assert found.mean() >= 0.8  # most of them real matches, not a cap filled with noise
    capped = shipped.detect(scene.image, max_detections=40)
    assert len(capped["scores"]) == 40
    np.testing.assert_allclose(capped["scores"], det["scores"][:40], rtol=1e-6)


def test_detect_takes_raw_16_bit_and_colour_images_and_a_pixel_scale(shipped):
    img, ids = make_instance_phantom(21, 128)
    img8 = np.rint(img * 255).astype(np.uint8)
    a = shipped.detect(img8)
    b = shipped.detect(img8.astype(np.uint16) * 200 + 1000)  # the same picture in raw 16-bit units
    c = shipped.detect(np.repeat(img8[..., None], 3, -1))
    assert len(a["scores"]) == len(b["scores"]) == len(c["scores"]) > 0
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-3)
    assert (mask_iou_matrix(a["masks"], b["masks"]).max(1) > 0.98).all()
    # objects half the size the model knows: pixel_scale=2 brings them back into range
    small = cv2.resize(img8, (64, 64), interpolation=cv2.INTER_AREA)
    small_ids = cv2.resize(ids, (64, 64), interpolation=cv2.INTER_NEAREST)
    det = shipped.detect(small, pixel_scale=2.0)
    assert det["masks"].shape[1:] == (64, 64)
    assert mask_ap([small_ids], [det])["AP50"] > 0.8
    lo, hi = shipped.config.object_diameter_range
    assert shipped.resolve_scale(object_diameter=8.0) == pytest.approx(np.sqrt(lo * hi) / 8.0)
    assert shipped.config.anchor_object_range[0] <= lo and hi <= shipped.config.anchor_object_range[1]
    with pytest.raises(ValueError, match="pixel_scale must be in"):
        shipped.detect(small, pixel_scale=0.0)


def test_mask_ap_matches_pycocotools():
    rng = np.random.default_rng(3)
    gts, preds, classes = [], [], []
    for seed in range(4):
        _, ids = make_instance_phantom(100 + seed, 96)
        ids = ids.astype(np.int32)
        masks, labels = masks_from_ids(ids)
        cmap = {int(v): 1 + int(v) % 2 for v in labels}
        out_m, out_s, out_c = [], [], []
        for m, v in zip(masks, labels):
            if rng.random() < 0.2:
                continue  # missed
            k = np.ones((3, 3), np.uint8)
            mm = m.astype(np.uint8)
            mm = cv2.erode(mm, k) if rng.random() < 0.5 else cv2.dilate(mm, k)
            out_m.append(np.roll(mm.astype(bool), int(rng.integers(-2, 3)), 1))
            out_s.append(rng.random())
            out_c.append(cmap[int(v)] if rng.random() < 0.9 else 3 - cmap[int(v)])
        for _ in range(3):  # false positives
            fp = np.zeros(ids.shape, bool)
            y, x = rng.integers(0, 80, 2)
            fp[y:y + 12, x:x + 12] = True
            out_m.append(fp)
            out_s.append(rng.random())
            out_c.append(int(rng.integers(1, 3)))
        gts.append(ids)
        classes.append(cmap)
        preds.append({"masks": np.array(out_m), "scores": np.array(out_s), "classes": np.array(out_c)})
    gts.append(np.zeros((96, 96), np.int32))  # an image without objects: false positives only
    classes.append({})
    preds.append({"masks": preds[0]["masks"][:2], "scores": np.array([0.99, 0.5]), "classes": np.array([1, 2])})
    one_class = [{"masks": p["masks"], "scores": p["scores"]} for p in preds]
    for cls, pr in ((None, one_class), (classes, preds)):
        ours, ref = mask_ap(gts, pr, cls), coco_mask_ap(gts, pr, cls)
        for k in ("AP50", "AP75", "AP50_95"):
            assert ours[k] == pytest.approx(ref[k], abs=1e-9), (k, ours, ref)
        assert 0.2 < ours["AP50"] < 0.95


def test_instance_edits_round_trip_through_coco(tmp_path):
    ids = np.zeros((40, 60), np.int32)
    ids[5:20, 5:25] = 1
    yy, xx = np.mgrid[0:40, 0:60]
    ids[(yy - 25) ** 2 + (xx - 40) ** 2 <= 64] = 2
    ids[28:38, 20:32] = 5
    orig = ids.copy()
    gone = delete_instance(ids, 2)
    assert set(np.unique(gone)) == {0, 1, 5} and (gone[orig != 2] == orig[orig != 2]).all()
    merged = merge_instances(ids, 1, 5)
    assert set(np.unique(merged)) == {0, 1, 2} and ((merged == 1) == np.isin(orig, [1, 5])).all()
    split, new = split_instance(ids, 1, (15, 0), (15, 40))  # vertical line x = 15 through instance 1
    assert new == 6 and ((split == 1) | (split == 6)).sum() == (orig == 1).sum()
    assert (split[5:20, 5:15] == 6).all() and (split[5:20, 15:25] == 1).all()
    drawn = np.zeros_like(ids, bool)
    drawn[20:35, 30:50] = True  # overlaps instance 2
    added, lab = add_instance(split, drawn)
    assert lab == 7 and ((added == 7) == (drawn & (split == 0))).all() and (added[split == 2] == 2).all()
    over, _ = add_instance(split, drawn, overwrite=True)
    assert ((over == 7) == drawn).all()
    np.testing.assert_array_equal(ids, orig)  # inputs never modified
    with pytest.raises(ValueError, match="present ids"):
        delete_instance(ids, 9)
    with pytest.raises(ValueError, match="does not cross"):
        split_instance(ids, 1, (50, 0), (50, 39))
    with pytest.raises(ValueError, match="already belongs"):
        add_instance(ids, ids == 1)
    masks, _labels = masks_from_ids(added)
    np.testing.assert_array_equal(relabel_sequential(ids_from_masks(masks))[0], relabel_sequential(added)[0])
    # save the corrected map as COCO (compressed and plain RLE) and read it back
    names = ("background", "cell", "debris")
    cls = {1: 1, 2: 2, 5: 1, 6: 1, 7: 2}
    for compressed in (True, False):
        coco = build_coco([{"file_name": "img.png", "ids": added, "classes": cls}], names, compressed=compressed)
        assert all(isinstance(a["segmentation"]["counts"], str if compressed else list) for a in coco["annotations"])
        path = save_coco(tmp_path / f"c{compressed}.json", coco)
        entries, back_names = read_coco(path, load_images=False)
        assert back_names == names and entries[0].n_crowd == 0
        seq, mapping = relabel_sequential(added)
        np.testing.assert_array_equal(entries[0].ids, seq)
        assert entries[0].classes == {mapping[k]: v for k, v in cls.items()}


def _coco_fixture(tmp_path):
    """Two 16-bit images of different sizes, two categories (ids 3, 7), polygons, both RLE kinds, one crowd."""
    images, anns, truth = [], [], []
    aid = 1
    for i, (seed, crop) in enumerate(((31, (160, 96)), (32, (128, 150))), 1):
        img, ids = make_instance_phantom(seed, 160, max_objects=12, object_scale=128)
        img, ids = img[: crop[0], : crop[1]], ids[: crop[0], : crop[1]].astype(np.int32)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), (img * 3000 + 500).astype(np.uint16))
        images.append({"id": i, "file_name": f"im{i}.png", "height": crop[0], "width": crop[1]})
        for k, v in enumerate(np.unique(ids)[1:]):
            m = ids == v
            if k == 0:
                cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                seg = [(c.reshape(-1, 2) + 0.5).ravel().tolist() for c in cs if len(c) >= 3]
            else:
                seg = encode_mask(m, compressed=bool(k % 2))
            anns.append({"id": aid, "image_id": i, "category_id": 3 if k % 3 else 7, "iscrowd": 0,
                         "segmentation": seg, "area": int(m.sum()), "bbox": [0, 0, 1, 1]})
            aid += 1
        truth.append(ids)
    crowd = np.zeros((160, 96), bool)
    crowd[:30, :30] = True
    anns.append({"id": aid, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": encode_mask(crowd),
                 "area": 900, "bbox": [0, 0, 30, 30]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 7, "name": "long"}, {"id": 3, "name": "round"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json", truth


def test_coco_training_on_a_tiny_set_round_trips(tmp_path, root):
    from segcore.cli import main

    path, truth = _coco_fixture(tmp_path)
    entries, names = read_coco(path)
    assert names == ("background", "round", "long")  # categories by id: 3 -> class 1, 7 -> class 2
    assert [e.n_crowd for e in entries] == [1, 0]
    for e, ids in zip(entries, truth):
        assert e.image.dtype == np.uint16 and e.image.shape == ids.shape
        iou = mask_iou_matrix(masks_from_ids(e.ids)[0], masks_from_ids(ids)[0])
        assert (iou.max(1)[1:] == 1.0).all() and iou.max(1)[0] > 0.8  # RLE exact, the polygon close
        assert set(e.classes.values()) == {1, 2}
    out = tmp_path / "model"
    assert main(["train-instances", "--coco", str(path), "--steps", "3", "--eval-every", "3", "--batch-size", "2",
                 "--out", str(out), "--init", str(root / "sample_data" / "models" / "maskrcnn")]) == 0
    back = MaskRCNN.load(out)
    assert back.config.class_names == names and back.config.num_classes == 3
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 3 and log["train_sets"] == {"user": 2}
    assert [h["step"] for h in log["history"] if "val" in h] == [0, 3]
    det = back.detect(entries[1].image)
    assert det["masks"].shape[1:] == entries[1].ids.shape and set(det["classes"].tolist()) <= {1, 2}


def test_fine_tune_instances_returns_a_gated_copy(shipped):
    from segcore.instances.train import InstanceTrainConfig, fine_tune_instances

    pairs = []
    for seed in (41, 42):
        img, ids = make_instance_phantom(seed, 128)
        pairs.append(((img * 4000).astype(np.uint16), masks_from_ids(ids)[0]))  # (image, masks N,H,W)
    before = [w.copy() for w in shipped.mask_head.get_weights()]
    res = fine_tune_instances(shipped, pairs, config=InstanceTrainConfig(steps=3, eval_every=3, batch_size=2))
    assert res.model is not shipped and res.n_train_objects > 0 and res.n_val_objects > 0
    assert 0.0 <= res.ap50_before <= 1.0 and 0.0 <= res.ap50_after <= 1.0
    assert res.ap50_after >= res.ap50_before and res.promote  # the best of (start, trained) on the held-out part
    for a, b in zip(before, shipped.mask_head.get_weights()):
        np.testing.assert_array_equal(a, b)  # the original model is untouched
    train, val = split_held_out([InstanceSample(p[0], ids_from_masks(p[1])) for p in pairs], 0.25)
    assert [s.ids.shape for s in train] == [(128, 96)] * 2 and [s.ids.shape for s in val] == [(128, 32)] * 2


def test_classical_pipeline_splits_touching_objects_and_tuning_picks_the_best():
    img, ids = _blob_image((64, 96), [(32.0, 36.0), (32.0, 56.0)], radius=11.0)
    out, scores = classical_instances(img, ClassicalConfig(min_distance=5, sigma=1.0))
    assert len(scores) == 2
    iou = mask_iou_matrix(masks_from_ids(out)[0], masks_from_ids(ids)[0])
    assert (iou.max(1) > 0.8).all()
    best, table = tune_classical([img], [ids], {"min_distance": [30, 5]})
    assert best.min_distance == 5 and len(table) == 2 and table[1]["AP50"] > table[0]["AP50"]
    with pytest.raises(ValueError, match="probability map"):
        classical_instances(img, ClassicalConfig(foreground="probability"))


def test_instance_fine_tune_runs_as_a_job_with_cancel_and_an_inactive_version(root, shipped, tmp_path):
    """The Instances page's fine-tune is a segcore.jobs job: a version with its held-out AP50, cancel within a step."""
    import time

    from segcore.jobs import JobManager, JobSpec
    from segcore.labels import png_bytes
    from segcore.store import InstanceWorkspace, Workspace

    ws = Workspace(tmp_path / "data", default_model_dir=root / "sample_data" / "models" / "default")
    shipped_dir = root / "sample_data" / "models" / "maskrcnn"
    iws = InstanceWorkspace(ws, shipped_dir)
    saved = []
    for seed in (41, 42):
        img, ids = make_instance_phantom(seed, 128)
        saved.append(iws.save(png_bytes((img * 4000).astype(np.uint16)), f"cells{seed}.png", ids, author="ann",
                              slice_index=None, class_names=tuple(shipped.config.class_names),
                              model_version="shipped").id)
    mgr = JobManager(ws, sample_dir=None, instance_model_dir=shipped_dir)
    try:
        for spec, match in ((JobSpec("ann", ["nope"], kind="instances"), "Unknown instance correction"),
                            (JobSpec("ann", saved, held_out_ids=saved[:1], kind="instances"), "no held-out ids"),
                            (JobSpec("ann", saved, kind="instances", settings={"epochs": 3}),
                             "Unknown instance fine-tune settings"),
                            (JobSpec("ann", saved, kind="instances", settings={"steps": 0}), "steps must be"),
                            (JobSpec("ann", saved, kind="instances", base_version="v7"), "Unknown instance-model"),
                            (JobSpec("ann", saved, kind="panoptic"), "Unknown job kind")):
            with pytest.raises(ValueError, match=match):
                mgr.submit(spec)
        done = mgr.wait(mgr.submit(JobSpec("ann", saved, kind="instances", settings={"steps": 3})), 300)
        long = mgr.submit(JobSpec("ann", saved, kind="instances", settings={"steps": 5000}))
        t0 = time.monotonic()
        while mgr.log(long).count("progress ") < 2 and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert mgr.log(long).count("progress ") >= 2  # cancelled while training, not before
        mgr.cancel(long, actor="ann")
        cancelled = mgr.wait(long, 120)
    finally:
        mgr.shutdown()
    assert done.state == "done", mgr.log(done.id)
    v = done.result["version"]
    info = iws.versions()[v]
    assert iws.active_version() == "shipped" and info["created_by"] == "ann" and info["trained_on"] == saved
    assert info["parent"] == "shipped" and info["note"] == f"fine-tune job {done.id}"
    assert info["ap50_after"] == done.result["ap50_after"] and info["ap50_before"] == done.result["ap50_before"]
    assert done.progress["step"] == 3 and done.progress["fraction"] == 1.0
    assert MaskRCNN.load(iws.model_dir(v)).config.class_names == shipped.config.class_names
    assert cancelled.state == "cancelled"
    lines = mgr.log(long).splitlines()
    cut = next(i for i, line in enumerate(lines) if "cancel requested" in line)
    assert len([line for line in lines[cut:] if " progress " in line]) <= 1
    assert sorted(iws.versions()) == sorted(["shipped", v])  # the cancelled job added nothing
    assert iws.candidates() == [v]  # fine-tuned from the active version, with held-out AP50
    iws.activate(v, actor="ann")
    assert iws.candidates() == []  # the shipped version has no parent and no AP50: not a candidate of v
