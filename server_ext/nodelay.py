"""Kernel websockets with TCP_NODELAY, so live-widget frames are not held back by Nagle's algorithm.

jupyter_server leaves Nagle on for kernel websockets; a processed frame written while the previous
one is still unacknowledged then waits for the browser's delayed ACK (tens of ms on Linux). The
extension's config selects this connection class (``ServerApp.kernel_websocket_connection_class``).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayWebsocketConnection(ZMQChannelsWebsocketConnection):
    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        return super().connect()
