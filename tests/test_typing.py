"""``@tensor_thread`` is typed: mypy sees what a decorated function accepts and returns, and refuses a
batched thread that does not take a list. Checked by running mypy on a small typed example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mypy")

# ``# E: text`` marks a line mypy must flag with a message containing ``text``; ``# R: text`` a line whose
# ``reveal_type`` must contain ``text``. No other line may be flagged.
EXAMPLE = '''
from __future__ import annotations

import numpy as np

import ooblex as ob

IMG = np.zeros((4, 4, 3), np.uint8)


@ob.tensor_thread
def blur(frame: np.ndarray, k: float = 1.0) -> np.ndarray:
    return frame


@ob.tensor_thread(name="count", params={"k": {"min": 0}})
def count(frame: np.ndarray, k: int = 3) -> dict[str, int]:
    return {"k": k}


@ob.tensor_thread
async def later(frame: np.ndarray) -> dict[str, float]:
    return {}


@ob.tensor_thread(batch_size=8, max_wait_ms=5)
def batched(frames: list[np.ndarray], gain: float = 1.0) -> list[np.ndarray]:
    return frames


class Styler:
    def __call__(self, frame: np.ndarray, strength: float = 0.5) -> np.ndarray:
        return frame


styler = ob.tensor_thread(Styler)
reveal_type(blur)  # R: TensorThread[[frame: numpy.ndarray
reveal_type(blur(IMG, k=0.5))  # R: numpy.ndarray
reveal_type(count(IMG)["k"])  # R: "int"
reveal_type(later(IMG))  # R: "dict[str, float]"
reveal_type(batched([IMG]))  # R: "list[numpy.ndarray
reveal_type(styler(IMG, strength=1.0))  # R: numpy.ndarray
blur(IMG, k="0.5")  # E: Argument "k" to "__call__" of "TensorThread" has incompatible type "str"
count(IMG, q=1)  # E: Unexpected keyword argument "q"
wrong: str = later(IMG)  # E: Incompatible types in assignment
styler(IMG, strength="max")  # E: incompatible type "str"; expected "float"
ob.tensor_thread(color="yuv")  # E: No overload variant of "tensor_thread" matches


@ob.tensor_thread(batch_size=4)  # E: "BatchedThreadDecorator"
def per_frame(frame: np.ndarray) -> np.ndarray:
    return frame


@ob.tensor_thread(batch_size=4)  # E: Value of type variable "Outputs"
def returns_one(frames: list[np.ndarray]) -> np.ndarray:
    return frames[0]
'''


def test_mypy_sees_what_a_tensor_thread_accepts_and_returns(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(EXAMPLE)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(tmp_path / "cache"), str(example)],
        cwd=ROOT, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300)
    found: dict[int, list[str]] = {}
    for line in run.stdout.splitlines():
        m = re.match(r".*example\.py:(\d+): (error|note): (.*)", line)
        if m and (m[2] == "error" or m[3].startswith("Revealed type")):
            found.setdefault(int(m[1]), []).append(m[3])
    expected = {n: (kind, text.strip()) for n, src in enumerate(EXAMPLE.splitlines(), 1)
                for kind, text in re.findall(r"# ([ER]): (.*)$", src)}
    assert expected and set(found) == set(expected), run.stdout
    for n, (_, text) in expected.items():
        assert any(text in msg for msg in found[n]), (n, text, found[n])


def test_the_decorator_module_itself_type_checks(tmp_path: Path) -> None:
    """The overloads agree with the implementation (mypy checks that, and the protocols' variance)."""
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"),
         "ooblex/thread.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
