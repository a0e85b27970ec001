"""STUN/TURN servers for clients: RFC 9725 ``Link`` headers, with fresh TURN credentials per session.

A client behind a NAT or a firewall that lets no UDP through reaches the gateway only through a
TURN relay, and must know the relay *before* it gathers candidates (offers and answers here are
non-trickle). So the servers come two ways, both only to a caller that passes the route's token
check (the credentials let anyone who holds them relay traffic):

- ``OPTIONS /whip/{thread}`` and ``OPTIONS /whep/{stream_id}``: ``204`` with the ``Link`` headers,
  before the offer (what the demo page and ``WhipClient``/``WhepClient`` do);
- the ``201`` answer of ``POST /whip/...`` and ``/whep/...`` carries them too (RFC 9725 4.6).

TURN credentials are minted by the TURN REST API scheme (``ooblex.webrtc.turn``): good for
``turn_ttl_s`` seconds, tied to the session (or, for OPTIONS, a fresh id) in the username.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response

from ..webrtc.ice import ice_server_links
from ..webrtc.turn import turn_server
from .auth import require, stream_for
from .peer import EXPOSED
from .settings import Settings
from .state import gateway

router = APIRouter(tags=["webrtc"])


def ice_servers(settings: Settings, user: str) -> list[dict[str, Any]]:
    """What to hand a client: the configured servers, plus the TURN URLs with credentials for ``user``."""
    servers = list(settings.ice_servers)
    if settings.turn_urls:
        servers.append(turn_server(settings.turn_urls, settings.turn_secret, user, settings.turn_ttl_s))
    return servers


def ice_links(settings: Settings, user: str) -> list[str]:
    """``Link`` header values announcing ``ice_servers(settings, user)``."""
    return ice_server_links(ice_servers(settings, user))


def _links_response(request: Request, methods: str) -> Response:
    links = ice_links(gateway(request).settings, secrets.token_urlsafe(9))
    headers = {"Allow": methods, "Access-Control-Expose-Headers": ", ".join(EXPOSED)}
    if links:
        headers["Link"] = ", ".join(links)
    return Response(status_code=204, headers=headers)


@router.options("/whip/{thread}", status_code=204)
async def whip_ice_servers(thread: str, request: Request) -> Response:
    """STUN/TURN servers (``Link`` headers) for a publisher to gather with before it offers."""
    require(request, "publish", thread=thread)
    gateway(request).engine.resolve(thread)
    return _links_response(request, "OPTIONS, POST")


@router.options("/whep/{stream_id}", status_code=204)
async def whep_ice_servers(stream_id: str, request: Request) -> Response:
    """STUN/TURN servers (``Link`` headers) for a viewer to gather with before it offers."""
    stream_for(request, stream_id)
    return _links_response(request, "OPTIONS, POST")
