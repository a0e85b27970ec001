"""The examples in docs/gateway.md work as written, against a live gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np

from ooblex import jpeg
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS

from .docs import code_blocks
from .gateway_server import running_gateway


def blocks(kind: str) -> list[str]:
    return code_blocks("gateway.md", kind)


def test_python_examples(capsys) -> None:
    app_example, ws_example = blocks("python")[:2]
    namespace: dict = {"__name__": "docs"}
    exec(compile(app_example, "docs/gateway.md", "exec"), namespace)
    assert "blur" in namespace["app"].state.gateway.engine.threads
    with running_gateway(threads=BUILTIN_DEMO_THREADS) as gw:
        code = ws_example.replace("127.0.0.1:8800", f"127.0.0.1:{gw.port}")
        exec(compile(code, "docs/gateway.md", "exec"), namespace)
        picture = jpeg.encode(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
        asyncio.run(namespace["main"]([picture] * 3))
    out = capsys.readouterr().out.splitlines()
    assert out == ["0 None True", "1 None True", "2 None True", "{'params': {'low': 80, 'high': 140}}"]


def test_curl_examples(tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(jpeg.encode(np.full((120, 160, 3), 60, np.uint8)))
    script = next(b for b in blocks("bash") if "curl" in b)
    with running_gateway(threads=BUILTIN_DEMO_THREADS) as gw:
        script = script.replace("127.0.0.1:8800", f"127.0.0.1:{gw.port}")
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert abs(jpeg.decode((tmp_path / "out.jpg").read_bytes()).mean() - 127) < 4  # invert at amount 0.5
    result = json.loads(done.stdout[: done.stdout.index("}}") + 2])
    assert abs(result["result"]["brightness"] - 60) < 3  # JPEG round trip
    assert done.stdout.rstrip().endswith("]")  # the streams listing


def test_security_example(capsys) -> None:
    (example,) = code_blocks("security.md", "python")
    exec(compile(example, "docs/security.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.strip() == "publish some-stream-id"
