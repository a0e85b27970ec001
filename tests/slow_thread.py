"""A tensor thread that takes ``OOBLEX_TEST_SLOW_S`` seconds per frame (without using the CPU) and logs
each computation (the frame's brightness / 10, one line per call) to ``OOBLEX_TEST_SLOW_LOG``:
workers load it with ``--thread tests/slow_thread.py:slow``."""

import os
import time

import numpy as np

import ooblex as ob


@ob.tensor_thread(name="slow")
def slow(frame: np.ndarray) -> np.ndarray:
    time.sleep(float(os.environ.get("OOBLEX_TEST_SLOW_S", "4")))
    with open(os.environ["OOBLEX_TEST_SLOW_LOG"], "a") as log:
        log.write(f"{round(float(frame.mean()) / 10)}\n")
    return frame
