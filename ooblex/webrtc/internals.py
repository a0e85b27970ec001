"""Every private aiortc/aioice internal Ooblex relies on, checked once when a gateway starts.

Loss recovery, FEC, the realtime encoders, audio taps, liveness and DTLS ciphers reach into aiortc's
private attributes (name-mangled ones included) and aioice's ``Connection.request_received``. They
were written for the versions in ``TESTED`` (pyproject.toml bounds them); a release that renames one
would otherwise surface mid-session as an AttributeError, i.e. a client's 400 or a silently dead
feature. ``check()`` builds one idle peer connection (no sockets, no tasks), looks up each internal
and raises ``InternalsError`` naming every missing one and the tested versions.

    await internals.check()           # the gateway's start (ooblex/gateway/app.py lifespan)
    python -m ooblex.webrtc.internals  # the same from a shell: exit status 1 and the list when broken

Where each one is used: the comments in ``_static()`` and ``INSTANCE`` (module: what it reads or replaces).
Every patch goes through this module: a module-, class- or instance-level replacement through ``replace()``
(which fails loudly, naming the internal, instead of raising AttributeError mid-session), aiortc's
name-mangled attributes (``_RTCRtpReceiver__x``) through the accessors below. The logic a patch puts in
place stays in the module it belongs to (recovery, protection, liveness, DTLS ciphers, loopback ICE).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

#: The releases the internals were written against (pyproject.toml's ranges end above them).
TESTED = {"aiortc": "1.16", "aioice": "0.13", "av": "18.1"}


class InternalsError(RuntimeError):
    """An aiortc/aioice internal Ooblex relies on is missing or changed shape."""


# Sources are read of functions only, never of classes: a class's goes through ast.parse, which on CPython
# 3.11.7 races with any other thread's ast use (a traceback being formatted is one) and fails the start with
# "SystemError: AST constructor recursion depth mismatch".


def _params(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def _static() -> dict[str, Callable[[], bool]]:
    """Module- and class-level internals: name -> predicate (True when present and shaped as expected)."""
    ice = importlib.import_module("aioice.ice")
    dtls = importlib.import_module("aiortc.rtcdtlstransport")
    rtp_receiver = importlib.import_module("aiortc.rtcrtpreceiver")
    rtp_sender = importlib.import_module("aiortc.rtcrtpsender")
    jitter = importlib.import_module("aiortc.jitterbuffer")
    vpx = importlib.import_module("aiortc.codecs.vpx")
    media = importlib.import_module("aiortc.mediastreams")
    pcmod = importlib.import_module("aiortc.rtcpeerconnection")
    receiver, sender = rtp_receiver.RTCRtpReceiver, rtp_sender.RTCRtpSender
    return {
        # ice.py: replaces the host address lookup (loopback candidates)
        "aioice.ice.get_host_addresses": lambda: callable(ice.get_host_addresses),
        # liveness.py: wraps it per connection, calling it as (message, addr, protocol)
        "aioice.ice.Connection.request_received(message, addr, protocol)":
            lambda: _params(ice.Connection.request_received) == ["message", "addr", "protocol"],
        # dtls.py: wraps it to widen the cipher list (RSA peers)
        "aiortc.rtcdtlstransport.RTCCertificate._create_ssl_context":
            lambda: callable(dtls.RTCCertificate._create_ssl_context),
        # protection.py: wraps the codec table (RED/ULPFEC offered)
        "aiortc.rtcpeerconnection.CODECS": lambda: {"audio", "video"} <= set(pcmod.CODECS),
        # recovery.py, protection.py: replaced or wrapped per receiver/sender
        "RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)":
            lambda: _params(receiver._handle_rtp_packet) == ["packet", "arrival_time_ms"],
        "RTCRtpReceiver._send_rtcp_nack(media_ssrc, lost)":
            lambda: _params(receiver._send_rtcp_nack) == ["media_ssrc", "lost"],
        "RTCRtpSender._handle_rtcp_packet(packet)": lambda: _params(sender._handle_rtcp_packet) == ["packet"],
        # jitter.py, recovery.py, audio.py: subclass the jitter buffer and read depayloaded packets' _data
        "aiortc.jitterbuffer.JitterBuffer(capacity, prefetch, is_video)":
            lambda: _params(jitter.JitterBuffer.__init__) == ["capacity", "prefetch", "is_video"],
        "aiortc.jitterbuffer.JitterFrame(data, timestamp)":
            lambda: _params(jitter.JitterFrame.__init__) == ["data", "timestamp"],
        "RtpPacket._data (set by RTCRtpReceiver._handle_rtp_packet)":
            lambda: "packet._data" in inspect.getsource(receiver._handle_rtp_packet),
        "aiortc.rtcrtpreceiver.NackGenerator": lambda: hasattr(rtp_receiver, "NackGenerator"),
        # hotpath.py: replaces both, keeping what they read and call
        "aioice.ice.StunProtocol.datagram_received(data, addr) (receiver, local_candidate, transactions)":
            lambda: _params(ice.StunProtocol.datagram_received) == ["data", "addr"] and all(
                n in inspect.getsource(ice.StunProtocol.datagram_received)
                for n in ("self.receiver", "self.local_candidate", "self.transactions")),
        "aiortc.rtcrtpreceiver.decoder_worker(loop, input_q, output_q, decode_error), output_q the track's queue":
            lambda: _params(rtp_receiver.decoder_worker) == ["loop", "input_q", "output_q", "decode_error"]
            and "target=decoder_worker" in inspect.getsource(receiver.receive)
            and "self._track._queue" in inspect.getsource(receiver.receive)
            and callable(rtp_receiver.get_decoder),
        # vp8.py, encoders.py: aiortc's VP8 encoder subclassed; its codec context set as self.codec
        "aiortc.codecs.vpx (Vp8Encoder, VpxPayloadDescriptor, MAX_FRAME_RATE, number_of_threads)":
            lambda: all(hasattr(vpx, n) for n in ("Vp8Encoder", "VpxPayloadDescriptor", "MAX_FRAME_RATE",
                                                  "number_of_threads")),
        "Vp8Encoder sets self.codec": lambda: "self.codec" in inspect.getsource(vpx.Vp8Encoder.encode),
        "aiortc.mediastreams (VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, convert_timebase)":
            lambda: all(hasattr(media, n) for n in ("VIDEO_CLOCK_RATE", "VIDEO_TIME_BASE", "convert_timebase")),
    }


def replace(owner: Any, name: str, new: Any) -> Any:
    """Put ``new`` in the place of ``owner.name`` (an aiortc/aioice module, class or object) and return what was
    there. Every patch Ooblex makes goes through here; an internal that is gone is an ``InternalsError``."""
    try:
        old = getattr(owner, name)
    except AttributeError:
        have = ", ".join(f"{n} {v}" for n, v in installed().items())
        raise InternalsError(f"{getattr(owner, '__name__', type(owner).__name__)}.{name} is gone in this "
                             f"aiortc/aioice ({have}); Ooblex was written for {TESTED}") from None
    setattr(owner, name, new)
    return old


# aiortc's name-mangled attributes (its ``self.__x``), read and replaced through these functions only.
JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
CODECS = "_RTCRtpReceiver__codecs"
NACKS = "_RTCRtpReceiver__nack_generator"
REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
RTX_SSRCS = "_RTCRtpReceiver__rtx_ssrc"
ENCODER = "_RTCRtpSender__encoder"
#: ``encoder(sender)`` when the attribute itself is gone (a sender without an encoder yet has None).
ABSENT: Any = object()


def jitter_buffer(receiver: Any) -> Any:
    """The receiver's jitter buffer (None if aiortc has none there)."""
    return getattr(receiver, JITTER_BUFFER, None)


