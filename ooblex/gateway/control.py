"""Who may use control endpoints (listings, jobs): a bearer token derived from ``OOBLEX_SECRET``.

With no secret set (a laptop demo) everything is open. With one, listings and jobs need
``Authorization: Bearer <ooblex.cluster.signing.control_token()>``; per-stream endpoints stay
reachable by whoever holds the stream's unguessable id, which is what viewers are given.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from ..cluster.signing import check_bearer


def require_control(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the control token (when a secret is set)."""
    if not check_bearer(request.headers.get("authorization")):
        raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <control token>' "
                                 "(ooblex.cluster.signing.control_token(), derived from OOBLEX_SECRET)",
                            headers={"WWW-Authenticate": "Bearer"})
