"""The aiortc/aioice internals Ooblex relies on: all present in the installed (constrained) versions, and a
missing one stops a gateway's start with its name and the tested versions instead of failing a session."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from ooblex.gateway import create_app
from ooblex.webrtc import internals


async def test_every_internal_is_present_in_the_installed_versions():
    assert await internals.missing() == []
    await internals.check()


async def test_a_changed_signature_is_named_with_the_tested_versions(monkeypatch):
    async def send_nack(self, ssrc: int, lost: list[int]) -> None:  # a release renamed the parameters
        return None

    monkeypatch.setattr(RTCRtpReceiver, "_send_rtcp_nack", send_nack)
    with pytest.raises(internals.InternalsError) as err:
        await internals.check()
    assert "RTCRtpReceiver._send_rtcp_nack(media_ssrc, lost)" in str(err.value)
    assert "aiortc 1.16" in str(err.value) and "aioice 0.13" in str(err.value)


async def test_a_missing_instance_attribute_is_named(monkeypatch):
    init = RTCRtpReceiver.__init__

    def without_nack_generator(self, *args, **kwargs):
        init(self, *args, **kwargs)
        del self._RTCRtpReceiver__nack_generator

    monkeypatch.setattr(RTCRtpReceiver, "__init__", without_nack_generator)
    assert await internals.missing() == ["RTCRtpReceiver._RTCRtpReceiver__nack_generator"]


async def test_a_gateway_does_not_start_without_them(monkeypatch):
    monkeypatch.delattr(RTCRtpReceiver, "_handle_rtp_packet")
    app = create_app()
    with pytest.raises(internals.InternalsError, match="_handle_rtp_packet"):
        async with app.router.lifespan_context(app):
            pass


def test_the_shell_check_reports_all_present():
    res = subprocess.run([sys.executable, "-m", "ooblex.webrtc.internals"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "all present" in res.stdout, res.stderr


def test_replace_patches_and_names_an_internal_that_is_gone():
    class Part:
        _handler = "aiortc's"

    part = Part()
    assert internals.replace(part, "_handler", "ours") == "aiortc's" and part._handler == "ours"
    with pytest.raises(internals.InternalsError, match=r"Part\._gone is gone in this aiortc/aioice"):
        internals.replace(part, "_gone", "ours")


def test_no_module_patches_aiortc_or_aioice_except_through_internals():
    """In the code that drives aiortc (ooblex/webrtc, ooblex/gateway), every assignment to another object's private
    attribute goes through ``internals.replace`` (or an accessor there), so one module lists what an upgrade can
    break; Ooblex's own marks on aiortc's objects (``_ooblex_*``) aside."""
    import ast
    from pathlib import Path

    root = Path(internals.__file__).resolve().parents[1]
    direct = []
    for path in [*root.glob("webrtc/*.py"), *root.glob("gateway/*.py")]:
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                for attr in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if (isinstance(attr, ast.Attribute) and attr.attr.startswith("_")
                            and not (isinstance(attr.value, ast.Name) and attr.value.id in ("self", "cls"))
                            and not attr.attr.startswith(("_ooblex", "__"))):
                        direct.append(f"{path.relative_to(root)}:{node.lineno} .{attr.attr}")
    assert not direct, direct
