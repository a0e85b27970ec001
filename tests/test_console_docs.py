"""The example in docs/console.md works as written: an exported artifact uploaded to a cluster's gateway."""

from __future__ import annotations

import pytest

from .cluster_fixtures import SECRET, needs_redis, redis_server, start_worker, stop  # noqa: F401
from .docs import code_blocks
from .gateway_server import running_gateway

pytestmark = [pytest.mark.timeout(120), needs_redis]


def test_upload_example(redis_server, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    from ooblex.cluster.deploy import deployment
    from ooblex.gateway import Settings

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    (example,) = code_blocks("console.md")
    worker = start_worker(redis_server.url)
    try:
        with running_gateway(broker=redis_server.url, settings=Settings(secret=SECRET)) as gw:
            exec(compile(example.replace("127.0.0.1:8800", f"127.0.0.1:{gw.port}"), "docs/console.md", "exec"),
                 {"__name__": "docs"})
        assert capsys.readouterr().out.split() == ["201", "sepia", "1"]
        dep = deployment("sepia", redis_server.url).wait_ready(30)
        assert dep.manifest["license"] == "MIT" and dep.manifest["deployed_by"]["uploaded"]["via"] == "console"
    finally:
        stop(worker)
