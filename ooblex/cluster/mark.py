"""The cluster's high-water mark: one signed document naming the current state of every deployed thread.

A reader never goes back to an older ``ThreadState`` than one it has seen, but a reader that starts
after someone wrote an old signed state back to the store has seen none. So every state change also
writes ``reg:mark``, in the same transaction and signed with its own key: a ``counter`` that only
grows (above the last one, the clock in microseconds and the writer's floor) and, per thread, the
``seq`` and signature of its current state. A reader acts on a stored state only if the mark it
accepted names exactly that state, and accepts a mark only if its counter is not below its floor:
the highest counter it has accepted (kept in memory, and on workers in a file that survives
restarts), raised by what live peers report in their signed, expiring status records (``mark``).
An old mark written back with its old states is thereby refused by every reader that has seen, or
can ask a live peer that has seen, a newer one. What it cannot do is in docs/security.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .signing import MARK, SignatureError, sign, verify, warn_once

KIND = "cluster-mark"
log = logging.getLogger("ooblex.cluster")


@dataclass(frozen=True)
class Mark:
    counter: int = 0
    #: thread name -> (seq, signature) of its current signed state
    threads: dict[str, tuple[int, str]] = field(default_factory=dict)

    def then(self, name: str, state: dict[str, Any], floor: int = 0) -> Mark:
        """The next mark: ``state`` (a signed state document) as ``name``'s, with a counter above this
        one's, the clock's (microseconds: a store that lost its data still gets marks above the old
        ones) and ``floor`` (the highest counter the writer knows of)."""
        counter = max(self.counter + 1, time.time_ns() // 1000, floor + 1)
        return Mark(counter, {**self.threads, name: (int(state["seq"]), str(state["signature"]))})

    def signed(self, secret: bytes) -> dict[str, Any]:
        return sign({"kind": KIND, "counter": self.counter,
                     "threads": {n: [seq, sig] for n, (seq, sig) in sorted(self.threads.items())}}, secret, MARK)

    @classmethod
    def verified(cls, doc: Any, secret: bytes | None) -> Mark:
        """The mark in ``doc`` if it is signed as one, else ``SignatureError``."""
        verify(doc, secret, MARK, what="the store's high-water mark")
        if doc.get("kind") != KIND:
            raise SignatureError(f"refusing the store's high-water mark: it is signed as {doc.get('kind')!r}")
        return cls(int(doc["counter"]), {str(n): (int(seq), str(sig)) for n, (seq, sig) in doc["threads"].items()})


class MarkTracker:
    """One reader's floor and the newest mark it accepted. ``floor_file``: where the floor survives restarts."""

    def __init__(self, floor_file: Path | None = None) -> None:
        self.file = floor_file
        self._lock = threading.Lock()  # gateways read the store from several threads: the floor only rises
        self.accepted: Mark | None = None
        self.floor = self._read()
        #: Why the store's mark is not trusted now (None: it is, or there is none).
        self.refused: str | None = None

    def update(self, raw: bytes | None, secret: bytes | None, vouched: Callable[[], int]) -> Mark | None:
        """Accept the stored mark ``raw`` if it verifies and is not below the floor, nor below what live
        peers report (``vouched()``, asked only before the floor is raised); return the accepted one."""
        if raw is None:
            self.refused = None
            if self.accepted is not None:
                warn_once("mark:gone", "the store's high-water mark is gone; keeping the last one (counter %d)",
                          self.accepted.counter)
            return self.accepted
        try:
            mark = Mark.verified(json.loads(raw), secret)
        except (SignatureError, ValueError, KeyError, TypeError) as exc:
            return self._refuse(f"{exc}" if isinstance(exc, SignatureError) else
                                f"refusing the store's high-water mark: malformed ({type(exc).__name__})")
        if mark == self.accepted:
            self.refused = None
            return mark
        if mark.counter < self.floor:
            return self._refuse(f"refusing the store's high-water mark: its counter {mark.counter} is below "
                                f"{self.floor}, the newest this machine has seen (an old mark written back)")
        if mark.counter > self.floor:
            peers = vouched()
            if mark.counter < peers:
                self._raise(peers)
                return self._refuse(f"refusing the store's high-water mark: its counter {mark.counter} is below "
                                    f"{peers}, which a live worker or gateway reports (an old mark written back)")
        self.accept(mark)
        return mark

    def accept(self, mark: Mark) -> None:
        with self._lock:
            if self.accepted is None or mark.counter >= self.accepted.counter:
                self.accepted, self.refused = mark, None
        self._raise(mark.counter)

    def _refuse(self, why: str) -> Mark | None:
        self.refused = why
        warn_once(f"mark:{why}", "%s; acting on the last accepted one", why)
        return self.accepted

    def _raise(self, counter: int) -> None:
        with self._lock:
            if counter > self.floor:
                self.floor = counter
                self._write(counter)

    def _write(self, counter: int) -> None:
        if self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.part")
            # workers sharing a cache share the file: it keeps the highest counter any of them accepted
            tmp.write_text(json.dumps({"counter": max(counter, self._read())}))
            os.replace(tmp, self.file)
        except OSError as exc:
            warn_once(f"mark:file:{exc.errno}", "cannot keep the high-water mark's floor on disk (%s): "
                      "it lasts until this process stops", exc.strerror)

    def _read(self) -> int:
        if self.file is None:
            return 0
        try:
            return int(json.loads(self.file.read_text())["counter"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable high-water mark floor file (%s)", type(exc).__name__)
            return 0
