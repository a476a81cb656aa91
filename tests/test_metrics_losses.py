import numpy as np
import pytest

from segcore import metrics as M


def test_dice_iou_hand_values():
    gt = np.array([[0, 1, 1, 0], [0, 1, 1, 0]])
    pred = np.array([[0, 1, 0, 0], [0, 1, 1, 1]])
    # class 1: |P|=4 |G|=4 I=3 -> dice 6/8, iou 3/5
    d = M.dice(pred, gt, 2)
    i = M.iou(pred, gt, 2)
    assert d[1] == pytest.approx(0.75)
    assert i[1] == pytest.approx(0.6)
    assert M.pixel_accuracy(pred, gt) == pytest.approx(6 / 8)
    assert M.confusion_matrix(pred, gt, 2).tolist() == [[3, 1], [1, 3]]
    assert M.mean_iou(pred, gt, 2) == pytest.approx((0.6 + 0.6) / 2)


def test_empty_mask_conventions():
    z = np.zeros((5, 5), int)
    one = z.copy()
    one[2, 2] = 1
    assert M.dice(z, z, 2)[1] == 1.0 and M.iou(z, z, 2)[1] == 1.0
    assert M.dice(one, z, 2)[1] == 0.0
    assert M.hd95(z, z, 2)[1] == 0.0
    assert np.isinf(M.hd95(one, z, 2)[1])
    assert M.boundary_f1(z, z, 2)[1] == 1.0 and M.boundary_f1(one, z, 2)[1] == 0.0


def _brute_hd95(a, b, spacing=(1.0, 1.0)):
    import cv2

    def surf(m):
        e = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        return np.argwhere((m > 0) & (e == 0)) * np.asarray(spacing)

    sa, sb = surf(a), surf(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


@pytest.mark.parametrize("seed", range(5))
def test_hd95_matches_brute_force(seed):
    import cv2

    rng = np.random.default_rng(seed)
    a = np.zeros((64, 80), np.uint8)
    b = np.zeros((64, 80), np.uint8)
    for m in (a, b):
        for _ in range(rng.integers(1, 4)):
            cv2.circle(m, (int(rng.integers(10, 70)), int(rng.integers(10, 54))), int(rng.integers(3, 12)), 1, -1)
    spacing = (0.7, 1.3)
    got = M.hd95(a, b, 2, spacing=spacing)[1]
    assert got == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-6)


def test_boundary_f1_tolerance():
    a = np.zeros((20, 20), int)
    a[5:15, 5:15] = 1
    b = np.roll(a, 1, axis=1)
    assert M.boundary_f1(a, b, 2, tolerance=1)[1] == 1.0
    assert M.boundary_f1(a, b, 2, tolerance=0)[1] < 1.0


