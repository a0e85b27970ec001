"""Headless Firefox ESR for end-to-end tests, driven over Marionette (no geckodriver).

    with firefox() as ff:
        ff.navigate(url)
        ff.execute_script("return document.title")
        ff.screenshot(path)

Firefox runs with a throwaway profile whose prefs give it a fake camera without a permission
prompt, let ICE use loopback addresses, and turn off first-run pages, updates and telemetry.
Marionette listens on a port Firefox picks itself (``marionette.port`` 0) and writes to
``MarionetteActivePort`` in the profile. Tests using it are skipped when Debian's
``firefox-esr`` or the ``marionette-driver`` package is missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"

PREFS: dict[str, Any] = {
    "marionette.port": 0,  # Firefox picks a free port and writes it to MarionetteActivePort
    # fake camera and microphone, no permission prompt, autoplay allowed
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.permission.fake": True,  # a fake camera counts as capturing: ICE may use all addresses
    "media.autoplay.default": 0,
    "devtools.console.stdout.content": True,  # page console messages go to the firefox log
    # WebRTC on loopback: offer 127.0.0.1 candidates, not mDNS names
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # no first-run pages, default-browser checks, updates, telemetry or background fetches
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.tabs.warnOnClose": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.enabled": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "browser.search.update": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.manage-offline-status": False,  # with only lo up Firefox would go offline, failing ICE
    "services.settings.server": "data:,#remote-settings-disabled",
}


def firefox_problem() -> str | None:
    """Why Firefox tests cannot run here, or None if they can."""
    if not Path(FIREFOX).exists():
        return "firefox-esr not installed (apt-get install firefox-esr)"
    try:
        import marionette_driver  # noqa: F401
    except ImportError:
        return "marionette-driver not installed (pip install marionette-driver)"
    return None


class Firefox:
    """The few browser operations the tests need, over a Marionette session."""

    def __init__(self, marionette: Any) -> None:
        self.marionette = marionette

    def navigate(self, url: str) -> None:
        self.marionette.navigate(url)

    def execute_script(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body in the page (use ``return`` and ``arguments[i]``).

        Like WebDriver's Execute Script it sees the page's own globals (no Marionette sandbox).
        """
        return self.marionette.execute_script(script, script_args=args, new_sandbox=False, sandbox=None)

    def screenshot(self, path: str | os.PathLike[str]) -> None:
        """Save a PNG of the whole page."""
        png = base64.b64decode(self.marionette.screenshot(full=True))
        Path(path).write_bytes(png)


def _write_prefs(profile: Path) -> None:
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in PREFS.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def firefox(width: int = 1280, height: int = 820, startup_timeout: float = 60.0) -> Iterator[Firefox]:
    """Start headless Firefox ESR with a private profile; skip the test if it is not available."""
    problem = firefox_problem()
    if problem:
        pytest.skip(problem)
    from marionette_driver.marionette import Marionette

    with tempfile.TemporaryDirectory(prefix="ooblex-firefox-") as tmp:
        profile = Path(tmp)
        _write_prefs(profile)
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
        with open(profile / "firefox.log", "wb") as log:
            proc = subprocess.Popen(
                [FIREFOX, "-headless", "-marionette", "-no-remote", "-profile", str(profile),
                 "-width", str(width), "-height", str(height), "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        session = None
        try:
            port = _active_port(profile, proc, startup_timeout)
            session = Marionette(host="127.0.0.1", port=port, socket_timeout=60)
            session.start_session(timeout=startup_timeout)
            session.set_window_rect(width=width, height=height)
            yield Firefox(session)
        except BaseException:
            # pytest shows captured stderr with the failure; the profile (and log) is deleted below
            print("firefox log (tail):\n" + _tail(profile / "firefox.log"), file=sys.stderr)
            raise
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.delete_session()
            _stop(proc)


def _active_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    port_file = profile / "MarionetteActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"firefox exited with {proc.returncode} before Marionette started")
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(port_file.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"firefox did not start Marionette within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM Firefox (a clean shutdown), then SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # content processes left behind, if any
    proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
