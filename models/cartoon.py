"""``cartoon_torch`` (PyTorch) and ``cartoon_onnx`` (the same trained network exported to ONNX).

Both are built with the framework adapters (``ob.torch.module`` / ``ob.onnx.session``), so
they double as runnable examples of them. The network imitates ``styles.cartoon_filter``;
train it again with ``python models/train_cartoon.py``.
"""

from __future__ import annotations

import ooblex as ob

from . import licences, require

require("torch")  # a missing torch makes the demo loader skip this thread; it is imported at setup


def load_cartoon_net() -> object:
    """The trained network (importing torch), called in the thread's ``setup()``."""
    from .cartoon_net import load_cartoon_net

    return load_cartoon_net()


cartoon_torch = ob.torch.module(
    load_cartoon_net, name="cartoon_torch", licence=licences.OOBLEX_TRAINED,
    description="Cartoon style (flat colours, dark outlines) by a 19k-parameter CNN in PyTorch, "
                "distilled from an OpenCV filter by models/train_cartoon.py.")
