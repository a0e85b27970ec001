"""Ooblex Jupyter server extension: cluster control, a gateway proxy and the live widget's side channel.

Everything sits under ``{base_url}ooblex/`` behind Jupyter's own authentication, so a browser that
can reach only the Jupyter origin (a remote JupyterHub) can list and deploy tensor threads, watch
deployed streams, and feed ``ob.live`` widgets while their kernel runs a cell (``live.py``).
Installed as ``ooblex_server_ext`` (the folder's name is no package name, so a user's own ``server_ext``
cannot collide with it). Enabled on install (``etc/jupyter/jupyter_server_config.d/ooblex_server_ext.json``)
or with ``jupyter server extension enable ooblex_server_ext``. Settings come from the server's environment:
``OOBLEX_BROKER`` (broker URL; ``OOBLEX_CLUSTER`` is an alias), ``OOBLEX_SECRET``, ``OOBLEX_GATEWAY``
(gateway base URL) and the live proxy's limits (``OOBLEX_LIVE_MAX_MESSAGE_BYTES``, ``OOBLEX_LIVE_MAX_IN_FLIGHT``).
"""

from __future__ import annotations

from typing import Any

from .cluster import Settings
from .handlers import setup_handlers
from .nodelay import use_nodelay_websockets
from .owned import OwnedCluster, serve


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    settings = Settings.from_env()
    owned = OwnedCluster(settings)
    setup_handlers(serverapp.web_app, settings)
    use_nodelay_websockets(serverapp)
    serve(owned, serverapp.log)
    serverapp.log.info("ooblex: /ooblex/ endpoints enabled (cluster %s, gateway %s)",
                       "configured" if settings.cluster else "not configured", settings.gateway or "not configured")

