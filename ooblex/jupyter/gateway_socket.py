"""A deployed lane over a WebSocket: one JPEG per frame to the gateway's ``/ws/{thread}`` and back.

``ob.live(..., transport="websocket")``. Each answer carries that frame's own JSON result and how long
the gateway held it (``gateway_ms``), which WebRTC video cannot; and it passes where UDP does not.
One frame in flight on one socket, reopened with a fresh ``publish`` token when the gateway closes it.
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
from ..cluster.deploy import Deployment
from ..errors import Unavailable

#: Seconds to wait for the gateway's answer to one frame before the lane reports it and reconnects.
ANSWER_TIMEOUT_S = 5.0
#: Seconds to wait for the JPEG that follows a result (the gateway sends the two back to back).
IMAGE_TIMEOUT_S = 1.0
#: JPEG quality of frames sent to the gateway.
QUALITY = 85
#: Token lifetime; the socket is reopened with a fresh token when it closes.
TOKEN_TTL = "1h"


class SocketCall:
    """Calls a deployment through its gateway, one frame in flight on one WebSocket (reopened on failure)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.label = dep.queue
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

        url = self.dep.version_urls.get("ws")
        if not url:
            raise Unavailable(f"no gateway of this cluster is up to serve {self.dep.name!r} (ob.cluster() starts one)")
        auth = {"Authorization": f"Bearer {self.dep.publish_token(TOKEN_TTL, this_version=True)}"}
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

    def shutdown(self) -> None:
        """The lane is gone."""
        self.close()
