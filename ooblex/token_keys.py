"""Which keys sign bearer tokens: a keyring of key ids (``kid``), so keys rotate and tokens can be revoked.

A key is a random id. What signs with it is derived from the cluster secret and that id
(``derive(secret, "token/<kid>")``), so the ring itself holds nothing secret. The ring lists the
ids that are valid and the one that signs new tokens, and lives where every gateway reads it:

- a file (``OOBLEX_TOKEN_KEYS=/path/keys.json``), if one is set;
- else the cluster's Redis store (key ``ooblex:token-keys``), where there is one;
- else nowhere: one built-in key (id ``"0"``) signs and verifies every token.

The ring is a document signed with its own derived key and numbered (``seq``): a reader ignores an
unsigned, forged or older (replayed) ring and keeps the newest one it verified; a place that never
held a ring means the built-in one, and a ring that fails to verify before any did means no valid
key at all (fail closed). ``ooblex token rotate`` adds a key and makes it current (tokens signed with
the others stay valid); ``ooblex token revoke KID`` removes one, and every token signed with it fails
at its next check: gateways look at a file's metadata on every check (and read it every
``token_keys_refresh_s``), and read the store every ``token_keys_refresh_s`` in a background
thread, so a check never waits for Redis.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster.signing import SignatureError, sign, verify, warn_once
from .errors import BadRequest, Unavailable
from .secret import derive

log = logging.getLogger("ooblex.tokens")
BUILTIN = "0"
KIND = PURPOSE = "token-keys"
STORE_KEY = "ooblex:token-keys"
KID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How often a gateway reads the ring from the store by default (``Settings.token_keys_refresh_s``).
REFRESH_S = 1.0
NO_PLACE = ("no place to keep token keys: set OOBLEX_TOKEN_KEYS=/path/keys.json (one gateway, or a file every "
            "gateway reads) or a cluster store (--store / OOBLEX_STORE), the same as the gateways'")


@dataclass(frozen=True)
class Ring:
    """Valid key ids (each with when it was made) and the one new tokens are signed with."""

    current: str
    keys: dict[str, float] = field(default_factory=dict)
    seq: int = 0

    def rotated(self, revoke_old: bool = False) -> Ring:
        """A ring with a new current key; the older keys stay valid unless ``revoke_old``."""
        kid = secrets.token_urlsafe(9)
        kept = {} if revoke_old else self.keys
        return Ring(kid, {**kept, kid: round(time.time(), 3)}, self._next_seq())

    def revoked(self, kids: list[str]) -> Ring:
        """A ring without ``kids``: every token signed with one of them stops being valid."""
        unknown = [k for k in kids if k not in self.keys]
        if unknown:
            raise BadRequest(f"no such token key: {', '.join(unknown)} (valid: {', '.join(self.keys)})")
        if self.current in kids:
            raise BadRequest(f"key {self.current!r} signs new tokens: make another current first "
                             "(ooblex token rotate), or revoke every older key with ooblex token rotate --revoke-old")
        return Ring(self.current, {k: t for k, t in self.keys.items() if k not in kids}, self._next_seq())

    def signed(self, secret: bytes) -> dict[str, Any]:
        return sign({"kind": KIND, "seq": self.seq, "current": self.current, "keys": self.keys}, secret, PURPOSE)

    @classmethod
    def verified(cls, doc: Any, secret: bytes) -> Ring:
        """The ring in ``doc`` if it is signed as one, else ``SignatureError``/``ValueError``."""
        verify(doc, secret, PURPOSE, what="the token keyring")
        keys, current = doc.get("keys"), doc.get("current")
        if doc.get("kind") != KIND or not isinstance(keys, dict) or current not in keys \
                or not all(isinstance(k, str) and KID.fullmatch(k) for k in keys):
            raise ValueError("the token keyring is signed but malformed")
        return cls(current, {k: float(t) for k, t in keys.items()}, int(doc["seq"]))

    def describe(self) -> dict[str, Any]:
        return {"current": self.current, "keys": [{"kid": k, "created": t} for k, t in self.keys.items()]}

    def _next_seq(self) -> int:
        return max(self.seq + 1, time.time_ns() // 1000)


def signing_key(secret: bytes, kid: str) -> bytes:
    """The HMAC key of key id ``kid``: derived from the secret, so a ring never holds one."""
    return derive(secret, f"token/{kid}")


BUILTIN_RING = Ring(BUILTIN, {BUILTIN: 0.0})
#: What a reader trusts when a ring is there but no ring ever verified: nothing.
NO_KEYS = Ring("")


class Keys:
    """Where the ring is kept. ``ring()`` is cheap enough to call for every token checked."""

    where = "built in"

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._last: Ring | None = None

    def ring(self) -> Ring:
        return BUILTIN_RING

    def signing_ring(self) -> Ring:
        """The ring to sign new tokens with (a store that cannot be read: the last known or built-in key,
        which gateways still check)."""
        return self.ring()

    def update(self, change: Callable[[Ring], Ring]) -> Ring:
        """Apply ``change`` to the stored ring (the built-in one if none) and store the result."""
        raise BadRequest(NO_PLACE)

    def _accept(self, raw: bytes | None) -> Ring:
        """The ring to trust after reading ``raw`` (None: nothing stored) from this place."""
        last = self._last
        if raw is None:
            return last or BUILTIN_RING
        try:
            ring = Ring.verified(json.loads(raw), self.secret)
        except (SignatureError, ValueError, KeyError, TypeError) as exc:
            warn_once(f"token-keys:{self.where}:{exc}", "ignoring the token keyring in %s: %s", self.where, exc)
            return last or NO_KEYS
        if last is not None and ring.seq < last.seq:
            warn_once(f"token-keys:{self.where}:old:{ring.seq}", "ignoring an older token keyring in %s "
                      "(seq %d, have %d): replayed", self.where, ring.seq, last.seq)
            return last
        self._last = ring
        return ring


class FileKeys(Keys):
    """A ring in a JSON file, re-read whenever the file's metadata changes, and every ``refresh_s`` (two
    writes within one clock tick may leave the metadata as it was)."""

    def __init__(self, secret: bytes, path: str | Path, refresh_s: float = REFRESH_S) -> None:
        super().__init__(secret)
        self.path = Path(path).expanduser()
        self.where, self.refresh_s = str(self.path), refresh_s
        self._seen: tuple[int, int, int] | None = None
        self._ring, self._read_at = BUILTIN_RING, 0.0

    def ring(self) -> Ring:
        try:
            st = self.path.stat()
            seen: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = None
        if seen != self._seen or time.monotonic() - self._read_at > self.refresh_s:
            try:
                raw = self.path.read_bytes() if seen is not None else None
            except OSError as exc:
                raw = f"unreadable: {exc.strerror}".encode()  # refused like any ring that does not verify
            self._ring, self._seen, self._read_at = self._accept(raw), seen, time.monotonic()
        return self._ring

    def update(self, change: Callable[[Ring], Ring]) -> Ring:
        ring = change(self.ring())
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(ring.signed(self.secret), indent=1))
        os.replace(tmp, self.path)
        return ring


class StoreKeys(Keys):
    """A ring in the cluster's Redis store. ``watch``: re-read every ``refresh_s`` in a background
    thread (gateways: a check never waits for Redis); else read when older than ``refresh_s``."""

    def __init__(self, secret: bytes, url: str, refresh_s: float = REFRESH_S, watch: bool = False) -> None:
        import redis

        super().__init__(secret)
        self.url, self.refresh_s, self.watch = url, refresh_s, watch
        self.where = "the cluster store"
        self.r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._ring: Ring | None = None
        self._read_at = 0.0
        self._poller: threading.Thread | None = None
        self._lock = threading.Lock()

    def ring(self) -> Ring:
        ring = self._ring
        if ring is not None and (self.watch or time.monotonic() - self._read_at <= self.refresh_s):
            return ring
        with self._lock:
            if not self.watch:
                self._refresh()
            elif self._poller is None:  # first use: read now, then in the background
                self._refresh()
                self._poller = threading.Thread(target=_poll, args=(weakref.ref(self),), name="ooblex-token-keys",
                                                daemon=True)
                self._poller.start()
            if self._ring is None:
                raise Unavailable("cannot read the token keys from the cluster store now; try again")
            return self._ring

    def signing_ring(self) -> Ring:
        try:
            return self.ring()
        except Unavailable:
            log.warning("cannot read the token keyring from the store: signing with the %s key",
                        "last known" if self._last else "built-in")
            return self._last or BUILTIN_RING

    def update(self, change: Callable[[Ring], Ring]) -> Ring:
        import redis

        try:
            with self.r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(STORE_KEY)
                        ring = change(self._accept(pipe.get(STORE_KEY)))
                        pipe.multi()
                        pipe.set(STORE_KEY, json.dumps(ring.signed(self.secret)))
                        pipe.execute()
                        return ring
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise Unavailable(f"cannot update the token keys in the cluster store: {exc}") from None

    def _refresh(self) -> None:
        """Read the ring; through a store outage keep the last one read (if any)."""
        import redis

        try:
            raw = self.r.get(STORE_KEY)
        except redis.RedisError as exc:
            warn_once(f"token-keys:store:{exc}", "cannot read the token keyring from the store: %s", exc)
            return
        self._ring, self._read_at = self._accept(raw), time.monotonic()


def _poll(ref: weakref.ref[StoreKeys]) -> None:
    """Re-read a watched ring every ``refresh_s`` until its owner is gone (checks read ``_ring`` meanwhile)."""
    while (keys := ref()) is not None:
        interval = keys.refresh_s
        del keys
        time.sleep(interval)
        if (keys := ref()) is None:
            return
        try:
            keys._refresh()
        except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
            log.exception("token keyring refresh failed")
        del keys


def keys_for(secret: bytes, file: str = "", store: str | None = None, refresh_s: float = REFRESH_S,
             watch: bool = False) -> Keys:
    """The place of the ring: ``file`` if set, else the Redis ``store``, else the built-in key."""
    if file:
        return FileKeys(secret, file, refresh_s)
    if store:
        return StoreKeys(secret, store, refresh_s, watch)
    return Keys(secret)
