"""ICE setup: STUN/TURN servers from settings, and optional 127.0.0.1 host candidates.

aiortc gathers all candidates before it answers (non-trickle), so gathering must be quick:
no STUN servers unless configured (aiortc would otherwise try Google's, which stalls offline).
aioice leaves 127.0.0.1 out of host candidates; ``allow_loopback`` puts it back, so that a
browser or client on the same machine (or inside a network namespace with only ``lo``) connects.
"""

from __future__ import annotations

from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_host_addresses = aioice.ice.get_host_addresses
_loopback = False


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original_host_addresses(use_ipv4, use_ipv6)
    if _loopback and use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


def allow_loopback(enabled: bool = True) -> None:
    """Offer (or stop offering) 127.0.0.1 host candidates, for every peer connection in this process."""
    global _loopback
    _loopback = enabled
    aioice.ice.get_host_addresses = _host_addresses


def rtc_configuration(ice_servers: list[dict[str, Any]] | None = None) -> RTCConfiguration:
    """An RTCConfiguration with exactly the given servers (none by default: fastest gathering)."""
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in ice_servers or []]
    return RTCConfiguration(iceServers=servers)
