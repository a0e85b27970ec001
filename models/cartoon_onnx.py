"""``cartoon_onnx``: the trained cartoon network, exported to ONNX, run by onnxruntime (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import ooblex as ob

from . import licences, require

require("onnxruntime")  # a missing onnxruntime makes the demo loader skip this thread; it is imported at setup

ONNX = Path(__file__).parent / "weights" / "cartoon.onnx"

cartoon_onnx = ob.onnx.session(
    ONNX, name="cartoon_onnx", licence=licences.OOBLEX_TRAINED,
    description="Cartoon style by the same CNN as 'cartoon_torch', exported to ONNX and run by onnxruntime "
                "(CUDA provider when available).")
