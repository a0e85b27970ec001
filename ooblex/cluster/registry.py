"""The cluster's Redis store: signed manifests and thread states, content-addressed blobs, status records.

Keys (all under ``ooblex:``):
- ``blob:<sha256>``: hash of 1 MiB chunks (``0``, ``1``, ...) plus ``size``, ``chunks`` and
  ``created``; blobs no manifest refers to are collected after an undeploy (``collect_garbage``);
- ``reg:names``: set of thread names ever deployed (an index: a name counts only with a verified state);
- ``reg:<name>``: hash version -> manifest, signed with the ``artifact`` key over its name and
  version too, so a manifest copied under another name or version is refused (``verified``);
- ``reg:<name>:seq``: the last version number given out;
- ``reg:<name>:state``: the thread's signed state (``state.ThreadState``: active version, versions
  served with their manifests' signatures, removed, sequence number). Deploy, activate/rollback,
  and undeploy (which leaves a signed tombstone) each write a new one; readers ignore
  unsigned, forged and older (replayed) states, and keep the last one they verified;
- ``reg:mark``: the cluster's signed high-water mark (``mark.Mark``): a growing counter and, per
  thread, the seq and signature of its current state, written with every state; readers act only
  on states it names, and refuse a mark below the highest counter they have seen or a live
  peer's record reports (so an old state written back with its old mark is refused too);
- ``reg:rev``: bumped on every change, so workers and gateways notice within one poll;
- ``<kind>:<id>`` and ``<kind>s`` (kind ``worker`` or ``gateway``): status records, signed with the
  ``record`` key over their kind, id and expiry, and a sorted set id -> expiry; readers drop
  unsigned, forged, moved and expired (replayed) records.

Without ``OOBLEX_SECRET`` nothing can be written, and readers see no thread and no record.
A synchronous client on purpose: ``ob.deploy`` is called from notebooks (which already run
an event loop); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from ..errors import NotFound
from ..secret import MissingSecret
from ..thread import TensorThread
from .mark import Mark, MarkTracker
from .signing import ARTIFACT, RECORD, SignatureError, get_secret, require_secret, sha256, sign, verify, warn_once
from .state import StateTracker, ThreadState

CHUNK = 1 << 20
P = "ooblex"
MARK_KEY = f"{P}:reg:mark"
#: Unreferenced blobs younger than this are kept: a deploy uploads its blobs before its manifest.
GC_GRACE_S = 600.0
TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
#: Manifest fields that say where a version comes from (signed with the rest, shown by status pages).
ABOUT = ("license", "deployed_by")


class RegistryError(NotFound):
    """A thread, version or blob is not in the registry."""


class Registry:
    """Read and write deployed tensor threads in the cluster's Redis store.

    One instance remembers the newest thread states it verified (``states``) and the newest
    high-water mark (``marks``; its floor also in ``floor_file`` if given): long-lived readers
    (workers, gateways) thereby ignore replayed older states, and new ones states older than the mark.
    """

    def __init__(self, store_url: str, secret: str | bytes | None = None, floor_file: Path | None = None) -> None:
        self.url = store_url
        self.r = redis.Redis.from_url(store_url, socket_connect_timeout=3, socket_timeout=30)
        self.secret = get_secret(secret)
        self.states = StateTracker()
        self.marks = MarkTracker(floor_file)

    def close(self) -> None:
        self.r.close()

    def need_secret(self, action: str) -> bytes:
        """The secret, or ``MissingSecret`` saying that ``action`` needs it."""
        try:
            return require_secret(self.secret)
        except MissingSecret as exc:
            raise MissingSecret(f"cannot {action}: {exc}") from None
    # --- blobs ---------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` once (content-addressed); returns its SHA-256."""
        digest = sha256(data)
        self.put_chunks(digest, len(data), (data[i:i + CHUNK] for i in range(0, len(data), CHUNK)))
        return digest

    def put_file(self, path: str | Path) -> dict[str, Any]:
        """Store a weight file chunk by chunk (never whole in memory); returns its manifest entry."""
        path = Path(path)
        entry = file_entry(path)
        digest, size = entry["sha256"], entry["size"]

        def chunks() -> Any:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")

        self.put_chunks(digest, size, chunks())
        return entry

    def put_chunks(self, digest: str, size: int, chunks: Any) -> None:
        """Store a blob from an iterable of byte chunks whose SHA-256 (``digest``) the caller has checked."""
        key = f"{P}:blob:{digest}"
        if self.r.hget(key, "complete") == b"1":
            return
        self.r.hset(key, "created", time.time())
        n = 0
        for n, chunk in enumerate(chunks, 1):
            self.r.hset(key, str(n - 1), chunk)
        self.r.hset(key, mapping={"size": size, "chunks": n, "complete": 1})

    def collect_garbage(self, grace_s: float = GC_GRACE_S) -> int:
        """Delete blobs that no stored manifest refers to (and older than ``grace_s``); returns how many."""
        referenced = set()
        for raw in self.r.smembers(f"{P}:reg:names"):
            for m in self.versions(raw.decode()).values():
                if not isinstance(m, dict):
                    continue
                referenced.add(m.get("code"))
                referenced.update(w.get("sha256") for w in m.get("weights", []))
        deleted = 0
        for key in self.r.scan_iter(match=f"{P}:blob:*", count=500):
            digest = key.decode().rsplit(":", 1)[1]
            created = float(self.r.hget(key, "created") or 0)
            if digest not in referenced and time.time() - created >= grace_s:
                deleted += self.r.delete(key)
        return deleted

    def get_blob(self, digest: str, dest: Path | None = None) -> bytes | Path:
        """Fetch a blob, verifying its hash; to ``dest`` (atomically) if given, else as bytes."""
        key = f"{P}:blob:{digest}"
        meta = self.r.hmget(key, "chunks", "complete")
        if meta[1] != b"1":
            raise RegistryError(f"blob {digest[:12]} is missing from the store")
        h, parts = hashlib.sha256(), []
        tmp = dest.with_suffix(".part") if dest is not None else None
        out = tmp.open("wb") if tmp is not None else None
        try:
            for i in range(int(meta[0])):
                chunk = self.r.hget(key, str(i)) or b""
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
                else:
                    parts.append(chunk)
        finally:
            if out is not None:
                out.close()
        if h.hexdigest() != digest:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise SignatureError(f"refusing blob {digest[:12]}: its content does not match its hash (tampered)")
        if tmp is not None and dest is not None:
            tmp.replace(dest)
            return dest
        return b"".join(parts)

    # --- threads -------------------------------------------------------------------------
    def publish(self, thread: TensorThread, code: bytes, *, requirements: list[str] = (),  # type: ignore[assignment]
                weights: list[str | Path] = (), keep_versions: bool = False,  # type: ignore[assignment]
                about: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upload and sign a new version of ``thread`` and make it the active one."""
        check_name(thread.name)
        self.need_secret(f"deploy {thread.name!r}")
        return self.publish_code(thread.name, describe(thread), code, requirements=requirements,
                                 weights=[self.put_file(w) for w in weights], keep_versions=keep_versions, about=about)

    def publish_code(self, name: str, meta: dict[str, Any], code: bytes, *, requirements: list[str] = (),  # type: ignore[assignment]
                     weights: list[dict[str, Any]] = (), keep_versions: bool = False,  # type: ignore[assignment]
                     about: dict[str, Any] | None = None, python: str | None = None) -> dict[str, Any]:
        """Sign and activate a new version from its parts: ``meta`` (``TensorThread.describe()``), the
        pickled ``code``, weight entries of blobs already stored, ``about`` (``license``, ``deployed_by``)
        and the Python it was pickled with. For deploys whose code never runs here (uploaded artifacts)."""
        check_name(name)
        secret = self.need_secret(f"deploy {name!r}")
        manifest = {
            "name": name,
            "version": int(self.r.incr(f"{P}:reg:{name}:seq")),
            "code": self.put_blob(code),
            "requirements": list(requirements),
            "weights": list(weights),
            "meta": meta,
            "python": python or f"{sys.version_info.major}.{sys.version_info.minor}",
            "created": time.time(),
            **{k: v for k, v in (about or {}).items() if k in ABOUT},
        }
        signed = sign(manifest, secret, ARTIFACT)
        v = manifest["version"]

        def change(s: ThreadState) -> ThreadState:
            kept = s.serving if keep_versions and not s.removed else {}
            return s.then(active=v, serving={**kept, v: signed["signature"]}, removed=False)

        self._change(name, secret, change, lambda p: p.hset(f"{P}:reg:{name}", str(v), json.dumps(signed)))
        return signed

    def versions(self, name: str) -> dict[int, Any]:
        """All stored manifests of ``name`` (unverified: ``verified`` or ``manifest`` check them)."""
        return {int(v): _parse(m) for v, m in self.r.hgetall(f"{P}:reg:{name}").items()}

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        """The verified manifest of ``name@version``: ``RegistryError`` if absent, ``SignatureError`` if forged."""
        raw = self.r.hget(f"{P}:reg:{name}", str(version))
        if raw is None:
            raise RegistryError(f"{name} has no version {version}")
        return verified(_parse(raw), self.secret, name, version)

    def state(self, name: str) -> ThreadState | None:
        """The newest verified state of ``name`` (None if it has none this reader can trust)."""
        raw_mark, raw = self.r.mget([MARK_KEY, f"{P}:reg:{name}:state"])
        return self._state(name, raw, self._mark(raw_mark))

    def _mark(self, raw: bytes | None) -> Mark | None:
        return self.marks.update(raw, self.secret, self.vouched)

    def _state(self, name: str, raw: bytes | None, mark: Mark | None) -> ThreadState | None:
        return self.states.update(name, raw, self.secret, mark.threads.get(name) if mark is not None else None)

    def vouched(self) -> int:
        """The highest high-water mark counter that a live worker or gateway reports in its signed record."""
        marks = [r.get("mark") for kind in ("worker", "gateway") for r in self.records(kind)]
        return max([m for m in marks if isinstance(m, int) and not isinstance(m, bool)], default=0)

    def active(self, name: str) -> int | None:
        s = self.state(name)
        return None if s is None or s.removed else s.active

    def activate(self, name: str, version: int) -> None:
        """Serve ``version`` under the plain name (rollback / roll forward)."""
        secret = self.need_secret(f"activate {name}@{version}")
        sig = self.manifest(name, version)["signature"]  # never sign a state naming a manifest that would be refused
        self._change(name, secret, lambda s: s.then(active=version, serving={**s.serving, version: sig}, removed=False))

    def remove(self, name: str, gc_grace_s: float = GC_GRACE_S) -> None:
        """Undeploy ``name``: workers stop serving it within a poll; blobs only it used are collected.

        Leaves a signed tombstone state, so the removal outranks every earlier state."""
        secret = self.need_secret(f"undeploy {name!r}")

        def change(s: ThreadState) -> ThreadState:
            marked = self.marks.accepted is not None and name in self.marks.accepted.threads
            if s.removed or (s.seq == 0 and not marked and not self.r.sismember(f"{P}:reg:names", name)):
                raise RegistryError(f"{name!r} is not deployed")
            return s.then(active=None, serving={}, removed=True)

        self._change(name, secret, change, lambda p: p.delete(f"{P}:reg:{name}"))
        self.collect_garbage(gc_grace_s)

    def _change(self, name: str, secret: bytes, change: Callable[[ThreadState], ThreadState],
                also: Callable[[Any], Any] | None = None) -> ThreadState:
        """Write ``change(current state)``, signed, and the high-water mark naming it, with ``also``'s
        commands in one transaction (retried if another deployer changed either meanwhile)."""
        key = f"{P}:reg:{name}:state"
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(key, MARK_KEY)
                    raw_mark, raw = p.mget([MARK_KEY, key])
                    mark = self._base_mark(raw_mark, name)
                    new = change(self._state(name, raw, mark) or ThreadState(name))
                    doc = new.signed(secret)
                    next_mark = (mark or Mark()).then(name, doc, self.marks.floor)
                    p.multi()
                    p.set(key, json.dumps(doc))
                    p.set(MARK_KEY, json.dumps(next_mark.signed(secret)))
                    p.sadd(f"{P}:reg:names", name)
                    if also is not None:
                        also(p)
                    p.incr(f"{P}:reg:rev")
                    p.execute()
                except redis.WatchError:
                    continue
                self.states.accepted[name] = new
                self.marks.accept(next_mark)
                return new

    def _base_mark(self, raw: bytes | None, name: str) -> Mark | None:
        """The mark a change builds on: the store's if trusted, else the newest this reader accepted;
        none (a first deploy, or the store lost its mark) only if the store holds none either."""
        mark = self._mark(raw)
        if mark is None and raw is not None:
            raise SignatureError(f"cannot change {name!r}: {self.marks.refused}. Building on it would sign old "
                                 "states as current; restore the store, or delete the key ooblex:reg:mark and "
                                 "deploy (or activate) each thread again")
        return mark

    def rev(self) -> int:
        return int(self.r.get(f"{P}:reg:rev") or 0)

    def serving(self) -> dict[str, dict[str, Any]]:
        """``{name: {"active": v, "versions": {v: manifest}, "signatures": {v: signature}}}`` for every
        version workers should load, from each thread's verified state. Manifests are as stored (None
        if missing): loaders check them against the signatures the state names (``verified``)."""
        names = sorted({n.decode() for n in self.r.smembers(f"{P}:reg:names")} | set(self.states.accepted))
        raw_mark, *raws = self.r.mget([MARK_KEY, *(f"{P}:reg:{n}:state" for n in names)])  # one read: consistent
        mark = self._mark(raw_mark)
        extra = sorted(set(mark.threads) - set(names)) if mark is not None else []
        if extra:  # named by the mark only (their name was removed from the index)
            names, raws = names + extra, raws + self.r.mget([f"{P}:reg:{n}:state" for n in extra])
        out: dict[str, dict[str, Any]] = {}
        for name, raw in zip(names, raws, strict=True):
            s = self._state(name, raw, mark)
            if s is None or s.removed:
                continue
            wanted = sorted(s.serving)
            manifests = self.r.hmget(f"{P}:reg:{name}", [str(v) for v in wanted]) if wanted else []
            out[name] = {"active": s.active, "signatures": dict(s.serving),
                         "versions": {v: _parse(m) for v, m in zip(wanted, manifests, strict=True)}}
        return out

    # --- cluster state written by workers and gateways ----------------------------------
    def records(self, kind: str) -> list[dict[str, Any]]:
        """Live status records of ``kind`` ("worker" or "gateway") that verify; expired ones dropped,
        unsigned, forged, moved or replayed ones dropped and logged once."""
        now = time.time()
        ids = [i.decode() for i in self.r.zrangebyscore(f"{P}:{kind}s", now, "+inf")]
        docs = self.r.mget([f"{P}:{kind}:{i}" for i in ids]) if ids else []
        out = []
        for ident, raw in zip(ids, docs, strict=True):
            if raw is None:
                continue
            try:
                out.append(open_record(_parse(raw), kind, ident, self.secret, now))
            except SignatureError as exc:
                warn_once(f"record:{kind}:{ident}:{exc}", "ignoring a %s record: %s", kind, exc)
        return out

    def put_record(self, kind: str, ident: str, doc: dict[str, Any], ttl_s: float) -> None:
        """Publish (refresh) this machine's status record, signed, for ``ttl_s`` seconds."""
        sealed = seal_record(doc, kind, ident, ttl_s, self.need_secret(f"publish the {kind} record {ident!r}"))
        with self.r.pipeline(transaction=False) as p:
            p.set(f"{P}:{kind}:{ident}", json.dumps(sealed), px=int(ttl_s * 1000))
            p.zadd(f"{P}:{kind}s", {ident: sealed["expires"]})
            p.zremrangebyscore(f"{P}:{kind}s", "-inf", time.time() - 3600)
            p.execute()

    def drop_record(self, kind: str, ident: str) -> None:
        with self.r.pipeline(transaction=False) as p:
            p.delete(f"{P}:{kind}:{ident}")
            p.zrem(f"{P}:{kind}s", ident)
            p.execute()


