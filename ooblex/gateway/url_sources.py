"""Which URLs a job may pull from (``Settings.source_hosts``, ``OOBLEX_SOURCE_HOSTS``).

A URL source makes the gateway connect somewhere on the caller's behalf, so without a rule
anyone could use it to probe the gateway's network (server-side request forgery). The rule:
URL sources are off unless hosts are listed; a host must match an entry (``cam1.example.com``,
``*.example.com``, or a network such as ``192.168.1.0/24``); and every address the name resolves
to must be public, unless a listed network contains it (so loopback, link-local and private
addresses are reachable only when named on purpose). Redirects are not followed: HTTP MJPEG
sources refuse them (``ooblex.media.sources.MJPEGSource``) and RTSP sources go through a relay
that connects to the checked address and refuses them (``ooblex.media.rtsp_relay``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import BadRequest, Forbidden

SCHEMES = ("http", "https", "rtsp", "rtsps")
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class URLPolicy:
    """Decide whether a job may open a URL; ``check`` raises 400/403 naming the rule."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: list[str] = []
        self.networks: list[Network] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry.lower())

    @staticmethod
    def is_url(spec: str) -> bool:
        return "://" in spec

    async def check(self, url: str) -> list[tuple[str, int]]:
        """The checked ``(address, port)`` pairs to connect to (so that a second DNS answer is not used)."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES or not parts.hostname:
            raise BadRequest(f"URL sources must be {', '.join(s + '://' for s in SCHEMES)} with a host; "
                             f"got {url!r}")
        if not self.names and not self.networks:
            raise Forbidden("URL sources are off on this gateway: list the hosts jobs may pull from in "
                            "OOBLEX_SOURCE_HOSTS (names, *.domain or networks such as 10.0.0.0/8)")
        host = parts.hostname.lower()
        named = any(fnmatch.fnmatchcase(host, n) for n in self.names)
        if not named and not _is_ip(host):
            raise Forbidden(f"URL source host {host!r} is not in OOBLEX_SOURCE_HOSTS")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        except ValueError:
            raise BadRequest(f"URL source {url!r} has an invalid port") from None
        addresses = await _resolve(host, port)
        for address in addresses:
            if not any(address in net for net in self.networks) and not (named and address.is_global):
                raise Forbidden(f"URL source host {host!r} is not allowed: it resolves to {address}, a "
                                "loopback, link-local, private or unlisted address (list its network in "
                                "OOBLEX_SOURCE_HOSTS to allow it)")
        return [(str(a), port) for a in addresses]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise BadRequest(f"URL source host {host!r} does not resolve") from None
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
