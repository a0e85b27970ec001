"""A deployed thread as a live-widget lane: the kernel sends each frame through the cluster's gateway.

``ob.live(deployment)``, ``ob.live("name@version")`` and ``ob.live([my_fn, deployment])`` turn a
``Deployment`` into a tensor thread whose call is a round trip through the gateway that serves exactly that
version (``name@version``, the active one or one kept with ``keep_versions``): by default over WebRTC
(``gateway_peer``: WHIP, VP8 both ways, the path browsers and cameras take), or over a WebSocket
(``gateway_socket``: a JPEG per frame, each with its own JSON result). The kernel, not the browser, talks to
the gateway: the lane machinery stays the same (the same frames in compare mode, per-lane fps and latency,
snapshots and recordings), and it works wherever the kernel reaches the gateway. The lane's latency is the
whole trip; each result says what the trip took (``trip_ms``) and what the gateway measured (``gateway_ms``).
"""

from __future__ import annotations

from typing import Any, Literal

from ..cluster.deploy import Deployment, deployment
from ..cluster.registry import remote_thread
from ..thread import TensorThread, as_thread

Transport = Literal["webrtc", "websocket"]
TRANSPORTS = ("webrtc", "websocket")


def as_lane_thread(item: Any, transport: Transport = "webrtc") -> TensorThread:
    """A tensor thread for one lane: a ``Deployment`` or ``"name"`` / ``"name@version"`` (a deployment on the
    current cluster) goes through the gateway over ``transport``; anything else is a local thread or function."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    dep = _deployment(item)
    if dep is None:
        return as_thread(item)
    if transport == "webrtc":  # aiortc and PyAV load only for a deployed lane that uses them
        from .gateway_peer import PeerCall

        return DeployedThread(PeerCall(dep))
    from .gateway_socket import SocketCall

    return DeployedThread(SocketCall(dep))


class DeployedThread(TensorThread):
    """A lane's thread that is a deployment: its connection closes with the lane (engine teardown)."""

    def __init__(self, call: Any) -> None:
        """``call``: a ``PeerCall`` or ``SocketCall`` (``label``, ``dep``, ``shutdown``)."""
        super().__init__(call, name=call.label, description=f"{call.label} on the cluster, through its gateway")
        meta = (call.dep.manifest or {}).get("meta")
        if meta:  # the deployed version's parameters: the lane gets their controls, values go in the query
            self.params = remote_thread(meta).params
        self.call = call
        self.deployment = call.dep

    def teardown(self) -> None:
        self.call.shutdown()


def _deployment(item: Any) -> Deployment | None:
    if isinstance(item, Deployment):
        return item
    if not isinstance(item, str):
        return None
    name, _, version = item.partition("@")
    if version and not version.isdigit():
        raise ValueError(f"{item!r}: a version is a number (name@3)")
    return deployment(name, version=int(version) if version else None)
