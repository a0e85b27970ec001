"""``sketch``: pencil-sketch style by a small Keras CNN, served with ``ob.tensorflow.model``."""

from __future__ import annotations

import ooblex as ob

from . import licences, require

require("tensorflow", "keras")  # a missing TensorFlow makes the demo loader skip this thread


def load_sketch_net() -> object:
    """The trained network (importing TensorFlow), called in the thread's ``setup()``."""
    from .sketch_net import load_sketch_net

    return load_sketch_net()


sketch = ob.tensorflow.model(
    load_sketch_net, name="sketch", licence=licences.OOBLEX_TRAINED,
    description="Pencil sketch by a 4k-parameter Keras CNN, distilled from an OpenCV colour-dodge filter "
                "by models/train_sketch.py.")
