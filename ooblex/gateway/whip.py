"""WHIP ingest (RFC 9725): ``POST /whip/{thread}`` with an SDP offer starts a processed stream.

Query parameters set the thread's keyword parameters. When the offer's video is ``sendrecv``
the processed video comes back on the same peer connection (and its Opus audio, when that is
``sendrecv`` too, held in step with the video: ``audio.py``); ``X-Ooblex-Stream`` names the
stream, for ``/whep/{id}`` and ``/mjpeg/{id}`` viewers. ``DELETE`` on ``Location`` ends it.
With a secret set, both need ``Authorization: Bearer <publish token for the thread>``, and the
answer carries ``X-Ooblex-View-Token``: a token to hand to viewers of this one stream.
``Prefer: return-timestamps=input`` (RFC 7240) keeps the publisher's RTP timestamps on the video sent
back, for clients that pair each returned frame with the one they sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiortc import MediaStreamTrack
from fastapi import APIRouter, Request, Response

from .. import routes
from ..engine import Stream, StreamClosed
from ..errors import BadRequest, MethodNotAllowed
from ..frame import Frame
from ..webrtc.tracks import Ingest, ProcessedTrack
from .audio import lip_sync, publisher_audio, send_audio
from .auth import require, view_token
from .clients import caller
from .frames import thread_params
from .ice import ice_links
from .peer import negotiate, new_peer, read_offer, sdp_created, session_of
from .state import gateway

router = APIRouter(tags=["webrtc"])
SDP_BODY = {"content": {"application/sdp": {"schema": {"type": "string"}}}, "required": True}


@router.post(routes.WHIP, status_code=201, openapi_extra={"requestBody": SDP_BODY},
             responses={201: {"content": {"application/sdp": {}}, "description": "SDP answer"}})
async def whip(thread: str, request: Request) -> Response:
    """Start ingesting a WebRTC video stream into ``thread`` (body: SDP offer)."""
    gw = gateway(request)
    granted = require(request, "publish", thread=thread)
    target = gw.engine.resolve(thread)
    offer = await read_offer(request, gw.settings)
    if not offer.sends_video:
        raise BadRequest(f"WHIP offer's video is {offer.video_direction}; it must send video")
    client = caller(request, granted)
    gw.sessions.check_room("whip", client)
    stream = await gw.open(client, thread, params=thread_params(request.query_params), mode="live",
                           max_in_flight=gw.settings.window(target), max_latency_ms=gw.settings.max_latency_ms)
    session = gw.sessions.add("whip", client, thread, new_peer(gw.settings), stream, owns_stream=True)
    ingest: list[Ingest] = []
    input_timestamps = prefers_input_timestamps(request)

    @session.pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not ingest:
            ingest.append(Ingest(track, stream, gw.governor))
            session.spawn(ingest[0].run(), "ingest")
        else:
            session.discard(track)

    def attach() -> None:
        if not ingest:
            raise ValueError("the offer's video track did not arrive")
        audio = publisher_audio(gw, session, offer)
        if offer.wants_video_back:
            keep = gw.settings.return_timestamps == "input" or input_timestamps
            session.pc.addTrack(ProcessedTrack(_outputs(stream), ingest[0].pts_of if keep else None,
                                               ingest[0].original, on_sent=lip_sync(audio)))
        send_audio(session, audio, offer)

    sdp = await negotiate(session, offer, attach, gw.settings)
    session.watch(gw.settings.session_idle_s, gw.settings.connect_timeout_s)
    gw.count("whip_sessions")
    location = routes.path(routes.WHIP_SESSION, thread=thread, session_id=session.id)
    kept = input_timestamps and offer.wants_video_back
    applied = {"Preference-Applied": routes.PREFER_INPUT_TIMESTAMPS} if kept else {}
    return sdp_created(sdp, location, stream.id, ice_links(gw.settings, session.id),
                       view_token(request, granted, stream), applied)


def prefers_input_timestamps(request: Request) -> bool:
    """``Prefer: return-timestamps=input`` (RFC 7240: preferences are comma separated, parameters after ``;``)."""
    prefs = ",".join(request.headers.getlist("prefer")).split(",")
    return any(p.split(";")[0].replace(" ", "").lower() == routes.PREFER_INPUT_TIMESTAMPS for p in prefs)


@router.delete(routes.WHIP_SESSION)
async def whip_delete(thread: str, session_id: str, request: Request) -> dict[str, str]:
    """End a WHIP session and its stream (only its own: 404 for any other, as for an unknown id)."""
    session = session_of(request, "whip", session_id, thread=thread)
    await session.close()
    return {"deleted": session_id}


@router.patch(routes.WHIP_SESSION, status_code=405)
async def whip_patch(thread: str, session_id: str, request: Request) -> Response:
    """Trickle ICE is not used: offers and answers carry all candidates (404 for a session not the caller's)."""
    session_of(request, "whip", session_id, thread=thread)
    raise MethodNotAllowed("trickle ICE is not supported: send a complete offer (gathering done)")


def _outputs(stream: Stream) -> Callable[[], Awaitable[Frame | None]]:
    async def next_frame() -> Frame | None:
        try:
            return await stream.get()
        except StreamClosed:
            return None
    return next_frame
