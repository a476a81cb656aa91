"""U-Net (Ronneberger et al. 2015) as a Keras 3 functional model."""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["build_unet"]


def _conv_block(x, filters: int, *, batch_norm: bool, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, kernel_initializer="he_normal",
                          name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    input_shape: tuple[int | None, int | None, int] = (None, None, 1),
    num_classes: int = 3,
    base_filters: int = 64,
    depth: int = 4,
    *,
    batch_norm: bool = True,
    dropout: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """Build a U-Net.

    Per encoder level: two 3x3 convs with ReLU, then 2x2 max-pool. A bottleneck
    of two convs. Per decoder level: 2x2 transpose conv, concatenation with the
    matching encoder features, two 3x3 convs. A 1x1 conv head with softmax.

    Parameters
    ----------
    input_shape : tuple
        ``H,W,C``; ``H`` and ``W`` may be None (any multiple of ``2**depth``).
    num_classes : int
        Output channels (softmax over classes, background included).
    base_filters : int
        Filters at the first level; doubled per level ("wide" variants raise it).
    depth : int
        Number of pooling levels ("deep" variants raise it).
    batch_norm : bool
        Batch normalisation after each conv.
    dropout : float
        Dropout rate before each decoder level and at the bottleneck; kept active
        at inference by :func:`segcore.infer.mc_dropout` for uncertainty.

    Returns
    -------
    keras.Model
        Maps ``B,H,W,C`` images to ``B,H,W,num_classes`` probabilities.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background included). Got {num_classes}.")
    if depth < 1 or depth > 6:
        raise ValueError(f"depth must be in [1, 6]. Got {depth}.")
    if base_filters < 1:
        raise ValueError(f"base_filters must be positive. Got {base_filters}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Got {dropout}.")

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    filters = [base_filters * 2**i for i in range(depth)]
    for i, f in enumerate(filters):
        x = _conv_block(x, f, batch_norm=batch_norm, name=f"enc{i}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, batch_norm=batch_norm, name="bottleneck")
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for i, f in reversed(list(enumerate(filters))):
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", kernel_initializer="he_normal",
                                   name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        if dropout:
            x = layers.Dropout(dropout, name=f"dec{i}_dropout")(x)
        x = _conv_block(x, f, batch_norm=batch_norm, name=f"dec{i}")
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", name="head", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