def set_jitter_buffer(receiver: Any, buffer: Any) -> None:
    setattr(receiver, JITTER_BUFFER, buffer)


def set_nack_generator(receiver: Any, nacks: Any) -> None:
    setattr(receiver, NACKS, nacks)


def receiver_codecs(receiver: Any) -> dict[int, Any]:
    """Payload type -> codec parameters, as the receiver decodes them."""
    return getattr(receiver, CODECS)


def remote_streams(receiver: Any) -> dict[int, Any]:
    """SSRC -> the receiver's per-stream statistics (loss, jitter) for its receiver reports."""
    return getattr(receiver, REMOTE_STREAMS)


def rtx_ssrcs(receiver: Any) -> dict[int, int]:
    """Retransmission SSRC -> media SSRC."""
    return getattr(receiver, RTX_SSRCS)


def encoder(sender: Any, default: Any = None) -> Any:
    """The sender's encoder: None until media flows, ``default`` if aiortc keeps it elsewhere."""
    return getattr(sender, ENCODER, default)


def set_encoder(sender: Any, value: Any) -> None:
    setattr(sender, ENCODER, value)


#: Instance attributes of a transceiver's parts: (part, attribute); ``_RTCRtpReceiver__x`` is ``self.__x``.
INSTANCE = [
    ("transceiver", "_codecs"), ("transceiver", "_preferred_codecs"),                      # protection, audio
    ("sender", "_ssrc"), ("sender", "_rtx_ssrc"), ("sender", ENCODER),                     # protection, encoders
    ("receiver", JITTER_BUFFER), ("receiver", CODECS), ("receiver", NACKS),               # recovery, jitter, audio
    ("receiver", REMOTE_STREAMS), ("receiver", RTX_SSRCS),                                # protection
    ("dtls", "_send_rtp"), ("dtls", "_handle_rtp_data"), ("dtls", "_handle_rtcp_data"),  # protection, liveness
    ("dtls", "_rtp_header_extensions_map"), ("ice", "_connection"),                       # liveness
]


async def _instance_missing() -> list[str]:
    """The INSTANCE attributes an idle peer connection with one video transceiver lacks."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        t = pc.addTransceiver("video")
        dtls = t.sender.transport
        parts = {"transceiver": t, "sender": t.sender, "receiver": t.receiver, "dtls": dtls,
                 "ice": getattr(dtls, "transport", None)}
        return [f"{type(parts[p]).__name__}.{a}" for p, a in INSTANCE if not hasattr(parts[p], a)]
    finally:
        await pc.close()


async def missing() -> list[str]:
    """Every internal (``_static()`` and ``INSTANCE``) that is absent or changed shape in this install."""
    gone = []
    for name, present in _static().items():
        try:
            ok = present()
        except (AttributeError, TypeError, ValueError, OSError):
            ok = False
        if not ok:
            gone.append(name)
    return gone + await _instance_missing()


def installed() -> dict[str, str]:
    return {name: version(name) for name in TESTED}


async def check() -> None:
    """Raise ``InternalsError`` listing every missing internal, the installed and the tested versions."""
    gone = await missing()
    if gone:
        have = ", ".join(f"{n} {v}" for n, v in installed().items())
        tested = ", ".join(f"{n} {v}" for n, v in TESTED.items())
        raise InternalsError(f"this aiortc/aioice lacks internals Ooblex relies on: {'; '.join(gone)}. "
                             f"Installed: {have}; written for {tested} (pip install -c constraints.txt).")


if __name__ == "__main__":
    try:
        asyncio.run(check())
    except InternalsError as exc:
        raise SystemExit(str(exc)) from None
    print("aiortc/aioice internals: all present (" + ", ".join(f"{n} {v}" for n, v in installed().items()) + ")")