def file_entry(path: Path) -> dict[str, Any]:
    """A weight file's manifest entry: its name, SHA-256 (read chunk by chunk) and size."""
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return {"name": path.name, "sha256": h.hexdigest(), "size": path.stat().st_size}


def check_name(name: str) -> None:
    if not name or any(c in name for c in "@:/ \t\n") or len(name) > 100:
        raise ValueError(f"tensor thread name {name!r} cannot be deployed: use letters, digits, '_', '-' or '.'")


def verified(manifest: Any, secret: bytes | None, name: str, version: int,
             signature: str | None = None) -> dict[str, Any]:
    """``manifest`` if it is signed, signed as ``name@version`` (the key it is stored under) and,
    given the ``signature`` the thread's state names, that very manifest; else ``SignatureError``."""
    what = f"artifact {name}@{version}"
    if manifest is None:
        raise SignatureError(f"refusing {what}: its manifest is missing from the store")
    verify(manifest, secret, ARTIFACT, what)
    if manifest.get("name") != name or manifest.get("version") != version:
        raise SignatureError(f"refusing {what}: it is signed as {manifest.get('name')}@{manifest.get('version')} "
                             "(copied under another name or version)")
    if signature is not None and manifest["signature"] != signature:
        raise SignatureError(f"refusing {what}: it is not the manifest the thread's state names (replaced by "
                             "another signed one)")
    return manifest


