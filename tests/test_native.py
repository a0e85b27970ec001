"""``ooblex.native``: TensorFlow loaded before aiortc must not crash the process (pylibsrtp's OpenSSL symbols)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")]

SRTP_ROUND = """
from pylibsrtp import Policy, Session
key = bytes(range(30))
packet = bytes([0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7]) + b"payload"
sent = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)).protect(packet)
got = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)).unprotect(sent)
print("srtp", got == packet and sent != packet)
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=200)


def test_tensorflow_then_aiortc_crashes_without_ooblex_and_works_with_it() -> None:
    bare = run("import tensorflow\nimport aiortc\nprint('imported')")
    assert bare.returncode == -11 and "imported" not in bare.stdout, (bare.returncode, bare.stderr[-500:])
    fixed = run("import tensorflow\nimport ooblex\nimport aiortc\nimport ooblex.webrtc.client\n" + SRTP_ROUND)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.split()[-2:] == ["srtp", "True"]


def test_the_other_order_and_plain_imports_are_unchanged() -> None:
    both = run("import ooblex, aiortc\nimport tensorflow\n" + SRTP_ROUND)
    assert both.returncode == 0 and both.stdout.split()[-2:] == ["srtp", "True"], both.stderr[-2000:]
    light = run("import ooblex, sys\nprint(sorted(m for m in ('aiortc', 'pylibsrtp') if m in sys.modules))")
    assert light.stdout.strip() == "[]"  # installing the finder imports nothing
