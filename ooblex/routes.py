"""Where each gateway endpoint is: the one table that routes, ``Location`` headers, ``Deployment.urls``,
stream listings, request forwarding between gateways and the Jupyter proxy all read.

Templates use ``{name}`` placeholders; ``path`` fills them (quoting each value), ``pattern`` turns
one into a regular expression that captures them.
"""

from __future__ import annotations

import re
from urllib.parse import quote

WHIP = "/whip/{thread}"
WHIP_SESSION = "/whip/{thread}/{session_id}"
WHEP = "/whep/{stream_id}"
WHEP_SESSION = "/whep/{stream_id}/{session_id}"
MJPEG = "/mjpeg/{stream_id}"
WS = "/ws/{thread}"
#: The JSON API's common prefix.
API = "/api/v1"
FRAMES = API + "/frames/{thread}"
THREADS = API + "/threads"
STREAMS = API + "/streams"
STREAM = API + "/streams/{stream_id}"
SESSIONS = API + "/sessions"
JOBS = API + "/jobs"
JOB = API + "/jobs/{job_id}"
STREAM_HISTORY = API + "/streams/{stream_id}/history"
HISTORY = API + "/history"
CLUSTER = API + "/cluster"
#: RFC 7240 ``Prefer`` value on a WHIP offer: the video sent back keeps the publisher's RTP timestamps,
#: so the publisher can pair each processed frame with the one it sent (``ob.live(deployment)`` does).
PREFER_INPUT_TIMESTAMPS = "return-timestamps=input"
#: Mint a publish/view token with a control token (the demo page's login).
TOKENS = API + "/tokens"
DEPLOYMENTS = API + "/cluster/deployments"
ONNX_DEPLOYMENTS = API + "/cluster/deployments/onnx"
DEPLOYMENT = API + "/cluster/deployments/{name}"
ACTIVATE = API + "/cluster/deployments/{name}/activate"
CONSOLE = "/console"
METRICS = "/metrics"
HEALTH = "/healthz"

#: What a client of a deployed thread is given (``Deployment.urls``), per gateway.
CLIENT = {"whip": WHIP, "whep": WHEP, "mjpeg": MJPEG, "http": FRAMES, "ws": WS}


def path(template: str, **values: str) -> str:
    """``path(WHEP_SESSION, stream_id="a.b", session_id="c")`` -> ``"/whep/a.b/c"``."""
    return template.format(**{k: quote(str(v), safe="") for k, v in values.items()})


def pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching paths of ``template``, one named group per placeholder."""
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


def prefix(template: str) -> str:
    """The fixed part of ``template`` before its first placeholder (``"/whip/"`` for ``WHIP``)."""
    return template.split("{", 1)[0]
