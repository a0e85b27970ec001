"""A deployed thread as a live-widget lane: the kernel sends each frame through the cluster's gateway.

``ob.live(deployment)``, ``ob.live("name")`` and ``ob.live([my_fn, deployment])`` turn a ``Deployment``
into a tensor thread whose call is a round trip over the gateway's WebSocket route (``/ws/{thread}``,
with a ``publish`` token the kernel mints for that thread). The kernel, not the browser, talks to the
gateway, so it works wherever the kernel reaches the gateway (a remote hub's browser may not), and the
lane machinery (same frames in compare mode, per-lane fps and latency) stays the same. The lane's
latency is the whole trip (JPEG encode, network, the cluster's queue and worker, decode); each frame's
result says how much of it the gateway measured (``gateway_ms``) and what the socket took (``trip_ms``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import urlencode

import numpy as np
from websockets.exceptions import ConnectionClosed

from .. import jpeg
from ..cluster.deploy import Deployment, deployment
from ..cluster.registry import remote_thread
from ..errors import Unavailable
from ..thread import TensorThread, as_thread

#: Seconds to wait for the gateway's answer to one frame before the lane reports it and reconnects.
ANSWER_TIMEOUT_S = 5.0
#: Seconds to wait for the JPEG that follows a result (the gateway sends the two back to back).
IMAGE_TIMEOUT_S = 1.0
#: JPEG quality of frames sent to the gateway.
QUALITY = 85
#: Token lifetime; the socket is reopened with a fresh token when it closes.
TOKEN_TTL = "1h"


class GatewayCall:
    """Calls a deployment through its gateway, one frame in flight on one WebSocket (reopened on failure)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.label = f"{dep.name}@{dep.version}"
        self._ws: Any = None
        self._params: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, frame: np.ndarray, **params: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
        with self._lock:
            if params != self._params:  # new control values: a socket opened with them (the lane validated them)
                self.close()
                self._params = params
            data = jpeg.encode(np.ascontiguousarray(frame), QUALITY)
            started = time.perf_counter()
            try:
                info, body = self._trip(data)
            except ConnectionClosed:  # the gateway closed an idle socket (the widget was stopped): once more
                started = time.perf_counter()
                info, body = self._trip(data)
        trip = (time.perf_counter() - started) * 1e3
        if info.get("error"):
            raise RuntimeError(f"{self.label} on the cluster: {info['error']}")
        stages = info.get("latency_ms") or {}
        result = {"trip_ms": round(trip, 1), "gateway_ms": stages.get("total")}
        if info.get("result") is not None:
            result["cluster"] = info["result"]
        return (jpeg.decode(body) if body else None), result

    def _trip(self, data: bytes) -> tuple[dict[str, Any], bytes | None]:
        fresh = self._ws is None
        ws = self._ws or self._connect()
        try:
            ws.send(data)
            return self._answer(ws)
        except ConnectionClosed:
            self.close()
            if fresh:
                raise Unavailable(f"the gateway closed the socket of {self.label} at once") from None
            raise
        except Exception:
            self.close()
            raise

    def _connect(self) -> Any:
        from websockets.sync.client import connect

        url = self.dep.urls.get("ws")
        if not url:
            raise Unavailable(f"no gateway of this cluster is up to serve {self.dep.name!r} (ob.cluster() starts one)")
        auth = {"Authorization": f"Bearer {self.dep.publish_token(TOKEN_TTL)}"}
        query = urlencode({"output": "jpeg", **{k: v for k, v in self._params.items() if v is not None}})
        ws = connect(f"{url}?{query}", additional_headers=auth, open_timeout=ANSWER_TIMEOUT_S, max_size=None)
        hello = json.loads(ws.recv(timeout=ANSWER_TIMEOUT_S))
        if "error" in hello:
            ws.close()
            raise Unavailable(f"the gateway refused {self.label}: {hello['error']}")
        self._ws = ws
        return ws

    @staticmethod
    def _answer(ws: Any) -> tuple[dict[str, Any], bytes | None]:
        """The result JSON of the frame just sent and its JPEG (none for a skipped frame)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                msg = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"the gateway did not answer within {ANSWER_TIMEOUT_S:g} s") from None
            if isinstance(msg, str):
                info = json.loads(msg)
                if "seq" in info:
                    break
                if "error" in info:  # a refused frame: the stream goes on
                    return info, None
        try:
            body = ws.recv(timeout=IMAGE_TIMEOUT_S)
        except TimeoutError:
            return info, None
        return info, body if isinstance(body, bytes) else None

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()


def as_lane_thread(item: Any) -> TensorThread:
    """A tensor thread for one lane: a ``Deployment`` or ``"name"`` / ``"name@version"`` (a deployment on the
    current cluster) goes through the gateway; anything else is a local thread or function."""
    dep = _deployment(item)
    if dep is None:
        return as_thread(item)
    return DeployedThread(GatewayCall(dep))


class DeployedThread(TensorThread):
    """A lane's thread that is a deployment: its socket closes with the lane (engine teardown)."""

    def __init__(self, call: GatewayCall) -> None:
        super().__init__(call, name=call.label, description=f"{call.label} on the cluster, through its gateway")
        meta = (call.dep.manifest or {}).get("meta")
        if meta:  # the deployed version's parameters: the lane gets their controls, values go in the socket's query
            self.params = remote_thread(meta).params
        self.call = call
        self.deployment = call.dep

    def teardown(self) -> None:
        self.call.close()


def _deployment(item: Any) -> Deployment | None:
    if isinstance(item, Deployment):
        return item
    if not isinstance(item, str):
        return None
    name, _, version = item.partition("@")
    dep = deployment(name)
    if version and version != str(dep.version):
        raise ValueError(f"{item!r} is not what the cluster serves under {name!r} (version {dep.version} is): "
                         f"watch {name}@{dep.version}, or activate {version} first")
    return dep
