"""Test helper: a real ``jupyter server`` / ``jupyter lab`` subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ooblex.cluster.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
#: The notebook panel on screen (JupyterLab keeps other tabs in the DOM, hidden).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


class JupyterServer:
    """Started by ``start()``, stopped by ``stop()`` (tests use it as a context manager)."""

    def __init__(self, workdir: Path, *, app: str = "jupyter_server", token: str = "test-token",
                 args: list[str] | None = None, env: dict[str, str] | None = None, base_url: str = "/") -> None:
        self.workdir = workdir
        self.app = app
        self.token = token
        self.args = [*(args or []), f"--ServerApp.base_url={base_url}"]
        self.env = env or {}
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + base_url.rstrip("/")  # everything of this server is under its base URL
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{app}-{self.port}.log"

    def start(self, timeout: float = 60) -> JupyterServer:
        home = self.workdir / "jupyter-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTER_PLATFORM_DIRS": "0", **self.env}
        cmd = [sys.executable, "-m", self.app, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               "--ServerApp.password=", f"--ServerApp.root_dir={self.workdir}", *self.args]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)  # noqa: S310
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"jupyter did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_notebook(page: Any, server: JupyterServer, name: str) -> None:
    """Open ``name`` in JupyterLab (fresh workspace) or Notebook 7 and wait until its kernel is idle."""
    token = f"token={server.token}" if server.token else ""  # none: a login cookie (behind JupyterHub)
    if server.app == "jupyterlab":
        page.goto(f"{server.url}/lab/workspaces/test-{free_port()}/tree/{name}?reset&{token}")
    else:
        page.goto(f"{server.url}/notebooks/{name}?{token}")
    idle = page.locator(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle'], "
                        ".jp-NotebookKernelStatus-idle, #jp-NotebookKernelStatus[data-status='idle']")
    cells = page.locator(f"{PANEL} .jp-Notebook .jp-Cell")
    deadline = time.time() + 120
    while not (idle.first.is_visible() or server.app != "jupyterlab" and cells.first.is_visible()):
        if time.time() > deadline:
            raise TimeoutError(f"the kernel of {name} did not become idle")
        _select_kernel(page)
        time.sleep(0.2)


def _settle(page: Any, quiet_s: float = 3.0) -> None:
    """Wait until no "Select Kernel" dialog has shown for ``quiet_s`` (a fresh workspace may show it
    after the kernel started; accepting it then switches kernels, and work sent before is lost)."""
    calm = time.time()
    while time.time() - calm < quiet_s:
        if page.locator(".jp-Dialog").count():
            _select_kernel(page)
            calm = time.time()
        time.sleep(0.2)


def _select_kernel(page: Any) -> None:
    """Accept the "Select Kernel" dialog a fresh workspace may show (also after the kernel started)."""
    select = page.locator(".jp-Dialog button", has_text="Select")
    if select.is_visible():
        select.click()


def run_cell(page: Any, index: int, attempts: int = 10, ran: str = r"\[[*\d]") -> None:
    """Run the notebook's ``index``-th cell with Shift+Enter, retrying until its prompt matches ``ran``.

    Right after load JupyterLab may still move focus around, which can swallow the key press."""
    cell = page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(index)
    for _ in range(attempts):
        _select_kernel(page)
        try:
            cell.locator(".cm-content").click(timeout=5_000)
            page.keyboard.press("Shift+Enter")
            cell.locator(".jp-InputPrompt", has_text=re.compile(ran)).wait_for(timeout=5_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try again
            time.sleep(0.5)
    raise TimeoutError(f"cell {index} did not run")


def lab_settings(workdir: Path, theme: str = "JupyterLab Light") -> None:
    """User settings of a ``JupyterServer(workdir)``'s JupyterLab / Notebook 7: the theme, and no news
    pop-up (it would cover screenshots)."""
    settings = workdir / "jupyter-home" / "config" / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in (("apputils-extension/themes", {"theme": theme}),
                           ("apputils-extension/notification", {"fetchNews": "false"})):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def run_all(page: Any, timeout: float = 300) -> list[str]:
    """Run → Run All Cells from the menu bar; wait until no cell runs any more (all ran, or one failed
    and stopped the rest). Returns the code cells' prompts ("[3]:"; "[ ]:" for cells that never ran)."""
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputPrompt")
    deadline = time.time() + timeout
    while True:
        _settle(page)
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item:visible", has_text=re.compile(r"^Run All Cells")).first.click()
        started = time.time()
        while time.time() - started < 10 and not any("*" in t for t in prompts.all_inner_texts()):
            time.sleep(0.2)
        if any(re.search(r"\d", t) or "*" in t for t in prompts.all_inner_texts()):
            break
        if time.time() > deadline:
            raise TimeoutError("Run All did not start any cell")
    quiet = 0
    while quiet < 4:  # two seconds without a running cell
        texts = [t.strip() for t in prompts.all_inner_texts()]
        quiet = 0 if any("*" in t for t in texts) else quiet + 1
        if time.time() > deadline:
            raise TimeoutError(f"Run All did not finish: prompts {texts}")
        time.sleep(0.5)
    return texts
