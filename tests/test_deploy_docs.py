"""The example in docs/deploy.md runs as written and makes a config HAProxy accepts."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess

import pytest

from .docs import code_blocks


def test_the_haproxy_example_is_a_valid_config(tmp_path) -> None:  # noqa: ANN001
    (block,) = code_blocks("deploy.md")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "docs/deploy.md", "exec"), {})  # noqa: S102 - our own documentation
    config = out.getvalue()
    assert "server gw2 10.0.0.12:8800 check" in config and "retry-on conn-failure empty-response 503" in config
    haproxy = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if haproxy is None:
        pytest.skip("haproxy not installed")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
