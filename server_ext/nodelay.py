"""Kernel websockets with TCP_NODELAY, so live-widget frames are not held back by Nagle's algorithm.

jupyter_server leaves Nagle on for kernel websockets; a processed frame written while the previous
one is still unacknowledged (ipykernel sends a small busy/idle status around every comm message)
then waits for the browser's delayed ACK, about 40 ms on Linux. Loading the extension switches
the server to this connection class unless another one was configured.
"""

from __future__ import annotations

import logging
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayWebsocketConnection(ZMQChannelsWebsocketConnection):
    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        return super().connect()


def use_nodelay_websockets(serverapp: Any) -> None:
    """Make kernel websockets use ``NoDelayWebsocketConnection`` (kept if a custom class is configured)."""
    settings = serverapp.web_app.settings
    current = settings.get("kernel_websocket_connection_class")
    if current in (None, ZMQChannelsWebsocketConnection):
        settings["kernel_websocket_connection_class"] = NoDelayWebsocketConnection
    elif not issubclass(current, NoDelayWebsocketConnection):
        logging.getLogger("ooblex").warning("ooblex: kernel websockets keep the configured %s (Nagle on): "
                                            "live widget round trips will be ~40 ms slower", current.__name__)
