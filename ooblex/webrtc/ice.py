"""ICE setup: STUN/TURN servers (and their RFC 9725 ``Link`` headers), optional 127.0.0.1 host candidates.

aiortc gathers all candidates before it answers (non-trickle), so gathering must be quick:
no STUN servers unless configured (aiortc would otherwise try Google's, which stalls offline).

aioice leaves 127.0.0.1 out of host candidates, so a peer on the same machine (or inside a network
namespace with only ``lo``) cannot connect. Two switches put it back, both by wrapping aioice's
``get_host_addresses``, which aioice looks up each time a connection gathers:

- ``loopback_candidates()``, scoped: only peer connections that gather inside the ``with`` block (in
  that task, or tasks it starts) offer 127.0.0.1. What the WHIP/WHEP client uses for a local server.
- ``allow_loopback(True)``, **process-wide**: every peer connection of this process offers
  127.0.0.1 until ``allow_loopback(False)``. What a gateway run with ``loopback_candidates`` uses.

aioice's own function is in place whenever neither is on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from . import internals

_original_host_addresses = aioice.ice.get_host_addresses
_process_wide = False
_scoped: ContextVar[bool] = ContextVar("ooblex_loopback_candidates", default=False)
_open_scopes = 0


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original_host_addresses(use_ipv4, use_ipv6)
    if (_process_wide or _scoped.get()) and use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


def _patch() -> None:
    """Wrap aioice while any switch is on; give it back its own function when none is."""
    if _process_wide or _open_scopes:
        internals.replace(aioice.ice, "get_host_addresses", _host_addresses)
    elif aioice.ice.get_host_addresses is _host_addresses:
        internals.replace(aioice.ice, "get_host_addresses", _original_host_addresses)


def allow_loopback(enabled: bool = True) -> None:
    """Offer (or stop offering) 127.0.0.1 host candidates for *every* peer connection in this process."""
    global _process_wide
    _process_wide = enabled
    _patch()


@contextlib.contextmanager
def loopback_candidates() -> Iterator[None]:
    """Offer 127.0.0.1 host candidates for the peer connections that gather inside this block only."""
    global _open_scopes
    token = _scoped.set(True)
    _open_scopes += 1
    _patch()
    try:
        yield
    finally:
        _scoped.reset(token)
        _open_scopes -= 1
        _patch()


def rtc_configuration(ice_servers: list[dict[str, Any]] | None = None) -> RTCConfiguration:
    """An RTCConfiguration with exactly the given servers (none by default: fastest gathering)."""
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in ice_servers or []]
    return RTCConfiguration(iceServers=servers)


#: One ``<url>; param=value; ...`` element of a Link header; values may be quoted.
_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*(?:=\s*(?:"[^"]*"|[^;,]*))?)*)')
_PARAM = re.compile(r';\s*([^;,=\s]+)\s*(?:=\s*(?:"([^"]*)"|([^;,]*)))?')


def ice_server_links(servers: Iterable[dict[str, Any]]) -> list[str]:
    """RFC 9725 ``Link: <turn:...>; rel="ice-server"; username=...; credential=...`` values, one per URL."""
    links = []
    for server in servers:
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        for url in urls:
            link = f'<{url}>; rel="ice-server"'
            if server.get("username"):
                link += f'; username="{server["username"]}"; credential="{server.get("credential", "")}"'
                link += '; credential-type="password"'
            links.append(link)
    return links


def ice_servers_from_links(values: Iterable[str]) -> list[dict[str, Any]]:
    """The RTCIceServer dicts that ``Link`` header values announce (``rel="ice-server"`` only)."""
    servers: list[dict[str, Any]] = []
    for value in values:
        for url, params in _LINK.findall(value):
            attrs = {k.lower(): quoted or bare.strip() for k, quoted, bare in _PARAM.findall(params)}
            if attrs.get("rel") != "ice-server":
                continue
            server: dict[str, Any] = {"urls": url}
            if "username" in attrs:
                server["username"], server["credential"] = attrs["username"], attrs.get("credential", "")
            servers.append(server)
    return servers
