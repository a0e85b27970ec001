"""Shared WHIP/WHEP signalling steps: read the offer, make the peer connection, send the answer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi import Request, Response

from ..errors import BadRequest, Forbidden, UnsupportedMediaType
from ..webrtc import accept_rsa_peers, check_offer, hotpath, loopback_candidates, low_latency, rtc_configuration
from ..webrtc.encoders import realtime_encoders
from ..webrtc.protection import negotiating, only_with_vp8, protect
from ..webrtc.recovery import recover_losses
from ..webrtc.sdp import Offer
from .auth import require
from .bodies import media_type, read_body
from .clients import caller
from .sessions import Session, unknown
from .settings import Settings
from .state import gateway

log = logging.getLogger("ooblex.gateway")


async def read_offer(request: Request, settings: Settings) -> Offer:
    """The request's SDP offer, checked; 415/413/400 naming the problem otherwise."""
    ctype = media_type(request)
    if ctype != "application/sdp":
        raise UnsupportedMediaType(f"expected Content-Type application/sdp, got {ctype or 'none'!r}")
    raw = await read_body(request, settings.max_sdp_bytes, "SDP offer")
    return check_offer(raw, settings.max_sdp_bytes)


def session_of(request: Request, kind: str, session_id: str, *, thread: str = "", stream: str = "") -> Session:
    """The session a ``DELETE``/``PATCH`` of ``/whip/{thread}/{id}`` or ``/whep/{stream}/{id}`` may act on.

    It must have been opened on the URL's thread (WHIP) or stream (WHEP), the token must cover that
    (``publish`` for the thread, ``view`` for the stream), and it must be the credential that opened
    the session (a ``control`` token may end any). Anything else is the same 404 as an unknown id.
    """
    if stream:
        held = gateway(request).engine.streams.get(stream)
        thread = held.thread.name if held is not None else ""
    try:
        granted = require(request, "publish" if kind == "whip" else "view", thread=thread or None,
                          stream=stream or None)
    except Forbidden:
        raise unknown(kind, session_id) from None
    who = None if granted is None or granted.scope == "control" else caller(request, granted)
    return gateway(request).sessions.owned(kind, session_id, thread if kind == "whip" else stream, who)


def new_peer(settings: Settings) -> RTCPeerConnection:
    accept_rsa_peers()  # GStreamer and other stacks with RSA certificates (ooblex.webrtc.dtls)
    hotpath.install()  # less Python per packet and per decoded frame (ooblex.webrtc.hotpath)
    return RTCPeerConnection(rtc_configuration(settings.ice_servers))


async def negotiate(session: Session, offer: Offer, attach: Callable[[], Awaitable[None] | None],
                    settings: Settings) -> str:
    """Apply ``offer``, let ``attach`` add tracks, and return the complete (non-trickle) answer SDP.

    Candidates are gathered here, with 127.0.0.1 among them when ``settings.loopback_candidates``
    (for this connection only). Any failure closes the session and becomes a 400 naming the cause.
    """
    pc = session.pc
    try:
        with negotiating(settings.fec):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        only_with_vp8(pc)
        low_latency(pc)
        recover_losses(pc)
        pending = attach()
        if pending is not None:
            await pending
        with loopback_candidates() if settings.loopback_candidates else contextlib.nullcontext():
            await pc.setLocalDescription(await pc.createAnswer())
        realtime_encoders(pc, settings.encoder_speed)
        protect(pc)
    except Exception as exc:  # aiortc raises many types for offers it cannot answer
        log.info("%s session %s: cannot answer offer: %s", session.kind, session.id, exc)
        await session.close()
        raise BadRequest(f"cannot answer the SDP offer: {type(exc).__name__}: {exc}") from None
    return pc.localDescription.sdp


#: Response headers a WHIP/WHEP player on another origin may read.
EXPOSED = ("Location", "Link", "X-Ooblex-Stream", "X-Ooblex-View-Token", "Preference-Applied")


def sdp_created(sdp: str, location: str, stream_id: str, ice_links: list[str],
                view_token: str | None = None, extra: dict[str, str] | None = None) -> Response:
    """``201 Created`` with the answer, its resource ``Location``, the stream id and (with a secret) a
    shareable view token for the stream."""
    headers = {"Location": location, "X-Ooblex-Stream": stream_id, "Access-Control-Expose-Headers": ", ".join(EXPOSED),
               **(extra or {})}
    if view_token:
        headers["X-Ooblex-View-Token"] = view_token
    if ice_links:
        headers["Link"] = ", ".join(ice_links)
    return Response(sdp, status_code=201, media_type="application/sdp", headers=headers)

