"""Who may use control endpoints (listings, jobs): a ``control`` bearer token (``ooblex.tokens``).

With no secret set (a laptop demo) everything is open. With ``OOBLEX_SECRET`` set, listings and
jobs need ``Authorization: Bearer <token>`` of scope ``control`` (``ooblex token control``).
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from ..tokens import authorize, bearer


def require_control(request: Request) -> None:
    """FastAPI dependency: 401/403 unless the request carries a control token (when a secret is set)."""
    try:
        authorize(bearer(request.headers.get("authorization")), "control")
    except PermissionError as exc:
        raise HTTPException(getattr(exc, "status", 401), str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
