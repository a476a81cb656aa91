"""Compiled runtimes agree with Keras on the sample test set, are cached by model hash and fall back to Keras."""

import sys

import numpy as np
import pytest

from segcore.runtime import CompiledPredictor, RuntimeSpec, compiled_predictor, model_file_hash, runtime_cache_dir

MODEL = "sample_data/models/default"


@pytest.fixture(scope="module")
def keras_and_test_set(root):
    from segcore.data import list_pairs, load_mask
    from segcore.infer import predict_batch
    from segcore.io import load_scan
    from segcore.models import load_model

    model, config = load_model(root / MODEL)
    imgs, masks = list_pairs(root / "sample_data/phantom/test")
    images = [load_scan(p).slice() for p in imgs]
    gts = [load_mask(p) for p in masks]
    ref = [p.argmax(-1) for p in predict_batch(model, images, config)]
    return model, config, images, gts, ref


def _mean_fg_dice(labels, gts, k):
    from segcore.metrics import dice

    return float(np.mean([dice(m, g, k)[1:].mean() for m, g in zip(labels, gts)]))


@pytest.mark.slow
@pytest.mark.parametrize("label", ["openvino-f32", "onnxruntime-f32", "openvino-bf16"])
def test_runtime_argmax_matches_keras_on_the_sample_test_set(keras_and_test_set, root, label):
    """The bar a runtime must pass to be offered: >= 99.9 % of argmax pixels and mean Dice within 0.001."""
    from segcore.infer import predict_batch

    model, config, images, gts, ref = keras_and_test_set
    pytest.importorskip(label.split("-")[0])
    pred = compiled_predictor(model, root / MODEL, RuntimeSpec.parse(label)).load()
    assert pred.active is not None and pred.active.startswith(label.split("-")[0]), pred.fallback_reason
    labels = [p.argmax(-1) for p in predict_batch(pred, images, config)]
    agreement = float(np.mean([(a == b).mean() for a, b in zip(labels, ref)]))
    k = config.num_classes
    assert agreement >= 0.999, f"{pred.active}: {agreement:.5f} of pixels agree with Keras"
    assert abs(_mean_fg_dice(labels, gts, k) - _mean_fg_dice(ref, gts, k)) <= 0.001
    if pred.active.endswith("f32"):
        assert agreement == 1.0  # f32 runtimes give Keras' masks exactly on this set


def test_segment_works_unchanged_with_a_compiled_predictor(keras_and_test_set, root):
    from segcore.io import load_scan
    from segcore.pipeline import segment

    pytest.importorskip("openvino")
    model, config, *_ = keras_and_test_set
    scan = load_scan(root / "sample_data/demo/phantom_ct_multiframe.dcm")
    pred = compiled_predictor(model, root / MODEL, "openvino")
    a = segment(scan, model, config, slice_index=1)
    b = segment(scan, pred, config, slice_index=1)
    assert pred.active == "openvino-f32"
    np.testing.assert_allclose(b.probs, a.probs, atol=1e-4)
    np.testing.assert_array_equal(b.refined, a.refined)


def test_missing_runtime_falls_back_to_keras_with_a_warning(keras_and_test_set, root, monkeypatch):
    model = keras_and_test_set[0]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    pred = CompiledPredictor(model, root / MODEL, RuntimeSpec("onnxruntime"))
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    with pytest.warns(UserWarning, match="onnxruntime-f32 is not used.*'onnxruntime' package is not installed"):
        out = pred(x)
    assert pred.active == "keras" and "not installed" in pred.fallback_reason
    np.testing.assert_allclose(out, np.asarray(model(x, training=False)), atol=1e-6)
    with pytest.raises(ValueError, match="only runs inference"):
        pred(x, training=True)


def test_compiled_model_is_cached_beside_the_model_keyed_by_its_file_hash(tmp_path, monkeypatch):
    import keras

    from segcore.models import ModelConfig, build_unet, save_model

    pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    net = build_unet(input_shape=(None, None, 1), num_classes=3, base_filters=4, depth=2)
    folder = save_model(net, ModelConfig(input_size=(32, 32)), tmp_path / "m")
    digest = model_file_hash(folder)
    assert runtime_cache_dir(folder) == folder / ".runtime" / digest[:16]
    x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
    pred = CompiledPredictor(net, folder, RuntimeSpec("onnxruntime"))
    out = pred(x)
    assert pred.active == "onnxruntime-f32", pred.fallback_reason
    assert (folder / ".runtime" / digest[:16] / "onnxruntime" / "model.onnx").is_file()
    np.testing.assert_allclose(out, np.asarray(net(x, training=False)), atol=1e-5)
    # a new model file (new weights) gets its own compiled copy: never the stale one
    net.set_weights([w + 0.01 for w in net.get_weights()])
    save_model(net, ModelConfig(input_size=(32, 32)), folder)
    new = CompiledPredictor(net, folder, RuntimeSpec("onnxruntime"))
    np.testing.assert_allclose(new(x), np.asarray(net(x, training=False)), atol=1e-5)
    assert model_file_hash(folder) != digest
    assert (folder / ".runtime" / model_file_hash(folder)[:16] / "onnxruntime" / "model.onnx").is_file()


def test_runtime_spec_validation():
    assert RuntimeSpec.parse("auto").label == "openvino-f32"
    assert RuntimeSpec.parse("onnxruntime").label == "onnxruntime-f32"
    with pytest.raises(ValueError, match="supports precision \\['f32'\\]. Got 'bf16'"):
        RuntimeSpec.parse("onnxruntime-bf16")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        RuntimeSpec("openvino", threads=0)
