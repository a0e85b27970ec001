"""WHEP egress: ``POST /whep/{stream_id}`` with a receive-only SDP offer watches a processed stream.

With a secret set, it needs ``Authorization: Bearer <token>``: ``view`` for the stream, or
``publish`` for its thread.

Any number of viewers (within the session limit) per stream; each has its own latest-wins
queue and encoder, so a slow viewer never holds back the others or the stream itself. An offer
that receives audio gets the publisher's Opus, held in step with the video (``audio.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from .. import routes
from ..errors import BadRequest, MethodNotAllowed
from ..webrtc.tracks import ProcessedTrack
from .audio import lip_sync, send_audio
from .auth import require, stream_for
from .clients import caller
from .ice import ice_links
from .peer import negotiate, new_peer, read_offer, sdp_created, session_of
from .state import gateway
from .whip import SDP_BODY

router = APIRouter(tags=["webrtc"])


@router.post(routes.WHEP, status_code=201, openapi_extra={"requestBody": SDP_BODY},
             responses={201: {"content": {"application/sdp": {}}, "description": "SDP answer"}})
async def whep(stream_id: str, request: Request) -> Response:
    """Watch processed stream ``stream_id`` over WebRTC (body: SDP offer that receives video)."""
    gw = gateway(request)
    stream = stream_for(request, stream_id)
    offer = await read_offer(request, gw.settings)
    if not offer.wants_video_back:
        raise BadRequest(f"WHEP offer's video is {offer.video_direction}; it must receive video")
    client = caller(request, require(request, "view", stream=stream.id, thread=stream.thread.name))
    gw.sessions.check_room("whep", client)
    session = gw.sessions.add("whep", client, stream_id, new_peer(gw.settings), stream, owns_stream=False)
    queue = stream.listen()
    audio = gw.audio.get(stream.id)
    track = ProcessedTrack(queue.get, on_sent=lip_sync(audio))

    def attach() -> None:
        session.pc.addTrack(track)
        send_audio(session, audio, offer)

    session.pc.on("track", session.discard)  # a sendrecv viewer's own video is not wanted
    track.on("ended", session.close_soon)
    session.on_close(lambda: stream.unlisten(queue))
    sdp = await negotiate(session, offer, attach, gw.settings)
    session.watch(gw.settings.session_idle_s, gw.settings.connect_timeout_s)
    gw.count("whep_sessions")
    location = routes.path(routes.WHEP_SESSION, stream_id=stream_id, session_id=session.id)
    return sdp_created(sdp, location, stream.id, ice_links(gw.settings, session.id))


@router.delete(routes.WHEP_SESSION)
async def whep_delete(stream_id: str, session_id: str, request: Request) -> dict[str, str]:
    """Stop watching (only one's own session: 404 for any other, as for an unknown id)."""
    session = session_of(request, "whep", session_id, stream=stream_id)
    await session.close()
    return {"deleted": session_id}


@router.patch(routes.WHEP_SESSION, status_code=405)
async def whep_patch(stream_id: str, session_id: str, request: Request) -> Response:
    """Trickle ICE is not used: offers and answers carry all candidates (404 for a session not the caller's)."""
    session_of(request, "whep", session_id, stream=stream_id)
    raise MethodNotAllowed("trickle ICE is not supported: send a complete offer (gathering done)")
