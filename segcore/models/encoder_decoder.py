"""Encoder-decoder on a Keras Applications backbone, with skip connections."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

__all__ = ["build_encoder_decoder", "BACKBONES"]

# backbone -> (constructor name, skip layers shallow->deep, bottleneck layer)
BACKBONES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "vgg16": ("VGG16", ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3"), "block5_conv3"),
    "resnet50": (
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        "conv5_block3_out",
    ),
    "efficientnetb0": (
        "EfficientNetB0",
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation"),
        "top_activation",
    ),
    "mobilenetv2": (
        "MobileNetV2",
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"),
        "out_relu",
    ),
}


def build_encoder_decoder(
    input_shape: tuple[int, int, int] = (256, 256, 1),
    num_classes: int = 3,
    backbone: str = "resnet50",
    *,
    weights: str | Path | None = None,
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16),
    freeze_encoder: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build an encoder-decoder with a Keras Applications encoder.

    Parameters
    ----------
    input_shape : tuple
        ``H,W,C`` with ``C`` 1 (grayscale, replicated to 3 channels) or 3.
        ``H`` and ``W`` must be multiples of 32.
    backbone : str
        One of ``BACKBONES``: "vgg16", "resnet50", "efficientnetb0", "mobilenetv2".
    weights : str or Path, optional
        None (random init) or a local ``.h5``/``.weights.h5`` file with the
        backbone's weights. Nothing is downloaded: "imagenet" is refused.
    decoder_filters : tuple of int
        Filters of each decoder stage, deep to shallow.
    freeze_encoder : bool
        Make the backbone non-trainable (fine-tune the decoder only).
    """
    key = backbone.lower()
    if key not in BACKBONES:
        raise ValueError(f"Unknown backbone '{backbone}'. Valid backbones: {sorted(BACKBONES)}.")
    if isinstance(weights, str) and weights.lower() == "imagenet":
        raise ValueError(
            "weights='imagenet' would download weights, and segcore never downloads at run time. "
            "Download the backbone's .h5 file once and pass its local path, or use weights=None."
        )
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"Backbone weights file not found: '{weights}'. Expected a local .h5/.weights.h5 file.")
    h, w, c = input_shape
    if c not in (1, 3):
        raise ValueError(f"input_shape channels must be 1 or 3. Got {c}.")
    if h is None or w is None or h % 32 or w % 32:
        raise ValueError(f"input_shape height and width must be multiples of 32. Got {input_shape}.")
    ctor_name, skip_names, bottleneck = BACKBONES[key]
    ctor = getattr(keras.applications, ctor_name)
    base = ctor(include_top=False, weights=None, input_shape=(h, w, 3))
    if weights is not None:
        base.load_weights(str(weights))
    base.trainable = not freeze_encoder
    encoder = keras.Model(
        base.input, [base.get_layer(n).output for n in skip_names] + [base.get_layer(bottleneck).output],
        name=f"{key}_encoder",
    )

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if c == 1:  # channel adaptation: replicate grayscale into the 3 channels the backbone expects
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    *skips, x = encoder(x)
    skips = list(reversed(skips))
    for i, f in enumerate(decoder_filters):
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{i}_up")(x)
        if i < len(skips) and skips[i].shape[1] == x.shape[1]:
            x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        for j in (1, 2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"dec{i}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"dec{i}_bn{j}")(x)
            x = layers.Activation("relu", name=f"dec{i}_relu{j}")(x)
        if x.shape[1] == h:
            break
    if x.shape[1] != h:
        x = layers.UpSampling2D(h // x.shape[1], interpolation="bilinear", name="final_up")(x)
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", name="head", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name or f"{key}_encoder_decoder")
