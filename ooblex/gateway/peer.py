"""Shared WHIP/WHEP signalling steps: read the offer, make the peer connection, send the answer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi import Request, Response

from ..errors import BadRequest, UnsupportedMediaType
from ..webrtc import accept_rsa_peers, check_offer, loopback_candidates, low_latency, rtc_configuration
from ..webrtc.encoders import realtime_encoders
from ..webrtc.protection import negotiating, only_with_vp8, protect
from ..webrtc.recovery import recover_losses
from ..webrtc.sdp import Offer
from .bodies import media_type, read_body
from .sessions import Session
from .settings import Settings

log = logging.getLogger("ooblex.gateway")


async def read_offer(request: Request, settings: Settings) -> Offer:
    """The request's SDP offer, checked; 415/413/400 naming the problem otherwise."""
    ctype = media_type(request)
    if ctype != "application/sdp":
        raise UnsupportedMediaType(f"expected Content-Type application/sdp, got {ctype or 'none'!r}")
    raw = await read_body(request, settings.max_sdp_bytes, "SDP offer")
    return check_offer(raw, settings.max_sdp_bytes)


def new_peer(settings: Settings) -> RTCPeerConnection:
    accept_rsa_peers()  # GStreamer and other stacks with RSA certificates (ooblex.webrtc.dtls)
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
EXPOSED = ("Location", "Link", "X-Ooblex-Stream", "X-Ooblex-View-Token")


def sdp_created(sdp: str, location: str, stream_id: str, ice_links: list[str],
                view_token: str | None = None) -> Response:
    """``201 Created`` with the answer, its resource ``Location``, the stream id and (with a secret) a
    shareable view token for the stream."""
    headers = {"Location": location, "X-Ooblex-Stream": stream_id, "Access-Control-Expose-Headers": ", ".join(EXPOSED)}
    if view_token:
        headers["X-Ooblex-View-Token"] = view_token
    if ice_links:
        headers["Link"] = ", ".join(ice_links)
    return Response(sdp, status_code=201, media_type="application/sdp", headers=headers)

