"""Less Python per packet and per frame on aiortc/aioice's receive path (``benchmarks/capacity.py``).

Two steps aiortc and aioice take on every packet or frame do more than they need to (together ~0.02 ms
of a 640x480 frame's ~4 ms in a gateway: small, measured in docs/performance.md):

- aioice parses every UDP datagram as a STUN message first, and hands it on as media when parsing
  raises. ``datagram_received`` below demultiplexes by the first byte instead (RFC 7983: STUN is
  0-3; DTLS, RTP and RTCP are above): media skips the parse and its exception, STUN is parsed as
  before. Media can no longer be taken for STUN by chance either.
- aiortc's decoder thread hands each decoded frame to the event loop with
  ``run_coroutine_threadsafe(queue.put(frame))``: a coroutine, a task and two futures per frame, and
  one more pass of the loop before the track's reader wakes. ``decoder_worker`` below hands it over
  with ``call_soon_threadsafe(queue.put_nowait, frame)`` (the queue is aiortc's unbounded one): the
  same frames in the same order, the reader woken in the loop's next pass.

``install()`` puts both in place (process-wide, once; receivers started later use them), through
``internals.replace``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver
import av
from aioice import stun

from . import internals

log = logging.getLogger("ooblex.webrtc")
#: RFC 7983: a datagram whose first byte is at most this is STUN; anything above is DTLS, RTP or RTCP.
STUN_FIRST_BYTE_MAX = 3


def datagram_received(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
    """aioice's ``StunProtocol.datagram_received``, with media passed on before any STUN parsing."""
    if data and data[0] > STUN_FIRST_BYTE_MAX:
        self.receiver.data_received(data, self.local_candidate.component)
        return
    addr = (addr[0], addr[1])  # an IPv6 four-tuple as a two-tuple, as aioice does
    try:
        message = stun.parse_message(data)
    except ValueError:
        self.receiver.data_received(data, self.local_candidate.component)
        return
    if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR) and message.transaction_id in \
            self.transactions:
        self.transactions[message.transaction_id].response_received(message, addr)
    elif message.message_class == stun.Class.REQUEST:
        self.receiver.request_received(message, addr, self)


def decoder_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue, output_q: asyncio.Queue,
                   decode_error: threading.Event) -> None:
    """aiortc's decoder thread (``rtcrtpreceiver.decoder_worker``), each frame handed over without a task."""
    codec_name, decoder = None, None
    while True:
        task = input_q.get()
        if task is None:
            loop.call_soon_threadsafe(output_q.put_nowait, None)  # the track ends
            return
        codec, encoded_frame = task
        if codec.name != codec_name:
            decoder, codec_name = aiortc.rtcrtpreceiver.get_decoder(codec), codec.name
        try:
            frames = decoder.decode(encoded_frame)
        except av.FFmpegError as exc:  # the decoder's state is kept: resetting it would fail until a keyframe
            log.warning("failed to decode a %s frame: %s", codec.name, exc)
            decode_error.set()
            continue
        for frame in frames:
            loop.call_soon_threadsafe(output_q.put_nowait, frame)


@functools.cache
def install() -> None:
    """Both shortcuts, process-wide (idempotent): call before the peer connections start."""
    internals.replace(aioice.ice.StunProtocol, "datagram_received", datagram_received)
    internals.replace(aiortc.rtcrtpreceiver, "decoder_worker", decoder_worker)
