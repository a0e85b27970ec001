"""Test helper: a real IPython kernel driven over ZMQ the way a notebook frontend drives it.

Used to exercise the live widget's comm protocol end to end on the kernel side without a browser.
"""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

ROOT = Path(__file__).resolve().parents[1]


class KernelFrontend:
    """Starts its own kernel, or with ``connection_file`` drives one that a Jupyter server started."""

    def __init__(self, connection_file: str | Path | None = None) -> None:
        self.held: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []  # other iopub messages of executed cells (displays, stderr)
        if connection_file is None:
            env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(ROOT))
            return
        self.km = None
        self.kc = BlockingKernelClient(connection_file=str(connection_file))
        self.kc.load_connection_file()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 60) -> str:
        """Run ``code``; return its stdout; raise with the traceback if it failed."""
        return self.result(self.submit(code), timeout)

    def submit(self, code: str) -> str:
        """Start running ``code`` (the kernel is busy until it ends); ``result`` waits for it."""
        return self.kc.execute(code)

    def result(self, msg_id: str, timeout: float = 60) -> str:
        out: list[str] = []
        deadline = time.time() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(deadline - time.time(), 0.1))
            if msg["parent_header"].get("msg_id") != msg_id:
                self.held.append(msg)
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif kind == "error":
                raise RuntimeError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
            self.outputs.append(msg)

    def send_custom(self, comm_id: str, content: Any, buffers: list[bytes] | None = None) -> None:
        self._comm_msg(comm_id, {"method": "custom", "content": content}, buffers)

    def send_state(self, comm_id: str, state: dict[str, Any]) -> None:
        self._comm_msg(comm_id, {"method": "update", "state": state, "buffer_paths": []}, None)

    def _comm_msg(self, comm_id: str, data: dict[str, Any], buffers: list[bytes] | None) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.session.send(self.kc.shell_channel.socket, msg, buffers=buffers or [])

    def custom_messages(self, comm_id: str, timeout: float) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Custom messages from the widget's comm that arrive within ``timeout`` seconds."""
        got = []
        deadline = time.time() + timeout
        pool, self.held = self.held, []
        while True:
            if pool:
                msg = pool.pop(0)
            else:
                remaining = deadline - time.time()
                if remaining <= 0:
                    return got
                try:
                    msg = self.kc.get_iopub_msg(timeout=remaining)
                except queue.Empty:
                    return got
            c = msg["content"]
            if msg["msg_type"] == "comm_msg" and c.get("comm_id") == comm_id and c["data"].get("method") == "custom":
                got.append((c["data"]["content"], [bytes(b) for b in msg.get("buffers", [])]))

    def wait_custom(self, comm_id: str, pred: Any, timeout: float = 20) -> tuple[dict[str, Any], list[bytes]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for content, buffers in self.custom_messages(comm_id, 0.2):
                if pred(content):
                    return content, buffers
        raise TimeoutError("no matching message from the widget")

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km is not None:
            self.km.shutdown_kernel(now=True)
