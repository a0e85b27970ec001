"""Check an SDP offer before a peer connection is made for it, so bad offers get a clear 4xx."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.sdp import SessionDescription

from ..errors import BadRequest

#: Video codecs the gateway can decode and encode.
VIDEO_CODECS = ("VP8", "H264")
#: Certificate fingerprint hashes (RFC 8122) and their digest sizes in bytes.
FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}


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
    #: Direction of the first audio m-line ("inactive" without one) and whether it offers Opus.
    audio_direction: str = "inactive"
    audio_opus: bool = False

    @property
    def wants_video_back(self) -> bool:
        return self.video_direction in ("sendrecv", "recvonly")

    @property
    def sends_video(self) -> bool:
        return self.video_direction in ("sendrecv", "sendonly")

    @property
    def sends_audio(self) -> bool:
        return self.audio_opus and self.audio_direction in ("sendrecv", "sendonly")

    @property
    def wants_audio_back(self) -> bool:
        return self.audio_opus and self.audio_direction in ("sendrecv", "recvonly")


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
    _check_fingerprints(text)
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
    audio = next((m for m in session.media if m.kind == "audio"), None)
    if audio is None:
        return Offer(text, video.direction or "sendrecv", names)
    opus = any(c.mimeType.lower() == "audio/opus" for c in audio.rtp.codecs)
    return Offer(text, video.direction or "sendrecv", names, audio.direction or "sendrecv", opus)


def _check_fingerprints(text: str) -> None:
    """Every ``a=fingerprint`` line must be a known hash and a digest of its size: aiortc's parser
    takes any text there, and a DTLS handshake cannot be checked against a garbled one."""
    for line in text.splitlines():
        if not line.startswith("a=fingerprint:"):
            continue
        algorithm, _, value = line[len("a=fingerprint:"):].strip().partition(" ")
        digest = value.strip().split(":")
        size = FINGERPRINT_BYTES.get(algorithm.lower())
        if size is None or len(digest) != size or not all(len(h) == 2 and _is_hex(h) for h in digest):
            raise SDPError(f"SDP offer has a malformed DTLS fingerprint: {line[:120]!r} "
                           "(expected a=fingerprint:sha-256 AB:CD:... with one hex pair per digest byte)")


def _is_hex(pair: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in pair)
