"""Audio with headless Firefox ESR: its fake microphone through the demo page and back, with sound."""

from __future__ import annotations

import json
import time

import pytest

from .firefox import FIREFOX, firefox, firefox_problem
from .netns import in_netns
from .test_fec import PEERS

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow,
              pytest.mark.skipif(firefox_problem() is not None, reason=firefox_problem() or "")]

#: The page's peer connections are recorded as it makes them (``PEERS``, installed before Start), and their
#: stats read through a promise Marionette waits for: the gateway's CSP forbids adding a script element.
AUDIO_STATS = """return (async () => { for (const pc of window.__pcs) for (const r of (await pc.getStats()).values())
  if (r.type === 'inbound-rtp' && r.kind === 'audio')
    return JSON.stringify({packets: r.packetsReceived || 0, energy: r.totalAudioEnergy || 0});
  return null; })();"""


@in_netns
def test_firefox_microphone_comes_back_with_sound() -> None:
    from ooblex.gateway.demo import demo_threads

    from .gateway_server import running_gateway

    with running_gateway(threads=demo_threads()) as gw, firefox() as ff:
        ff.navigate(f"{gw.url}/?thread=invert")
        ff.execute_script(PEERS.removeprefix("(() => {").removesuffix("})();"))  # before the page's connection
        ff.execute_script("document.getElementById('start').click()")
        deadline = time.monotonic() + 30
        while not gw.state.audio and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gw.state.audio, f"Firefox's microphone did not reach the gateway ({FIREFOX})"
        relay = next(iter(gw.state.audio.values()))
        assert ff.execute_script("return document.getElementById('output').muted"), "returned sound must start muted"
        ff.execute_script("document.getElementById('unmute').click()")
        first = None
        while time.monotonic() < deadline + 15:
            raw = ff.execute_script(AUDIO_STATS)
            stats = json.loads(raw) if raw else None
            if stats is not None:
                first = first or stats
                if stats["packets"] > first["packets"] + 50 and stats["energy"] > first["energy"]:
                    break
            time.sleep(0.5)
        assert stats and stats["packets"] > first["packets"] + 50, (first, stats)
        assert stats["energy"] > first["energy"], ("no sound in the returned audio", first, stats)
        assert relay.counts["in"] >= stats["packets"] and relay.counts["late"] == 0 and relay.listeners == 1, \
            relay.describe()
