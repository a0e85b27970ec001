"""A WHIP/WHEP client on aiortc: ``ooblex send``, the tests and the latency benchmark use it.

    async with WhipClient("http://127.0.0.1:8800/whip/identity", track) as c:
        frame = await c.remote.recv()     # processed video (offer is sendrecv)
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import time
from collections.abc import Callable
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ..media.audio import AudioInput, decoded
from ..supervision import cancel
from . import framecode, hotpath
from .audio import OPUS_RATE, AudioPacket, MediaClock, PacedAudioTrack, tap_receiver
from .dtls import accept_rsa_peers
from .encoders import realtime_encoders
from .ice import ice_servers_from_links, loopback_candidates, rtc_configuration
from .jitter import low_latency
from .protection import keep_with_preferences, negotiating, protect
from .recovery import recover_losses

VIDEO_CLOCK = 90000


class WebRTCError(RuntimeError):
    """The server refused the offer or the connection failed."""


class ImageTrack(MediaStreamTrack):
    """Sends images from ``next_image()`` (None ends the track) at ``fps``, numbering each one.

    ``sent[n]`` is the wall-clock time frame ``n`` left this track (before encoding); with
    ``number=True`` the number is drawn into the picture (``framecode``) for round-trip timing.
    An audio track on the same ``clock`` (``PacedAudioTrack``) leaves in step with the pictures.
    """

    kind = "video"

    def __init__(self, next_image: Callable[[], Any], fps: float = 30.0, number: bool = True,
                 clock: MediaClock | None = None) -> None:
        super().__init__()
        self._next_image = next_image
        self.fps = fps
        self.number = number
        self.clock = clock or MediaClock()
        self.sent: dict[int, float] = {}
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.clock.wait_until(self.count / self.fps)
        image = self._next_image()
        if asyncio.iscoroutine(image):
            image = await image
        if image is None:
            self.stop()
            raise MediaStreamError
        n = self.count
        if self.number and image.shape[1] >= 8 * framecode.BITS:
            image = framecode.stamp(np.array(image, copy=True), n)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent[n & 0xFFFF] = time.time()
        if len(self.sent) > 4096:
            self.sent.pop(next(iter(self.sent)))
        self.count += 1
        return frame


class _Client:
    """Shared WHIP/WHEP steps: offer (all candidates gathered), POST, answer, DELETE on close.

    ``ice_servers=None`` (the default) asks the endpoint first (``OPTIONS``, RFC 9725 ``Link``
    headers) and gathers with what it offers, TURN relays included; a list uses exactly those.
    ``fast=False`` is a stock aiortc peer: without Ooblex's jitter buffer, loss recovery and VP8
    encoder (``encoders.realtime_encoders`` at aiortc's own speed). ``fec=False`` leaves RED/ULPFEC
    out of the offer (``protection``): NACKs only.
    """

    def __init__(self, url: str, *, fast: bool = True, fec: bool = True,
                 ice_servers: list[dict[str, Any]] | None = None, token: str | None = None,
                 prefer: str | None = None) -> None:
        self.url = url
        #: An RFC 7240 ``Prefer`` header for the offer (``return-timestamps=input``); ``applied`` is the answer's.
        self.prefer = {"Prefer": prefer} if prefer else {}
        self.applied = ""
        self.fast = fast
        self.fec = fast and fec
        token = token or os.environ.get("OOBLEX_TOKEN")
        #: RFC 9725: the bearer token goes with the POST and the DELETE.
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        #: The server is on this machine: this connection (only) lets ICE use loopback.
        self.local = httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")
        self.ice_servers = ice_servers
        self.remote: MediaStreamTrack | None = None
        #: The audio that came back (a WHIP publisher's own, or a WHEP stream's), if any.
        self.remote_audio: MediaStreamTrack | None = None
        self.location: str | None = None
        self.stream_id: str | None = None
        self._got_track = asyncio.Event()
        self._audio_tap: Callable[[AudioPacket], None] | None = None
        self.pc = self._peer(ice_servers or [])

    def _peer(self, ice_servers: list[dict[str, Any]]) -> RTCPeerConnection:
        accept_rsa_peers()
        if self.fast:
            hotpath.install()  # process-wide: later stock peers in this process use it too
        pc = RTCPeerConnection(rtc_configuration(ice_servers))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self.remote = track
                self._got_track.set()
            elif track.kind == "audio":
                self.remote_audio = track
        return pc

    def tap_audio(self, on_packet: Callable[[AudioPacket], None]) -> None:
        """Receive audio as the Opus packets that arrive (``on_packet``), undecoded, instead of on
        ``remote_audio``; call before ``start``."""
        self._audio_tap = on_packet

    async def _ask_ice_servers(self) -> None:
        """Without ``ice_servers``, take the endpoint's (``OPTIONS``): gathering needs them before the offer."""
        if self.ice_servers is not None:
            return
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.options(self.url, headers=self.auth)
        self.ice_servers = ice_servers_from_links(resp.headers.get_list("link")) if resp.status_code == 204 else []
        if self.ice_servers:
            await self.pc.close()  # unused so far: no transceivers yet
            self.pc = self._peer(self.ice_servers)

    async def _negotiate(self) -> None:
        audio = [t.receiver for t in self.pc.getTransceivers() if t.kind == "audio"]
        if self._audio_tap is not None and audio:
            tap_receiver(audio[0], self._audio_tap)
        if self.fast:
            low_latency(self.pc)
            recover_losses(self.pc)
        with loopback_candidates() if self.local else contextlib.nullcontext(), negotiating(self.fec):
            await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers candidates
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(self.url, content=self.pc.localDescription.sdp,
                                   headers={"Content-Type": "application/sdp", **self.auth, **self.prefer})
        if resp.status_code != 201:
            await self.pc.close()
            raise WebRTCError(f"{self.url}: {resp.status_code} {resp.text}")
        self.location = str(httpx.URL(self.url).join(resp.headers["Location"]))
        self.stream_id = resp.headers.get("X-Ooblex-Stream")
        self.applied = resp.headers.get("Preference-Applied", "")
        with negotiating(self.fec):
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
        if self.fast:  # aiortc's own speeds; VP8's bitrate then follows REMB without keyframes
            realtime_encoders(self.pc, "stock")
            protect(self.pc)

    async def wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise WebRTCError(f"connection {self.pc.connectionState} to {self.url}")
            await asyncio.sleep(0.02)

    async def close(self, delete: bool = True) -> None:
        if delete and self.location:
            async with httpx.AsyncClient(timeout=10) as http:
                await http.delete(self.location, headers=self.auth)
        await self.pc.close()

    async def __aenter__(self) -> _Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        raise NotImplementedError


class WhipClient(_Client):
    """Publish ``track`` (and ``audio``) to a WHIP URL; with ``receive=True`` the processed video comes
    back (``remote``), and the audio too (``remote_audio``)."""

    def __init__(self, url: str, track: MediaStreamTrack, *, receive: bool = True, codec: str = "vp8",
                 audio: MediaStreamTrack | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.track = track
        self.receive = receive
        self.codec = codec
        self.audio = audio

    async def start(self) -> None:
        await self._ask_ice_servers()
        direction = "sendrecv" if self.receive else "sendonly"
        transceiver = self.pc.addTransceiver(self.track, direction=direction)
        prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs
                 if c.mimeType.lower() in (f"video/{self.codec.lower()}", "video/rtx")]
        transceiver.setCodecPreferences(prefs)
        if self.fec and self.codec.lower() == "vp8":  # (``protection.only_with_vp8``)
            keep_with_preferences(transceiver)
        if self.audio is not None:
            self.pc.addTransceiver(self.audio, direction=direction)
        await self._negotiate()
        if self.receive:
            await asyncio.wait_for(self._got_track.wait(), 10)


class WhepClient(_Client):
    """Watch a processed stream from a WHEP URL (``remote`` is the video track, ``remote_audio`` its
    publisher's audio when it has some and ``audio=True``)."""

    def __init__(self, url: str, *, audio: bool = True, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.audio = audio

    async def start(self) -> None:
        await self._ask_ice_servers()
        self.pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        await self._negotiate()
        await asyncio.wait_for(self._got_track.wait(), 10)


class RoundTrips:
    """Reads a returned track, matching frame numbers to send times: fps, round trip, loss."""

    def __init__(self, track: ImageTrack) -> None:
        self.track = track
        self.received = 0
        self.rtts: list[float] = []  # seconds, one per numbered frame that came back
        self.numbers: set[int] = set()

    async def consume(self, remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                now = time.time()
                self.received += 1
                n = framecode.read(await asyncio.to_thread(frame.to_ndarray, format="rgb24"))
                if n is not None and n in self.track.sent and n not in self.numbers:
                    self.numbers.add(n)
                    self.rtts.append(now - self.track.sent[n])


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p = np.percentile(np.array(values) * 1e3, [50, 95, 99])
    return {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "p99": round(float(p[2]), 2)}


def _image_feed(spec: Any) -> tuple[Callable[[], Any], float, Callable[[], None], AudioInput | None]:
    """(next_image coroutine function, fps, close, the file's soundtrack) for an ``open_source`` spec."""
    from ..media.sources import LatestFrameReader, open_source

    source = open_source(spec)
    if source.live:
        reader = LatestFrameReader(source)

        async def next_live() -> np.ndarray | None:
            item = await asyncio.to_thread(reader.get)
            return None if item is None else item[0]
        return next_live, source.fps or 30.0, source.close, None
    frames = iter(source)

    async def next_file() -> np.ndarray | None:
        item = await asyncio.to_thread(next, frames, None)
        return None if item is None else item[0]
    return next_file, source.fps or 30.0, source.close, source.audio


def file_audio(audio: AudioInput, clock: MediaClock) -> PacedAudioTrack:
    """A file's soundtrack as a track on ``clock``: Opus packets as they are, anything else decoded
    (aiortc encodes it to Opus: WebRTC has no other common codec)."""
    if audio.codec == "opus":
        container, stream = audio.open()
        shift = round(audio.origin / stream.time_base)

        def packets() -> Any:
            try:
                for packet in container.demux(stream):
                    if packet.pts is not None and packet.size:
                        packet.pts -= shift
                        yield packet
            finally:
                container.close()
        chunks: Any = packets()
    else:
        chunks = decoded(audio)

    async def next_chunk() -> av.AudioFrame | av.Packet | None:
        return await asyncio.to_thread(next, chunks, None)
    return PacedAudioTrack(next_chunk, clock)


async def send(source: Any, to: str, *, codec: str = "vp8", duration: float = 0.0, fps: float | None = None,
               show_every: float = 1.0, out: Callable[[str], None] = print, token: str | None = None) -> int:
    """Send ``source`` to a WHIP URL, read the processed video back, print fps and round-trip latency."""
    from ..media.sources import SourceError

    try:
        next_image, source_fps, close_source, audio = _image_feed(source)
    except SourceError as exc:
        out(f"ooblex send: {exc}")
        return 2
    clock = MediaClock()
    track = ImageTrack(next_image, fps=fps or source_fps, clock=clock)
    if audio is not None and fps not in (None, source_fps):
        out(f"ooblex send: --fps {fps} is not the file's {source_fps:g}: its sound would drift, so it is not sent")
        audio = None
    client = WhipClient(to, track, codec=codec, token=token, audio=file_audio(audio, clock) if audio else None)
    audio_back = AudioCount()
    client.tap_audio(audio_back)
    try:
        await client.start()
        await client.wait_connected()
    except (WebRTCError, httpx.HTTPError, asyncio.TimeoutError) as exc:
        out(f"ooblex send: {exc}")
        close_source()
        return 1
    out(f"ooblex send: connected, stream {client.stream_id} "
        f"(watch: {httpx.URL(to).join('/mjpeg/' + str(client.stream_id))})")
    trips = RoundTrips(track)
    reader = asyncio.create_task(trips.consume(client.remote))
    started = time.monotonic()
    try:
        await _report(track, trips, client, started, duration, show_every, out)
    finally:
        await cancel(reader)
        await client.close()
        close_source()
    summary = percentiles_ms(trips.rtts)
    sound = f"; audio back {audio_back.seconds:.1f} s" if audio is not None else ""
    out(f"ooblex send: sent {track.count} frames, received {trips.received}, round trip ms {summary or 'n/a'}{sound}")
    return 0


class AudioCount:
    """Counts returned Opus packets (without decoding them): how many seconds of sound came back."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last = 0

    def __call__(self, packet: AudioPacket) -> None:
        if self.first is None:
            self.first = packet.timestamp
        self.last = max(self.last, packet.timestamp)

    @property
    def seconds(self) -> float:
        return 0.0 if self.first is None else (self.last - self.first) / OPUS_RATE


async def _report(track: ImageTrack, trips: RoundTrips, client: _Client, started: float, duration: float,
                  every: float, out: Callable[[str], None]) -> None:
    last_sent, last_recv, last_rtt = 0, 0, 0
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        while track.readyState == "live" and client.pc.connectionState == "connected":
            await asyncio.sleep(every)
            rtts = trips.rtts[last_rtt:]
            p = percentiles_ms(rtts)
            rtt = f"round trip p50 {p['p50']} ms p95 {p['p95']} ms" if p else "round trip n/a (picture changed)"
            sent, received = (track.count - last_sent) / every, (trips.received - last_recv) / every
            out(f"sent {sent:5.1f} fps  received {received:5.1f} fps  {rtt}")
            last_sent, last_recv, last_rtt = track.count, trips.received, len(trips.rtts)
            if duration and time.monotonic() - started >= duration:
                return
