import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from segcore.losses import CombinedLoss, CrossEntropy, DiceLoss, UncertaintyWeightedLoss
from segcore.models import ModelConfig, build_encoder_decoder, build_unet, get_model, load_model, save_model


def test_unet_structure_and_shapes():
    m = build_unet((64, 64, 1), 3, base_filters=8, depth=3, dropout=0.2)
    assert m.output_shape == (None, 64, 64, 3)
    names = [layer.name for layer in m.layers]
    assert sum(n.endswith("_pool") for n in names) == 3
    assert sum(n.endswith("_up") for n in names) == 3
    assert m.get_layer("enc0_conv1").filters == 8 and m.get_layer("bottleneck_conv1").filters == 64
    p = np.asarray(m(np.zeros((2, 64, 64, 1), np.float32)))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    wide = build_unet((64, 64, 1), 3, base_filters=16, depth=4)
    assert wide.count_params() > m.count_params()


def test_unet_bad_args():
    with pytest.raises(ValueError, match=r"num_classes must be at least 2.*Got 1"):
        build_unet(num_classes=1)
    with pytest.raises(ValueError, match=r"depth must be in \[1, 6\]. Got 9"):
        build_unet(depth=9)


def test_registry():
    m = get_model("unet", input_shape=(32, 32, 1), num_classes=2, base_filters=4, depth=2)
    assert m.output_shape[-1] == 2
    with pytest.raises(ValueError, match=r"Unknown model 'segformer'. Valid names: \['encoder_decoder'"):
        get_model("segformer")


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "efficientnetb0"])
def test_encoder_decoder_backbones_grayscale(backbone):
    m = build_encoder_decoder((64, 64, 1), 3, backbone, decoder_filters=(32, 16, 16, 8, 8))
    p = np.asarray(m(np.zeros((1, 64, 64, 1), np.float32)))
    assert p.shape == (1, 64, 64, 3)
    enc = m.get_layer(f"{backbone}_encoder")
    assert len(enc.outputs) == 5


def test_encoder_decoder_weights_are_local_only(tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        build_encoder_decoder((64, 64, 1), 2, "vgg16", weights="imagenet")
    with pytest.raises(ValueError, match="weights file not found"):
        build_encoder_decoder((64, 64, 1), 2, "vgg16", weights=str(tmp_path / "none.h5"))
    with pytest.raises(ValueError, match=r"Unknown backbone 'vit'"):
        build_encoder_decoder(backbone="vit")
    # a local weights file is loaded into the backbone
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    base.save_weights(tmp_path / "mnv2.weights.h5")
    m = build_encoder_decoder((64, 64, 1), 2, "mobilenetv2", weights=tmp_path / "mnv2.weights.h5")
    w0 = m.get_layer("mobilenetv2_encoder").get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(w0, base.get_layer("Conv1").get_weights()[0])


def test_save_load_roundtrip_with_config(tmp_path):
    m = build_unet((None, None, 1), 3, base_filters=4, depth=2)
    m.compile(loss=CombinedLoss([CrossEntropy(), DiceLoss()], [1.0, 0.5]))
    cfg = ModelConfig(input_size=(32, 32), version="v7", metrics={"x": 1})
    save_model(m, cfg, tmp_path / "m")
    back, cfg2 = load_model(tmp_path / "m", compile=True)
    x = np.random.default_rng(0).random((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(m(x)), atol=1e-6)
    assert cfg2.version == "v7" and cfg2.class_names == ("background", "organ", "lesion")
    assert isinstance(back.loss, CombinedLoss)
    # overwrite is atomic: the old folder is replaced, not merged
    save_model(m, cfg, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "config.json", "model.keras"]
    with pytest.raises(FileNotFoundError, match="expected model.keras and config.json"):
        load_model(tmp_path / "nothing")


def test_uncertainty_loss_serialises():
    loss = UncertaintyWeightedLoss([CrossEntropy(), DiceLoss()], initial_log_vars=[0.1, -0.2])
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    np.testing.assert_allclose(np.asarray(back.log_vars), [0.1, -0.2], atol=1e-6)


def test_config_mismatch():
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 3"):
        ModelConfig(num_classes=3, class_names=("a", "b"))


# ---------------------------------------------------------------- data + training

def _toy(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.05, (n, size, size, 1)).astype(np.float32)
    y = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, size - 12, 2)
        y[i, r:r + 8, c:c + 8] = 1
        x[i, r:r + 8, c:c + 8] += 0.4
    return np.clip(x, 0, 1), y


def test_augment_keeps_image_and_mask_aligned():
    import tensorflow as tf

    from segcore.data import augment

    x, y = _toy(1, 64)
    tf.random.set_seed(3)
    for _ in range(5):
        a, b = augment(x[0], y[0], photometric=False, elastic=True)
        a, b = a.numpy()[..., 0], b.numpy()
        assert set(np.unique(b)) <= {0, 1}
        # the bright square moves with the mask
        assert a[b == 1].mean() > a[b == 0].mean() + 0.25


def test_dataset_from_files_matches_inference_preprocessing(root):
    from segcore.data import list_pairs, load_pair, make_dataset
    from segcore.infer import preprocess
    from segcore.io import load_scan

    cfg = ModelConfig(input_size=(128, 128))
    imgs, masks = list_pairs(root / "sample_data" / "phantom" / "val")
    ds = make_dataset(imgs[:3], masks[:3], cfg, batch_size=3)
    x, y = next(iter(ds))
    assert x.shape == (3, 128, 128, 1) and y.shape == (3, 128, 128)
    np.testing.assert_allclose(x.numpy()[0], preprocess(load_scan(imgs[0]).pixels, cfg), atol=1e-6)
    np.testing.assert_array_equal(y.numpy()[1], load_pair(imgs[1], masks[1], cfg)[1])


@pytest.mark.parametrize("custom_loop", [False, True])
def test_training_learns_toy_task(tmp_path, custom_loop):
    from segcore.data import make_dataset
    from segcore.train import train

    keras.utils.set_random_seed(0)
    x, y = _toy(16)
    cfg = ModelConfig(num_classes=2, class_names=("bg", "fg"), input_size=(32, 32))
    ds = make_dataset(x, y, cfg, batch_size=4, shuffle=True)
    m = build_unet((32, 32, 1), 2, base_filters=8, depth=2, batch_norm=False)
    hist = train(m, ds, ds, num_classes=2, epochs=40, learning_rate=5e-3, out_dir=tmp_path, custom_loop=custom_loop,
                 patience=40)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert max(h["val_dice"] for h in hist) > 0.8
    assert (tmp_path / "best.keras").is_file()
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log) == len(hist)


