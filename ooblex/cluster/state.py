"""The signed state of one deployed thread: which versions workers serve, which one is active, or removed.

The state names each served version's manifest by its signature, so it pins the exact manifest:
a validly signed but different one (an older deploy's, under a reused version number) is refused.

Deploy, activate (rollback, roll forward) and undeploy each write a new ``ThreadState``
with a higher ``seq``, signed with the key derived for ``"state"``. A reader (``StateTracker``)
acts on a state only when its signature holds and it names the thread it is stored under, and
never goes back to an older ``seq`` than one it has accepted: an unsigned, forged, moved or
replayed state changes nothing (and is logged once). Undeploy leaves a signed tombstone
(``removed``) instead of deleting the key, and a reader keeps its last verified state when the
key disappears, so deleting keys from the store does not undeploy anything either.

A reader that starts later has remembered nothing: it acts on a stored state only if the cluster's
high-water mark (``mark.Mark``) it accepted names exactly that state (its ``seq`` and signature).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .signing import STATE, SignatureError, sign, verify, warn_once

KIND = "thread-state"


@dataclass(frozen=True)
class ThreadState:
    name: str
    seq: int = 0
    active: int | None = None
    #: version -> the signature of its manifest
    serving: dict[int, str] = field(default_factory=dict)
    removed: bool = False

    def then(self, **changes: Any) -> ThreadState:
        """The next state: ``changes`` applied and a ``seq`` above this one's and above the clock
        (microseconds), so a state written after the store lost its data still outranks the ones
        readers remember."""
        return replace(self, seq=max(self.seq + 1, time.time_ns() // 1000), **changes)

    def signed(self, secret: bytes) -> dict[str, Any]:
        return sign({"kind": KIND, "name": self.name, "seq": self.seq, "active": self.active,
                     "serving": {str(v): sig for v, sig in sorted(self.serving.items())}, "removed": self.removed},
                    secret, STATE)

    @classmethod
    def verified(cls, doc: Any, name: str, secret: bytes | None) -> ThreadState:
        """The state in ``doc`` if it is signed for thread ``name``, else ``SignatureError``."""
        verify(doc, secret, STATE, what=f"state of {name!r}")
        if doc.get("kind") != KIND or doc.get("name") != name:
            raise SignatureError(f"refusing the state stored for {name!r}: it is signed for "
                                 f"{doc.get('kind')} {doc.get('name')!r} (copied from another key)")
        return cls(name, int(doc["seq"]), doc["active"], {int(v): str(sig) for v, sig in doc["serving"].items()},
                   bool(doc["removed"]))


class StateTracker:
    """One reader's view: the newest verified state of each thread it has seen."""

    def __init__(self) -> None:
        self.accepted: dict[str, ThreadState] = {}

    def update(self, name: str, raw: bytes | None, secret: bytes | None,
               pinned: tuple[int, str] | None) -> ThreadState | None:
        """Accept the stored state ``raw`` of ``name`` if it verifies, is the one the high-water mark names
        (``pinned``: its seq and signature there) and is not older; return the current one."""
        last = self.accepted.get(name)
        if raw is None:
            if last is not None and not last.removed:
                warn_once(f"state:{name}:gone", "the state of %r is gone from the store; keeping the last "
                          "verified one (seq %d)", name, last.seq)
            return last
        try:
            doc = json.loads(raw)
            state = ThreadState.verified(doc, name, secret)
        except (SignatureError, ValueError, KeyError, TypeError) as exc:
            warn_once(f"state:{name}:{exc}", "ignoring the stored state of %r: %s", name, exc)
            return last
        if pinned is None or doc["signature"] != pinned[1]:
            why = _unpinned(state, pinned)
            warn_once(f"state:{name}:unpinned:{state.seq}:{pinned}", "ignoring the stored state of %r: %s", name, why)
            return last
        if last is not None and state.seq < last.seq:
            warn_once(f"state:{name}:old:{state.seq}", "ignoring an older state of %r (seq %d, have %d): replayed",
                      name, state.seq, last.seq)
            return last
        self.accepted[name] = state
        return state


def _unpinned(state: ThreadState, pinned: tuple[int, str] | None) -> str:
    """Why ``state`` is not the one the high-water mark names (``pinned``)."""
    if pinned is None:
        return "no trusted high-water mark names a state of it"
    if state.seq < pinned[0]:
        return f"it is older than the state the high-water mark names (seq {state.seq} < {pinned[0]}): replayed"
    return f"it is not the state the high-water mark names (seq {pinned[0]})"
