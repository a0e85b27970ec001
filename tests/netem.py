"""Delay and jitter for forwarded packets, in user space: this kernel has no ``netem`` qdisc.

Run inside a router namespace whose iptables send packets to an NFQUEUE:

    iptables -A FORWARD -p udp -j NFQUEUE --queue-num 0
    python tests/netem.py --queue 0 --delay-ms 40 --jitter-ms 10

Each packet is held ``delay ± jitter`` ms (uniform), then accepted. Packets leave in the order
they came: a real path's delay varies with its queues but does not reorder a flow, while
``netem``'s per-packet jitter would reorder packets sent a millisecond apart (every packet of a
video frame) and so test reordering, not delay. Loss (``-m statistic``) and rate (``tbf``) are
the kernel's; this only delays. The verdicts go back over netlink (NFQUEUE protocol, no library
needed); only packet ids are copied to user space (``NFQNL_COPY_META``).
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


class Queue:
    """One NFQUEUE, bound on a netlink socket."""

    def __init__(self, number: int, maxlen: int = 4096) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0xFFFF, NFQNL_COPY_META))
                      + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))

    def _message(self, kind: int, payload: bytes, flags: int) -> bytes:
        self._seq += 1
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.number) + payload
        return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, self._seq, 0) + body

    def _request(self, kind: int, payload: bytes) -> None:
        """Send a config message and check the kernel's acknowledgement."""
        self.sock.send(self._message(kind, payload, NLM_F_REQUEST | NLM_F_ACK))
        reply = self.sock.recv(65536)
        _, rtype, _, _, _ = struct.unpack_from("=IHHII", reply)
        if rtype == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", reply, 16)
            if error:
                raise OSError(-error, f"NFQUEUE {self.number} config failed")

    def packets(self) -> list[int]:
        """Ids of the packets that arrived (non-blocking; [] when none)."""
        ids = []
        try:
            data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return ids
        pos = 0
        while pos + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, pos)
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                attr = pos + 20  # nlmsghdr + nfgenmsg
                while attr + 4 <= pos + length:
                    alen, atype = struct.unpack_from("=HH", data, attr)
                    if atype & 0x7FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, attr + 4)[0])
                        break
                    attr += (alen + 3) & ~3
            pos += (length + 3) & ~3
        return ids

    def accept(self, packet_id: int) -> None:
        self.sock.send(self._message(NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR,
                                                             struct.pack("!II", NF_ACCEPT, packet_id)), NLM_F_REQUEST))


def run(queue: Queue, delay_s: float, jitter_s: float) -> None:
    held: collections.deque[tuple[float, int]] = collections.deque()
    last_release = 0.0
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        select.select([queue.sock], [], [], timeout)
        now = time.monotonic()
        for packet_id in queue.packets():
            last_release = max(last_release, now + random.uniform(delay_s - jitter_s, delay_s + jitter_s))
            held.append((last_release, packet_id))
        while held and held[0][0] <= time.monotonic():
            queue.accept(held.popleft()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    args = parser.parse_args()
    queue = Queue(args.queue)
    print("netem: ready", flush=True)
    try:
        run(queue, args.delay_ms / 1e3, args.jitter_ms / 1e3)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