def test_learned_loss_weights_train():
    from segcore.data import make_dataset
    from segcore.train import train

    keras.utils.set_random_seed(0)
    x, y = _toy(8)
    cfg = ModelConfig(num_classes=2, class_names=("bg", "fg"), input_size=(32, 32))
    ds = make_dataset(x, y, cfg, batch_size=8)
    loss = UncertaintyWeightedLoss([CrossEntropy(), DiceLoss()])
    m = build_unet((32, 32, 1), 2, base_filters=4, depth=2, batch_norm=False)
    train(m, ds, None, num_classes=2, epochs=3, loss=loss, learning_rate=1e-2)
    assert np.abs(np.asarray(loss.log_vars)).sum() > 0  # the weights moved


MIRRORED = r"""
import sys, json
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras, numpy as np
from segcore.train import make_strategy, train
from segcore.models import build_unet, ModelConfig
from segcore.data import make_dataset
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(0.3, 0.05, (16, 32, 32, 1)).astype("float32"); y = np.zeros((16, 32, 32), "uint8")
x[:, 8:20, 8:20] += 0.4; y[:, 8:20, 8:20] = 1
cfg = ModelConfig(num_classes=2, class_names=("bg", "fg"), input_size=(32, 32))
out = {}
for custom in (False, True):
    s = make_strategy(2)
    with s.scope():
        m = build_unet((32, 32, 1), 2, base_filters=8, depth=2, batch_norm=False)
    ds = make_dataset(np.clip(x, 0, 1), y, cfg, batch_size=4)
    h = train(m, ds, ds, num_classes=2, epochs=40, learning_rate=5e-3, custom_loop=custom, strategy=s, patience=40)
    out[str(custom)] = {"replicas": s.num_replicas_in_sync, "first": h[0]["loss"], "last": h[-1]["loss"],
                        "val_dice": max(r["val_dice"] for r in h)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus(root):
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for mode in ("False", "True"):
        assert out[mode]["replicas"] == 2
        assert out[mode]["last"] < out[mode]["first"]
        assert out[mode]["val_dice"] > 0.8


def test_fine_tune_returns_a_copy_and_cancels():
    from segcore.train import FineTuneCancelled, fine_tune

    keras.utils.set_random_seed(0)
    x, y = _toy(6)
    cfg = ModelConfig(num_classes=2, class_names=("bg", "fg"), input_size=(32, 32),
                      normalisation={"type": "window", "center": 0.5, "width": 1.0})
    m = build_unet((None, None, 1), 2, base_filters=4, depth=2, batch_norm=False)
    before = [w.copy() for w in m.get_weights()]
    seen = []
    new, res = fine_tune(m, list(x[..., 0]), list(y), config=cfg, epochs=2, replay_images=x, replay_masks=y,
                         progress=seen.append, eval_images=list(x[..., 0]), eval_masks=list(y), learning_rate=1e-2)
    assert new is not m and len(seen) == 2 and "eval" in res
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)  # the original is untouched
    assert any(not np.array_equal(a, b) for a, b in zip(before, new.get_weights()))
    with pytest.raises(FineTuneCancelled):
        fine_tune(m, list(x[..., 0]), list(y), config=cfg, epochs=3, progress=lambda r: False)
    with pytest.raises(ValueError, match="Mask shape"):
        fine_tune(m, [x[0, ..., 0]], [y[0, :10]], config=cfg)
    with pytest.raises(ValueError, match="model has 2 classes"):
        fine_tune(m, [x[0, ..., 0]], [y[0] * 3], config=cfg)


def test_mc_dropout_uncertainty_on_a_copy():
    from segcore.infer import mc_dropout, predict_proba

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(num_classes=2, class_names=("bg", "fg"), input_size=(32, 32))
    m = build_unet((None, None, 1), 2, base_filters=4, depth=2, dropout=0.5)
    img = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    before = predict_proba(m, img, cfg)
    mean, unc = mc_dropout(m, img, cfg, samples=6)
    assert mean.shape == (40, 48, 2) and unc.shape == (40, 48)
    assert float(unc.max()) > 0  # dropout makes the samples differ
    np.testing.assert_allclose(predict_proba(m, img, cfg), before)  # deterministic model untouched
    with pytest.raises(ValueError, match="has no Dropout layer"):
        mc_dropout(build_unet((None, None, 1), 2, base_filters=4, depth=2), img, cfg)
