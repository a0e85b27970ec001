"""``POST /api/v1/tokens``: a control token mints the narrower tokens a page needs (the demo page's login).

Someone who logs into the demo page with a control token (as into ``/console``) should not have to mint a
``publish`` token with the CLI to stream, nor hand their control token to the people they share with. This
endpoint, authenticated by a ``control`` token, mints a ``publish`` token for one thread or a ``view`` token
for one stream, for the control token's own subject (per-client limits count the same person) and never
outliving it. It mints no ``control`` tokens: a control token cannot extend itself.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from .. import routes
from ..errors import BadRequest, Conflict
from ..tokens import ANY, mint
from .auth import require, token_rules
from .bodies import read_json
from .state import gateway

router = APIRouter(tags=["security"])
EXAMPLE = '{"scope": "publish", "thread": "invert", "ttl_s": 3600} or {"scope": "view", "stream": "ID"}'
TOKENS_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["scope"],
    "properties": {"scope": {"type": "string", "enum": ["publish", "view"]}, "thread": {"type": "string"},
                   "stream": {"type": "string"}, "ttl_s": {"type": "number"}}}}}}


@router.post(routes.TOKENS, status_code=201, openapi_extra={"requestBody": TOKENS_BODY})
async def tokens(request: Request) -> dict[str, Any]:
    """Mint a ``publish`` token for ``thread`` or a ``view`` token for ``stream`` (a control token; JSON body
    ``{"scope", "thread" | "stream", "ttl_s"}``). Lifetime: ``ttl_s`` (default 1 h), at most the scope's
    maximum and the control token's remaining life. Answers ``{"token", "scope", "expires"}`` (Unix seconds);
    409 on a gateway without a secret, where no token is needed."""
    granted = require(request, "control")
    if granted is None:
        raise Conflict("this gateway has no secret (OOBLEX_SECRET): it needs no tokens")
    body = await read_json(request, gateway(request).settings.max_json_bytes, EXAMPLE)
    scope, target = _target(body)
    rules = token_rules(request.app)
    ttl = body.get("ttl_s", 3600.0)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise BadRequest(f"ttl_s must be a number of seconds > 0, got {ttl!r}")
    ttl = min(float(ttl), rules.max_ttl(scope), granted.expires - time.time())
    if ttl < 1:
        raise BadRequest("the control token expires within a second: log in again")
    token = mint(scope, ttl_s=ttl, subject=granted.subject, secret=gateway(request).settings.secret, rules=rules,
                 **({"thread": target} if scope == "publish" else {"stream": target}))
    return {"token": token, "scope": scope, "expires": round(time.time() + ttl)}


def _target(body: dict[str, Any]) -> tuple[str, str]:
    """The scope asked for and what it names: a thread (publish) or a stream id (view); ``*`` said explicitly."""
    scope = body.get("scope")
    if scope not in ("publish", "view"):
        raise BadRequest(f"scope must be publish or view (a control token cannot mint control), got {scope!r}; "
                         f"body like {EXAMPLE}")
    key = "thread" if scope == "publish" else "stream"
    target = body.get(key)
    if not isinstance(target, str) or not target or len(target) > 200:
        raise BadRequest(f"a {scope} token needs {key!r}: a name (or {ANY!r} for every one); body like {EXAMPLE}")
    return scope, target
