"""Who a caller is, for per-client limits and for who may end a session.

Exact source addresses are no client identity: one IPv6 customer is given a whole /64 (2^64
addresses), so counting addresses would give an attacker as many "clients" as it likes. Limits
therefore count an IPv4 address, or an IPv6 network of ``client_ipv6_prefix`` bits (/64); an
IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is its IPv4 address. With a secret set they also
count the token's subject (``sub``), so one token holder spread over many addresses is still one
client. A session is ended or changed only with the credential that opened it (``Client.owner``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from fastapi import Request, WebSocket

from ..tokens import Token
from .auth import presented
from .state import client_of, gateway


@dataclass(frozen=True)
class Client:
    """One caller: its network (``address``), its token's subject and the credential it used."""

    #: An IPv4 address or an IPv6 network (``2001:db8:1:2::/64``); other host names as given.
    address: str
    #: The token's ``sub`` claim ("" without a secret or without the claim).
    subject: str = ""
    #: Who may end or change what this caller opens: the token's subject, else a digest of the token
    #: itself; "" without a secret (then the URL binding is the only check).
    owner: str = ""

    def keys(self) -> tuple[str, ...]:
        """What per-client limits count: the network, and the subject when there is one."""
        return (self.address, f"subject {self.subject}") if self.subject else (self.address,)

    def __str__(self) -> str:
        return self.address + (f", subject {self.subject}" if self.subject else "")


def network_of(host: str, ipv6_prefix: int = 64) -> str:
    """The per-client key of a peer address: the IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return host  # "unknown", a test client's name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def caller(conn: Request | WebSocket, granted: Token | None) -> Client:
    """The client behind ``conn`` that was granted ``granted`` (None without a secret)."""
    address = network_of(client_of(conn), gateway(conn).settings.client_ipv6_prefix)
    if granted is None:
        return Client(address)
    token = presented(conn) or ""
    owner = f"sub:{granted.subject}" if granted.subject else "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return Client(address, granted.subject, owner)
