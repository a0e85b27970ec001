"""WHEP egress: ``POST /whep/{stream_id}`` with a receive-only SDP offer watches a processed stream.

With a secret set, it needs ``Authorization: Bearer <token>``: ``view`` for the stream, or
``publish`` for its thread.

Any number of viewers (within the session limit) per stream; each has its own latest-wins
queue and encoder, so a slow viewer never holds back the others or the stream itself.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..errors import BadRequest
from ..webrtc.tracks import ProcessedTrack
from .auth import stream_for
from .ice import ice_links
from .peer import negotiate, new_peer, read_offer, sdp_created
from .state import client_of, gateway
from .whip import SDP_BODY

router = APIRouter(tags=["webrtc"])


@router.post("/whep/{stream_id}", status_code=201, openapi_extra={"requestBody": SDP_BODY},
             responses={201: {"content": {"application/sdp": {}}, "description": "SDP answer"}})
async def whep(stream_id: str, request: Request) -> Response:
    """Watch processed stream ``stream_id`` over WebRTC (body: SDP offer that receives video)."""
    gw = gateway(request)
    stream = stream_for(request, stream_id)
    offer = await read_offer(request, gw.settings)
    if not offer.wants_video_back:
        raise BadRequest(f"WHEP offer's video is {offer.video_direction}; it must receive video")
    client = client_of(request)
    gw.sessions.check_room(client)
    session = gw.sessions.add("whep", client, new_peer(gw.settings), stream, owns_stream=False)
    queue = stream.listen()
    track = ProcessedTrack(queue.get)

    def attach() -> None:
        session.pc.addTrack(track)

    session.pc.on("track", session.discard)  # a sendrecv viewer's own video is not wanted
    track.on("ended", session.close_soon)
    session.on_close(lambda: stream.unlisten(queue))
    sdp = await negotiate(session, offer, attach, gw.settings)
    session.watch(gw.settings.session_idle_s, gw.settings.connect_timeout_s)
    gw.count("whep_sessions")
    return sdp_created(sdp, f"/whep/{stream_id}/{session.id}", stream.id, ice_links(gw.settings, session.id))


@router.delete("/whep/{stream_id}/{session_id}")
async def whep_delete(stream_id: str, session_id: str, request: Request) -> dict[str, str]:
    """Stop watching."""
    stream_for(request, stream_id)
    session = gateway(request).sessions.get("whep", session_id)
    await session.close()
    return {"deleted": session_id}
