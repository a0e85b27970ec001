"""The model registry in Redis: signed manifests, content-addressed chunked blobs, versions.

Keys (all under ``ooblex:``):
- ``blob:<sha256>``: hash of 1 MiB chunks (``0``, ``1``, ...) plus ``size``, ``chunks`` and
  ``created``; blobs no manifest refers to are collected after an undeploy (``collect_garbage``);
- ``reg:names``: set of deployed thread names; ``reg:<name>``: hash version -> signed manifest;
- ``reg:<name>:active``: the version served under the plain name; ``reg:<name>:serving``: set of
  versions workers keep loaded (each also reachable as ``<name>@<version>``);
- ``reg:rev``: bumped on every change, so workers and gateways notice within one poll.

A synchronous client on purpose: ``ob.deploy`` is called from notebooks (which already run
an event loop); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

from ..thread import TensorThread
from .signing import SignatureError, require_secret, sha256, sign, verify

CHUNK = 1 << 20
P = "ooblex"
#: Unreferenced blobs younger than this are kept: a deploy uploads its blobs before its manifest.
GC_GRACE_S = 600.0
TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


class RegistryError(LookupError):
    """A thread, version or blob is not in the registry."""


class Registry:
    """Read and write deployed tensor threads in the cluster's Redis store."""

    def __init__(self, store_url: str, secret: str | bytes | None = None) -> None:
        self.url = store_url
        self.r = redis.Redis.from_url(store_url, socket_connect_timeout=3, socket_timeout=30)
        self._secret = secret

    def close(self) -> None:
        self.r.close()

    # --- blobs ---------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` once (content-addressed); returns its SHA-256."""
        digest = sha256(data)
        self._put_chunks(digest, len(data), (data[i:i + CHUNK] for i in range(0, len(data), CHUNK)))
        return digest

    def put_file(self, path: str | Path) -> dict[str, Any]:
        """Store a weight file chunk by chunk (never whole in memory); returns its manifest entry."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weight file not found: {path}")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        digest, size = h.hexdigest(), path.stat().st_size

        def chunks() -> Any:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")

        self._put_chunks(digest, size, chunks())
        return {"name": path.name, "sha256": digest, "size": size}

    def _put_chunks(self, digest: str, size: int, chunks: Any) -> None:
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
                weights: list[str | Path] = (), keep_versions: bool = False) -> dict[str, Any]:  # type: ignore[assignment]
        """Upload and sign a new version of ``thread`` and make it the active one."""
        secret = require_secret(self._secret)
        name = thread.name
        check_name(name)
        manifest = {
            "name": name,
            "version": int(self.r.incr(f"{P}:reg:{name}:seq")),
            "code": self.put_blob(code),
            "requirements": list(requirements),
            "weights": [self.put_file(w) for w in weights],
            "meta": describe(thread),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "created": time.time(),
        }
        signed = sign(manifest, secret)
        v = manifest["version"]
        with self.r.pipeline() as p:
            p.sadd(f"{P}:reg:names", name)
            p.hset(f"{P}:reg:{name}", str(v), json.dumps(signed))
            if not keep_versions:
                p.delete(f"{P}:reg:{name}:serving")
            p.sadd(f"{P}:reg:{name}:serving", v)
            p.set(f"{P}:reg:{name}:active", v)
            p.incr(f"{P}:reg:rev")
            p.execute()
        return signed

    def versions(self, name: str) -> dict[int, dict[str, Any]]:
        """All stored manifests of ``name`` (unverified: workers verify before use)."""
        return {int(v): json.loads(m) for v, m in self.r.hgetall(f"{P}:reg:{name}").items()}

    def active(self, name: str) -> int | None:
        v = self.r.get(f"{P}:reg:{name}:active")
        return int(v) if v is not None else None

    def activate(self, name: str, version: int) -> None:
        """Serve ``version`` under the plain name (rollback / roll forward)."""
        if not self.r.hexists(f"{P}:reg:{name}", str(version)):
            raise RegistryError(f"{name} has no version {version}")
        with self.r.pipeline() as p:
            p.sadd(f"{P}:reg:{name}:serving", version)
            p.set(f"{P}:reg:{name}:active", version)
            p.incr(f"{P}:reg:rev")
            p.execute()

    def retire(self, name: str, version: int) -> None:
        """Stop serving one version (it stays stored, so it can be activated again)."""
        if self.active(name) == version:
            raise RegistryError(f"{name}@{version} is the active version; activate another first")
        with self.r.pipeline() as p:
            p.srem(f"{P}:reg:{name}:serving", version)
            p.incr(f"{P}:reg:rev")
            p.execute()

    def remove(self, name: str, gc_grace_s: float = GC_GRACE_S) -> None:
        """Undeploy ``name``: workers stop serving it within a poll; blobs only it used are collected."""
        if not self.r.sismember(f"{P}:reg:names", name):
            raise RegistryError(f"{name!r} is not deployed")
        with self.r.pipeline() as p:
            p.srem(f"{P}:reg:names", name)
            p.delete(f"{P}:reg:{name}", f"{P}:reg:{name}:active", f"{P}:reg:{name}:serving")
            p.incr(f"{P}:reg:rev")
            p.execute()
        self.collect_garbage(gc_grace_s)

    def rev(self) -> int:
        return int(self.r.get(f"{P}:reg:rev") or 0)

    def serving(self) -> dict[str, dict[str, Any]]:
        """``{name: {"active": v, "versions": {v: manifest}}}`` for every version workers should load."""
        out: dict[str, dict[str, Any]] = {}
        for raw in self.r.smembers(f"{P}:reg:names"):
            name = raw.decode()
            wanted = {int(v) for v in self.r.smembers(f"{P}:reg:{name}:serving")}
            manifests = self.r.hmget(f"{P}:reg:{name}", [str(v) for v in sorted(wanted)]) if wanted else []
            out[name] = {"active": self.active(name),
                         "versions": {v: json.loads(m) for v, m in zip(sorted(wanted), manifests, strict=True) if m}}
        return out

    # --- cluster state written by workers and gateways ----------------------------------
    def records(self, kind: str) -> list[dict[str, Any]]:
        """Live status records of ``kind`` ("worker" or "gateway"), expired ones dropped."""
        ids = self.r.zrangebyscore(f"{P}:{kind}s", time.time(), "+inf")
        docs = self.r.mget([f"{P}:{kind}:{i.decode()}" for i in ids]) if ids else []
        return [json.loads(d) for d in docs if d]

    def put_record(self, kind: str, ident: str, doc: dict[str, Any], ttl_s: float) -> None:
        with self.r.pipeline(transaction=False) as p:
            p.set(f"{P}:{kind}:{ident}", json.dumps(doc), px=int(ttl_s * 1000))
            p.zadd(f"{P}:{kind}s", {ident: time.time() + ttl_s})
            p.zremrangebyscore(f"{P}:{kind}s", "-inf", time.time() - 3600)
            p.execute()

    def drop_record(self, kind: str, ident: str) -> None:
        with self.r.pipeline(transaction=False) as p:
            p.delete(f"{P}:{kind}:{ident}")
            p.zrem(f"{P}:{kind}s", ident)
            p.execute()


def check_name(name: str) -> None:
    if not name or any(c in name for c in "@:/ \t\n") or len(name) > 100:
        raise ValueError(f"tensor thread name {name!r} cannot be deployed: use letters, digits, '_', '-' or '.'")


def verified(manifest: dict[str, Any], secret: bytes | None) -> dict[str, Any]:
    """``manifest`` if its signature holds, else ``SignatureError``."""
    verify(manifest, secret)
    return manifest


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
