"""``build_sketch_net``: a ~3k-parameter Keras CNN that imitates ``styles.sketch_filter``.

Half-resolution dilated convolutions see the wide blur the pencil effect needs; a full-resolution
output layer keeps strokes sharp. Input: float NHWC RGB 0..1 (any size); output: NHWC grey 0..1.
Only the weights are stored (``weights/sketch.weights.h5``); the architecture lives here.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

WEIGHTS = Path(__file__).parent / "weights" / "sketch.weights.h5"


class ResizeLike(keras.layers.Layer):
    """Bilinear resize of the first input to the height and width of the second."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, ref = inputs
        return tf.image.resize(x, tf.shape(ref)[1:3], method="bilinear")


def build_sketch_net(width: int = 12) -> keras.Model:
    x = keras.Input((None, None, 3))
    h = keras.layers.AveragePooling2D(2, padding="same")(x)
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h)
    for rate in (2, 4, 8):
        h = keras.layers.Conv2D(width, 3, padding="same", dilation_rate=rate, activation="relu")(h)
    h = ResizeLike()([h, x])
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(keras.layers.Concatenate()([x, h]))
    return keras.Model(x, out, name="sketch_net")


def load_sketch_net() -> keras.Model:
    """The committed, trained network."""
    net = build_sketch_net()
    net.load_weights(WEIGHTS)
    return net
