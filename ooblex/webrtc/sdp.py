"""Check an SDP offer before a peer connection is made for it, so bad offers get a clear 4xx."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.sdp import SessionDescription

from ..errors import BadRequest

#: Video codecs the gateway can decode and encode.
VIDEO_CODECS = ("VP8", "H264")


class SDPError(BadRequest):
    """The offer cannot be answered; ``status`` is the HTTP status to reply with (400, or 413 if too big)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Offer:
    """What the gateway needs to know about an offer."""

    sdp: str
    video_direction: str  # direction of the first video m-line, from the offerer's side
    codecs: tuple[str, ...]  # video codec names offered, in order

    @property
    def wants_video_back(self) -> bool:
        return self.video_direction in ("sendrecv", "recvonly")

    @property
    def sends_video(self) -> bool:
        return self.video_direction in ("sendrecv", "sendonly")


def check_offer(raw: bytes | str, max_bytes: int = 64 * 1024) -> Offer:
    """Parse ``raw``; raise ``SDPError`` naming the problem (size, syntax, no video, no common codec)."""
    if len(raw) > max_bytes:
        raise SDPError(f"SDP offer is {len(raw)} bytes; the limit is {max_bytes}", status=413)
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise SDPError("SDP offer is not UTF-8 text") from None
    if not text.lstrip().startswith("v=0"):
        raise SDPError("body is not an SDP offer (it must start with 'v=0')")
    try:
        session = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises many types on bad input
        raise SDPError(f"malformed SDP offer: {type(exc).__name__} {exc}".strip()) from None
    videos = [m for m in session.media if m.kind == "video"]
    if not videos:
        raise SDPError("SDP offer has no video m-line")
    video = videos[0]
    names = tuple(dict.fromkeys(c.mimeType.split("/", 1)[1].upper() for c in video.rtp.codecs))
    if not any(n in VIDEO_CODECS for n in names):
        raise SDPError(f"SDP offer has no supported video codec (offered: {', '.join(names) or 'none'}; "
                       f"supported: {', '.join(VIDEO_CODECS)})")
    if video.ice is None or not video.ice.usernameFragment or not video.ice.password:
        raise SDPError("SDP offer lacks ICE credentials (a=ice-ufrag and a=ice-pwd)")
    if video.dtls is None or not video.dtls.fingerprints:
        raise SDPError("SDP offer lacks a valid DTLS fingerprint (a=fingerprint:sha-256 AB:CD:...)")
    return Offer(text, video.direction or "sendrecv", names)
