"""The cluster at a glance, for status pages: the gateway's ``/console`` and the JupyterLab panel.

``deployments(reg)``: every deployed thread, each stored version with its manifest's facts
(when, by whom, requirements, licence, parameters), whether its signature verifies, and which
workers serve or refuse it (with the reason and the next retry). ``workers(reg)``: each live
worker's record with what a person asks first: heartbeat age, threads served, load.
Both read only verified documents (``Registry.serving``, ``Registry.records``).
"""

from __future__ import annotations

import time
from typing import Any

from .registry import Registry, verified
from .signing import SignatureError


def deployments(reg: Registry, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One entry per deployed thread (sorted by name), versions newest first."""
    records = reg.records("worker") if records is None else records
    out = []
    for name, info in sorted(reg.serving().items()):
        active = info["active"]
        stored = reg.versions(name)
        versions = [_version(name, v, stored[v], info, records, reg.secret) for v in sorted(stored, reverse=True)]
        entry = next((v for v in versions if v["version"] == active), None)
        out.append({"name": name, "active": active,
                    "description": (entry or {}).get("description", ""),
                    # worker processes, not queues: one serving ``name`` and ``name@1`` is one worker
                    "serving": len({w["id"] for w in (entry or {}).get("workers", [])}),
                    "fps": round(sum(w["fps"] for w in (entry or {}).get("workers", []) if w["queue"] == name), 2),
                    "refused": sum(len(v["refused"]) for v in versions),
                    "versions": versions})
    return out


def _version(name: str, v: int, manifest: Any, info: dict[str, Any], records: list[dict[str, Any]],
             secret: bytes | None) -> dict[str, Any]:
    served = v in info["signatures"]
    doc: dict[str, Any] = {"version": v, "active": v == info["active"], "served": served}
    try:
        m = verified(manifest, secret, name, v, info["signatures"].get(v))
        doc["verified"], doc["problem"] = True, None
    except SignatureError as exc:
        m = manifest if isinstance(manifest, dict) else {}
        doc["verified"], doc["problem"] = False, str(exc)
    meta = m.get("meta") or {}
    doc.update({"created": m.get("created"), "deployed_by": m.get("deployed_by") or {},
                "license": m.get("license") or "", "requirements": m.get("requirements", []),
                "python": m.get("python"), "code": str(m.get("code", ""))[:12],
                "weights": [{"name": w.get("name"), "size": w.get("size")} for w in m.get("weights", [])],
                "signature": str(m.get("signature", ""))[:16], "description": meta.get("description", ""),
                "params": meta.get("params", [])})
    key = f"{name}@{v}"
    doc["workers"] = [{"id": r["id"], "host": r.get("host"), "queue": q, "fps": t.get("fps", 0.0),
                       "processed": t.get("processed", 0), "errors": t.get("errors", 0)}
                      for r in records for q, t in r.get("threads", {}).items()
                      if t.get("name") == name and t.get("version") == v]
    doc["refused"] = [{"worker": r["id"], "host": r.get("host"), "reason": why.get("reason"),
                       "attempts": why.get("attempts"), "retry_at": why.get("retry_at")}
                      for r in records for k, why in r.get("refused", {}).items() if k == key]
    return doc


def workers(reg: Registry, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Live workers (sorted by id): their records plus ``heartbeat_age_s`` and ``served`` (queue names)."""
    records = reg.records("worker") if records is None else records
    now = time.time()
    return [{**r, "heartbeat_age_s": round(max(0.0, now - float(r.get("heartbeat", now))), 2),
             "served": sorted(r.get("threads", {})), "in_flight": r.get("busy", 0)}
            for r in sorted(records, key=lambda r: r["id"])]


def cluster(reg: Registry) -> dict[str, Any]:
    """Deployments and workers from one read of the worker records."""
    records = reg.records("worker")
    return {"deployments": deployments(reg, records), "workers": workers(reg, records),
            "gateways": reg.records("gateway"), "secret": bool(reg.secret), "time": time.time()}
