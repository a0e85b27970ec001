"""Audio with headless Firefox ESR: its fake microphone through the demo page and back, with sound."""

from __future__ import annotations

import json
import time

import pytest

from .firefox import FIREFOX, firefox, firefox_problem
from .netns import in_netns

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow,
              pytest.mark.skipif(firefox_problem() is not None, reason=firefox_problem() or "")]

#: getStats is asynchronous and Marionette scripts are not, nor do they see the demo page's top-level
#: ``let session``: a script element runs in the page and leaves the answer in a DOM attribute.
AUDIO_STATS = """const s = document.createElement('script');
  s.textContent = `session.pc.getStats().then(report => report.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') document.body.dataset.audioIn = JSON.stringify(
      {packets: r.packetsReceived || 0, energy: r.totalAudioEnergy || 0}); }));`;
  document.head.append(s); s.remove();
  return document.body.dataset.audioIn || null;"""


@in_netns
def test_firefox_microphone_comes_back_with_sound() -> None:
    from ooblex.gateway.demo import demo_threads

    from .gateway_server import running_gateway

    with running_gateway(threads=demo_threads()) as gw, firefox() as ff:
        ff.navigate(f"{gw.url}/?thread=invert&autostart=1")
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
