"""What forward error correction costs in CPU: RED + ULPFEC per frame, sending and receiving.

    python benchmarks/fec.py [--packets 5] [--size 1150] [--runs 2000]

Prints µs per frame (``--packets`` RTP packets of ``--size`` payload bytes, one SSRC) for: the
sender with no parity (renumbering, RED envelope), the sender at 3 % reported loss (one parity
packet per 4 media packets), the receiver unwrapping RED, and the receiver rebuilding one lost
packet from the parity. Set against the ~5.5 ms of gateway CPU a 640x480 frame costs
(``benchmarks/capacity.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ooblex.webrtc import red, ulpfec  # noqa: E402
from ooblex.webrtc.protection import _Sender  # noqa: E402

MEDIA_PT, RTX_PT, RED_PT, FEC_PT, SSRC = 96, 97, 123, 124, 0x1234


def frame(packets: int, size: int, first: int = 0) -> list[bytes]:
    """One frame's RTP packets from sequence number ``first``, with a header extension, the last one marked."""
    rng = random.Random(first)
    return [bytes([0x90, MEDIA_PT | (0x80 if i == packets - 1 else 0)]) + ((first + i) & 0xFFFF).to_bytes(2, "big")
            + (9000).to_bytes(4, "big") + SSRC.to_bytes(4, "big") + bytes([0xBE, 0xDE, 0, 1, 0x12, 1, 2, 3])
            + rng.randbytes(size) for i in range(packets)]


def sending_us(sender: _Sender, packets: int, size: int, runs: int) -> float:
    """µs per frame through ``sender``, each run a new frame (a number seen before would be a resend)."""
    frames = iter([frame(packets, size, first=sender.next_seq + r * packets) for r in range(runs)])
    return per_frame_us(lambda: [sender.outgoing(p) for p in next(frames)], runs)


def per_frame_us(fn, runs: int) -> float:
    return timeit.timeit(fn, number=runs) / runs * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=5)
    parser.add_argument("--size", type=int, default=1150)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    sender = _Sender(RED_PT, FEC_PT, {MEDIA_PT}, RTX_PT)
    plain = sending_us(sender, args.packets, args.size, args.runs)
    sender = _Sender(RED_PT, FEC_PT, {MEDIA_PT}, RTX_PT)
    sender.note_report(0, 0)
    sender.note_report(1000, 30)  # 3 % loss reported
    protected = sending_us(sender, args.packets, args.size, args.runs)
    sent = [sender.outgoing(p) for p in frame(args.packets, args.size, first=sender.next_seq)]
    wrapped = [p for out in sent for p in out]
    unwrap = per_frame_us(lambda: [red.unwrap(p) for p in wrapped], args.runs)
    media = [red.unwrap(out[0]) for out in sent]
    parity = red.unwrap(sent[-1][1])
    payload = parity[red.header_length(parity):]

    def rebuild() -> None:
        recovery = ulpfec.Recovery()
        for p in media[1:]:
            recovery.add_media(p)
        assert recovery.add_parity(payload, SSRC) == media[:1]
    rebuilt = per_frame_us(rebuild, args.runs)
    print(f"{args.packets} packets of {args.size} bytes per frame ({platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()})\n")
    print("| step | µs per frame |\n| --- | ---: |")
    print(f"| send, no parity (renumber, RED) | {plain:.1f} |")
    print(f"| send at 3 % loss ({len(sent[-1]) - 1} parity packets) | {protected:.1f} |")
    print(f"| receive: unwrap RED | {unwrap:.1f} |")
    print(f"| receive: rebuild one lost packet | {rebuilt:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
