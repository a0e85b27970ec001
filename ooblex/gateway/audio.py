"""Audio of WebRTC sessions: a WHIP publisher's Opus goes back to it and to every WHEP viewer of its
stream, untouched and held in step with the processed video (``ooblex.webrtc.audio``).

Only Opus is passed through (what browsers, OBS and GStreamer send): an offer's audio m-line is
answered with Opus alone, so the packets can go out as they came in. MJPEG and the HTTP/WebSocket
routes carry pictures only.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpTransceiver

from ..frame import Frame
from ..webrtc import internals
from ..webrtc.audio import AudioRelay, LipSync, tap_receiver
from ..webrtc.sdp import Offer
from .sessions import Session
from .state import Gateway


def publisher_audio(gw: Gateway, session: Session, offer: Offer) -> AudioRelay | None:
    """Start passing a WHIP session's audio through, when its offer sends Opus and audio is on.

    Call after ``setRemoteDescription``: the relay is registered under the session's stream id
    (for WHEP viewers) and closed with the session.
    """
    transceiver = _audio_transceiver(session)
    if not gw.settings.audio or not offer.sends_audio or transceiver is None or not _only_opus(transceiver):
        return None
    relay = AudioRelay(LipSync(max_s=gw.settings.audio_max_delay_ms / 1e3))
    if tap_receiver(transceiver.receiver, relay.push) is None:
        return None
    stream_id = session.stream.id
    gw.audio[stream_id] = relay
    session.spawn(relay.run(), "audio-relay")

    def forget() -> None:
        relay.close()
        if gw.audio.get(stream_id) is relay:
            del gw.audio[stream_id]

    session.on_close(forget)
    return relay


def send_audio(session: Session, relay: AudioRelay | None, offer: Offer) -> None:
    """Send ``relay``'s audio on ``session`` when its offer receives audio (Opus)."""
    transceiver = _audio_transceiver(session)
    if relay is None or not offer.wants_audio_back or transceiver is None or not _only_opus(transceiver):
        return
    track = relay.subscribe()
    session.pc.addTrack(track)
    session.on_close(track.stop)


def lip_sync(relay: AudioRelay | None) -> Callable[[Frame, float], None] | None:
    """The ``on_sent`` hook for a processed video track: each frame's delay sets the audio's hold."""
    if relay is None:
        return None

    def on_sent(frame: Frame, seconds: float) -> None:
        relay.sync.observe(seconds)
    return on_sent


def _audio_transceiver(session: Session) -> RTCRtpTransceiver | None:
    return next((t for t in session.pc.getTransceivers() if t.kind == "audio"), None)


def _only_opus(transceiver: RTCRtpTransceiver) -> bool:
    """Answer with Opus alone (its packets are what we relay); False if the offer has no Opus."""
    codecs = [c for c in transceiver._codecs if c.mimeType.lower() == "audio/opus"]
    if codecs:
        internals.replace(transceiver, "_codecs", codecs)
    return bool(codecs)