def test_shape_mismatch_error():
    with pytest.raises(ValueError, match=r"same shape. Got \(2, 2\) and \(3, 3\)"):
        M.dice(np.zeros((2, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------- losses
import keras  # noqa: E402

from segcore import losses as L  # noqa: E402


def _tiny():
    y = np.array([[[0, 1], [1, 1]]])  # 1,2,2
    p = np.array([[[[0.8, 0.2], [0.4, 0.6]], [[0.3, 0.7], [0.1, 0.9]]]], np.float32)  # 1,2,2,2
    return y, p


def test_cross_entropy_hand_value():
    y, p = _tiny()
    expected = -(np.log(0.8) + np.log(0.6) + np.log(0.7) + np.log(0.9)) / 4
    assert float(L.CrossEntropy()(y, p)) == pytest.approx(expected, rel=1e-5)


def test_weighted_ce_hand_value_and_equal_weights():
    y, p = _tiny()
    w = [1.0, 3.0]
    num = 1 * -np.log(0.8) + 3 * (-np.log(0.6) - np.log(0.7) - np.log(0.9))
    expected = num / (1 + 3 * 3)
    assert float(L.WeightedCrossEntropy(w)(y, p)) == pytest.approx(expected, rel=1e-5)
    assert float(L.WeightedCrossEntropy([2.0, 2.0])(y, p)) == pytest.approx(float(L.CrossEntropy()(y, p)), rel=1e-5)


def test_dice_and_jaccard_hand_values():
    y, p = _tiny()
    # class0: I=0.8, |P|=0.8+0.4+0.3+0.1=1.6, |G|=1 ; class1: I=0.6+0.7+0.9=2.2, |P|=2.4, |G|=3
    d0 = (2 * 0.8 + 1) / (1.6 + 1 + 1)
    d1 = (2 * 2.2 + 1) / (2.4 + 3 + 1)
    assert float(L.DiceLoss(smooth=1.0)(y, p)) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    j0 = (0.8 + 1) / (1.6 + 1 - 0.8 + 1)
    j1 = (2.2 + 1) / (2.4 + 3 - 2.2 + 1)
    assert float(L.JaccardLoss(smooth=1.0)(y, p)) == pytest.approx(1 - (j0 + j1) / 2, rel=1e-5)
    assert float(L.DiceLoss(smooth=1.0, include_background=False)(y, p)) == pytest.approx(1 - d1, rel=1e-5)


def test_combined_and_uncertainty_losses():
    y, p = _tiny()
    ce, dl = L.CrossEntropy(), L.DiceLoss()
    comb = L.CombinedLoss([ce, dl], [0.5, 2.0])
    assert float(comb(y, p)) == pytest.approx(0.5 * float(ce(y, p)) + 2.0 * float(dl(y, p)), rel=1e-5)
    unc = L.UncertaintyWeightedLoss([ce, dl], initial_log_vars=[0.0, np.log(4.0)])
    expected = float(ce(y, p)) + float(dl(y, p)) / 4 + 0.5 * np.log(4.0)
    assert float(unc(y, p)) == pytest.approx(expected, rel=1e-5)
    assert len(unc.trainable_variables) == 1


def test_class_weights_from_masks():
    m = np.array([[0, 0, 0, 1]])
    assert L.class_weights_from_masks(m, 2, normalise=False) == pytest.approx([4 / 6, 2.0])
    inv = np.array([4 / 6, 2.0])
    assert L.class_weights_from_masks(m, 2, power=0.5) == pytest.approx(np.sqrt(inv) / np.sqrt(inv).mean())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        L.class_weights_from_masks(np.array([[0, 2]]), 2)


@pytest.mark.parametrize("loss", [L.CrossEntropy(), L.WeightedCrossEntropy([1.0, 2.0]), L.DiceLoss(smooth=0.5),
                                  L.JaccardLoss(), L.CombinedLoss([L.CrossEntropy(), L.DiceLoss()], [1.0, 0.3])])
def test_loss_serialisation_roundtrip(loss):
    y, p = _tiny()
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(back) is type(loss)
    assert float(back(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


def test_weighted_losses_help_rare_class():
    """A per-pixel classifier on a rare class (1.6% of pixels): plain CE trades the class away;
    weighted CE recovers its recall and a Dice term its Dice."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n, h, w = 16, 16, 16
    y = np.zeros((n, h, w), np.int32)
    y[:, 7:9, 7:9] = 1  # 1.6% of pixels
    x = rng.normal(0, 1, (n, h, w, 1)).astype(np.float32) + (y[..., None] * 2.0)

    def fit(loss):
        keras.utils.set_random_seed(0)
        inp = keras.Input((h, w, 1))
        out = keras.layers.Conv2D(2, 1, activation="softmax")(inp)
        m = keras.Model(inp, out)
        m.compile(keras.optimizers.Adam(0.05), loss=loss)
        m.fit(x, y, epochs=60, batch_size=16, verbose=0)
        pred = np.asarray(m(x)).argmax(-1)
        recall = float((pred[y == 1] == 1).mean())
        return M.dice(pred, y, 2)[1], recall

    ce_dice, ce_recall = fit(L.CrossEntropy())
    _, wce_recall = fit(L.WeightedCrossEntropy(L.class_weights_from_masks(y, 2)))
    dl_dice, _ = fit(L.CombinedLoss([L.CrossEntropy(), L.DiceLoss(include_background=False)]))
    print(f"CE dice {ce_dice:.3f} recall {ce_recall:.3f}; WCE recall {wce_recall:.3f}; CE+Dice dice {dl_dice:.3f}")
    assert ce_recall < 0.5
    assert wce_recall > ce_recall + 0.3
    assert dl_dice > ce_dice + 0.05
    del tf
