"""REST endpoints under ``/ooblex/``: status, listings, deploy/undeploy, and the gateway proxy.

All handlers are ``APIHandler``s with ``@tornado.web.authenticated``: a request without valid
Jupyter credentials gets 403, exactly like Jupyter's own ``/api/`` endpoints.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ooblex import errors

from .cluster import NO_CLUSTER, Cluster, Settings
from .live import live_handlers
from .proxy import GatewayProxyHandler

LISTINGS = ("threads", "deployments", "workers", "streams", "cluster")


class OoblexHandler(APIHandler):
    def initialize(self, settings: Settings) -> None:
        self.ob_settings = settings
        self.cluster = Cluster(settings)

    async def cluster_call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        """The status comes from the table the gateway answers from too (``ooblex.errors.status``);
        anything else is a bug and reaches Jupyter's own 500 handler, logged with its traceback."""
        try:
            return await self.cluster.call(what, *args, **kwargs)
        except Exception as exc:
            code = errors.status(exc)
            if code == 500 and not isinstance(exc, errors.OoblexError):
                raise
            raise web.HTTPError(code, str(exc)) from None

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=_jsonable))


class StatusHandler(OoblexHandler):
    @web.authenticated
    def get(self) -> None:
        from ooblex import __version__

        self.reply({"ooblex": __version__, **self.ob_settings.describe(),
                    "endpoints": [*LISTINGS, "history", "deployments (POST)", "deployments/<name> (DELETE)",
                                  "deployments/<name>/activate (POST)", "gateway/<path>",
                                  "kernels/<kernel id>/live/<widget id> (WebSocket)"]})


class ListHandler(OoblexHandler):
    @web.authenticated
    async def get(self, what: str) -> None:
        if what == "cluster" and not self.ob_settings.cluster:  # the panel's poll: no cluster is a state, not an error
            self.reply({"cluster": False, "reachable": False, "hint": NO_CLUSTER})
            return
        self.reply(await self.cluster_call(what))


class DeploymentsHandler(OoblexHandler):
    @web.authenticated
    async def get(self) -> None:
        self.reply(await self.cluster_call("deployments"))

    @web.authenticated
    async def post(self) -> None:
        body = self._json_body()
        thread = body.pop("thread", None)
        if not isinstance(thread, str) or not thread:
            raise web.HTTPError(400, "body needs \"thread\": a built-in name, module:attr or path.py:attr")
        self.reply(await self.cluster_call("deploy", thread, **body), status=201)

    def _json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise web.HTTPError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        return body


class DeploymentHandler(OoblexHandler):
    @web.authenticated
    async def delete(self, name: str) -> None:
        self.reply(await self.cluster_call("undeploy", name))


class ActivateHandler(DeploymentsHandler):
    """``POST /ooblex/deployments/<name>/activate`` ``{"version": 2}``: roll back (or forward) to a stored version."""

    @web.authenticated
    async def post(self, name: str) -> None:  # type: ignore[override]
        version = self._json_body().get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise web.HTTPError(400, 'body must be like {"version": 2}: a version number of the thread')
        self.reply(await self.cluster_call("activate", name, version))


class HistoryHandler(OoblexHandler):
    """``GET /ooblex/history?since=T``: each gateway's per-second stream history (for the panel's charts)."""

    @web.authenticated
    async def get(self) -> None:
        try:
            since = float(self.get_argument("since", "0"))
        except ValueError:
            raise web.HTTPError(400, "since must be a number (Unix seconds)") from None
        if not since >= 0 or since == float("inf"):
            raise web.HTTPError(400, "since must be a finite number >= 0")
        self.reply(await self.cluster_call("history", since))


def setup_handlers(web_app: Any, settings: Settings) -> None:
    base = url_path_join(web_app.settings["base_url"], "ooblex")
    kw = {"settings": settings}
    web_app.add_handlers(".*$", [
        (base + "/?", StatusHandler, kw),
        (url_path_join(base, "deployments") + "/?", DeploymentsHandler, kw),
        (url_path_join(base, "deployments", "([^/]+)") + "/?", DeploymentHandler, kw),
        (url_path_join(base, "deployments", "([^/]+)", "activate") + "/?", ActivateHandler, kw),
        (url_path_join(base, "history") + "/?", HistoryHandler, kw),
        (url_path_join(base, f"({'|'.join(LISTINGS)})") + "/?", ListHandler, kw),
        (url_path_join(base, "gateway", "(.*)"), GatewayProxyHandler, kw),
        *live_handlers(web_app.settings["base_url"]),
    ])


def _jsonable(obj: Any) -> Any:
    for attr in ("describe", "to_dict", "_asdict"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return repr(obj)