def seal_record(doc: dict[str, Any], kind: str, ident: str, ttl_s: float, secret: bytes) -> dict[str, Any]:
    """``doc`` signed as the ``kind`` record ``ident``, valid ``ttl_s`` seconds from now."""
    return sign({**doc, "kind": kind, "id": ident, "expires": time.time() + ttl_s}, secret, RECORD)


def open_record(doc: Any, kind: str, ident: str, secret: bytes | None, now: float) -> dict[str, Any]:
    """The record stored as ``kind:ident`` if it is signed as that record and not expired."""
    what = f"{kind} record {ident!r}"
    verify(doc, secret, RECORD, what)
    if doc.get("kind") != kind or doc.get("id") != ident:
        raise SignatureError(f"refusing {what}: it is signed as {doc.get('kind')} {doc.get('id')!r} "
                             "(copied from another key)")
    if not float(doc.get("expires", 0)) > now:
        raise SignatureError(f"refusing {what}: it has expired (an old record replayed)")
    return {k: v for k, v in doc.items() if k != "signature"}


def _parse(raw: bytes | None) -> Any:
    """Stored JSON, or None for anything else (refused later, never a crash)."""
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def describe(thread: TensorThread) -> dict[str, Any]:
    """What a gateway needs to validate parameters without loading the code."""
    return thread.describe()


def remote_thread(meta: dict[str, Any], name: str | None = None) -> TensorThread:
    """A stand-in ``TensorThread`` built from a manifest's ``meta``: same name and parameters,
    no code. Gateways open streams through it; the work happens on workers."""
    params = [inspect.Parameter("frame", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    limits: dict[str, dict[str, Any]] = {}
    for p in meta.get("params", []):
        params.append(inspect.Parameter(p["name"], inspect.Parameter.KEYWORD_ONLY, default=p["default"],
                                        annotation=TYPES.get(p["type"], inspect.Parameter.empty)))
        limits[p["name"]] = {k: p[k] for k in ("min", "max") if p.get(k) is not None}
        if p.get("choices"):
            limits[p["name"]]["choices"] = p["choices"]

    def on_workers(frame: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{meta['name']} runs on the cluster's workers, not here")

    on_workers.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return TensorThread(on_workers, name=name or meta["name"], description=meta.get("description", ""),
                        batch_size=meta.get("batch_size", 1), params=limits)
