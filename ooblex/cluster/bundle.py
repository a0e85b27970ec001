"""A deploy as one signed file: ``ob.deploy(thread, export="blur.ooblex")`` writes it, the console uploads it.

The file is a zip: ``manifest.json`` (format, thread name, code and weight hashes, requirements,
the thread's parameters, Python version, licence, who exported it), signed with the key derived
from ``OOBLEX_SECRET`` for ``"bundle"``, then ``code.pkl`` (the pickled thread) and
``weights/<sha256>``. Only a holder of the secret can make one. Uploading one asks workers to run
its code, so a gateway checks the signature and every member's hash before it stores anything,
and never unpickles the code itself: it publishes the parts as a new version
(``Registry.publish_code``), which workers verify like any other deploy.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import BadRequest, PayloadTooLarge
from .registry import CHUNK, Registry, check_name, file_entry, remote_thread
from .signing import get_secret, require_secret, sign, verify

FORMAT = "ooblex-artifact/1"
MEDIA_TYPE = "application/vnd.ooblex.artifact+zip"
SUFFIX = ".ooblex"
#: The signing purpose: an exported artifact's signature passes for nothing else (no manifest, no token).
BUNDLE = "bundle"
MANIFEST, CODE, WEIGHTS = "manifest.json", "code.pkl", "weights/"
MAX_MANIFEST_BYTES = 1 << 20


class NotAnArtifact(BadRequest):
    """The file is not an Ooblex artifact, or a damaged one (400)."""


def deployer(via: str) -> dict[str, Any]:
    """Who deploys, as the manifest records it: the signature says *a holder of the secret*, this says which one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "via": via, "at": round(time.time(), 3)}


def write(path: str | Path, name: str, meta: dict[str, Any], code: bytes, *, requirements: list[str] = (),  # type: ignore[assignment]
          weights: list[str | Path] = (), license: str = "", secret: str | bytes | None = None) -> Path:  # type: ignore[assignment]  # noqa: A002
    """Write a signed artifact of ``name`` (``meta``: ``TensorThread.describe()``, ``code``: its pickle)."""
    check_name(name)
    key = require_secret(secret)
    path = Path(path)
    entries = [file_entry(Path(w)) for w in weights]
    manifest = {"format": FORMAT, "name": name, "code": hashlib.sha256(code).hexdigest(), "size": len(code),
                "requirements": list(requirements), "weights": entries, "meta": meta,
                "python": f"{sys.version_info.major}.{sys.version_info.minor}", "license": license,
                "deployed_by": deployer("export")}
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, json.dumps(sign(manifest, key, BUNDLE), indent=1))
        z.writestr(CODE, code)
        for w, entry in zip(weights, entries, strict=True):
            z.write(w, WEIGHTS + entry["sha256"], compress_type=zipfile.ZIP_STORED)
    tmp.replace(path)
    return path


@dataclass
class Bundle:
    """A verified artifact file: its manifest, and its members, each checked against their hash."""

    manifest: dict[str, Any]
    zip: zipfile.ZipFile

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    def publish(self, registry: Registry, *, keep_versions: bool = False, via: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Store the weights and code and sign a new active version with the registry's secret."""
        m = self.manifest
        for w in m["weights"]:
            registry.put_chunks(w["sha256"], w["size"], self._chunks(WEIGHTS + w["sha256"]))
        about = {"license": m.get("license", ""), "deployed_by": {**m.get("deployed_by", {}), **(via or {})}}
        return registry.publish_code(self.name, m["meta"], self.zip.read(CODE), requirements=m["requirements"],
                                     weights=m["weights"], keep_versions=keep_versions, about=about,
                                     python=m["python"])

    def _chunks(self, member: str) -> Iterator[bytes]:
        with self.zip.open(member) as f:
            yield from iter(lambda: f.read(CHUNK), b"")


def read(file: IO[bytes], secret: str | bytes | None, *, max_unpacked_bytes: int) -> Bundle:
    """Open and verify an uploaded artifact: ``NotAnArtifact`` (400) if it is not one or is damaged,
    ``SignatureError`` (403) if unsigned or signed with another secret, ``PayloadTooLarge`` (413) if it
    unpacks to more than ``max_unpacked_bytes``. Nothing in it is executed."""
    try:
        z = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise NotAnArtifact("not an Ooblex artifact: the file is not a zip archive (make one with "
                            "ob.deploy(thread, export='name.ooblex') or ooblex deploy FILE.py:thread --export "
                            "name.ooblex)") from None
    members = {i.filename: i for i in z.infolist()}
    if MANIFEST not in members or CODE not in members:
        raise NotAnArtifact(f"not an Ooblex artifact: the archive lacks {MANIFEST} or {CODE}")
    unpacked = sum(i.file_size for i in members.values())
    if unpacked > max_unpacked_bytes:
        raise PayloadTooLarge(f"the artifact unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes}")
    if members[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise NotAnArtifact(f"not an Ooblex artifact: {MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(z.read(MANIFEST))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise NotAnArtifact(f"damaged artifact: {MANIFEST} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotAnArtifact(f"not an Ooblex artifact: {MANIFEST} does not say format {FORMAT!r}")
    verify(manifest, get_secret(secret), BUNDLE, "the uploaded artifact")
    _check_fields(manifest)
    expected = {MANIFEST, CODE} | {WEIGHTS + w["sha256"] for w in manifest["weights"]}
    if set(members) != expected:
        extra = sorted(set(members) ^ expected)
        raise NotAnArtifact(f"damaged artifact: its files do not match its manifest ({', '.join(extra[:5])})")
    _check_member(z, CODE, manifest["code"], manifest["size"])
    for w in manifest["weights"]:
        _check_member(z, WEIGHTS + w["sha256"], w["sha256"], w["size"])
    return Bundle(manifest, z)


def _check_fields(m: dict[str, Any]) -> None:
    """A signed manifest comes from a secret holder; still, a malformed one must fail here, not on a gateway's
    registry follower."""
    try:
        check_name(m["name"])
        assert isinstance(m["code"], str) and isinstance(m["size"], int) and isinstance(m["python"], str)
        assert isinstance(m["requirements"], list) and all(isinstance(r, str) for r in m["requirements"])
        assert isinstance(m["weights"], list) and all(
            isinstance(w, dict) and isinstance(w.get("sha256"), str) and len(w["sha256"]) == 64
            and isinstance(w.get("size"), int) and isinstance(w.get("name"), str) for w in m["weights"])
        remote_thread(m["meta"])
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise NotAnArtifact(f"damaged artifact: its manifest is malformed ({type(exc).__name__}: {exc})") from None


def _check_member(z: zipfile.ZipFile, member: str, digest: str, size: int) -> None:
    h, n = hashlib.sha256(), 0
    try:
        with z.open(member) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
                n += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a bad CRC or a truncated member
        raise NotAnArtifact(f"damaged artifact: {member} cannot be read ({exc})") from None
    if n != size or h.hexdigest() != digest:
        raise NotAnArtifact(f"damaged artifact: {member} does not match the hash its signed manifest gives")
