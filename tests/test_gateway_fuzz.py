"""Fuzzing the gateway: no input may cause a 5xx, a crash or a stalled stream.

- every operation of ``/openapi.json`` with schemathesis-generated requests (positive and negative);
- hundreds of mutated SDP offers, images and WebSocket messages, while a live WHIP stream runs
  through the same gateway and must still deliver frames afterwards.
Mutations are seeded, so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ooblex import jpeg
from ooblex.gateway import Settings
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS

from .gateway_server import running_gateway
from .media import moving_picture, sdp_offer
from .netns import in_netns

CASES = 300
FUZZ_SETTINGS = dict(loopback_candidates=True, secret="", max_sessions=1000, max_sessions_per_client=1000,
                     max_pending_per_client=1000, max_image_bytes=300_000, max_image_pixels=1000 * 1000)


@pytest.mark.timeout(600)
def test_openapi_operations_never_answer_5xx(tmp_path) -> None:
    """Every operation, with schema-conforming (positive) and violating (negative) requests."""
    (tmp_path / "a.jpg").write_bytes(jpeg.encode(np.zeros((32, 32, 3), np.uint8)))
    gw_settings = Settings(media_root=str(tmp_path), **{**FUZZ_SETTINGS, "connect_timeout_s": 600.0})
    offers = [asyncio.run(sdp_offer(d)).encode() for d in ("sendrecv", "recvonly")]
    image = jpeg.encode(moving_picture(64, 48)(), 80)
    schemathesis.openapi.media_type("application/sdp", st.one_of(
        st.sampled_from(offers), st.binary(max_size=4096), st.text(max_size=2000).map(str.encode)))
    for ctype in ("image/jpeg", "image/png"):
        schemathesis.openapi.media_type(ctype, st.one_of(
            st.just(image), st.binary(max_size=4096), st.binary(max_size=64).map(lambda b: image[:200] + b)))
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=gw_settings) as gw:
        api = schemathesis.openapi.from_url(gw.url + "/openapi.json")
        operations = [result.ok() for result in api.get_all_operations()]
        assert len(operations) >= 15, [op.label for op in operations]
        # Real names too, so requests get past "unknown thread/stream" into the deeper checks.
        live = httpx.post(gw.url + "/whip/cartoon", content=offers[0], headers={"Content-Type": "application/sdp"})
        known = {"thread": ["identity", "cartoon", "edges"], "stream_id": [live.headers["X-Ooblex-Stream"]]}
        seen: dict[str, set[int]] = {}
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # (a real stream's MJPEG never ends, so that one operation gets made-up ids only)
                names = [p.name for p in op.path_parameters] if op.path_parameters and "mjpeg" not in op.path else []
                real = {n: known[n][0] for n in names if n in known}
                cases = st.one_of(op.as_strategy(generation_mode=mode),
                                  *([op.as_strategy(generation_mode=mode, path_parameters=real)] if real else []))
                try:
                    _no_server_errors(cases, gw.url, seen.setdefault(op.label, set()))
                except Unsatisfiable:  # an operation with nothing to violate has no negative cases
                    assert mode is GenerationMode.NEGATIVE, op.label
        print({label: sorted(codes) for label, codes in seen.items()})
        assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"


def _no_server_errors(cases: st.SearchStrategy, base: str, seen: set[int]) -> None:
    @given(case=cases)
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def call(case) -> None:
        r = case.call(base_url=base, timeout=20)
        assert r.status_code < 500, f"{r.status_code} {r.text} ({case.as_curl_command()})"
        seen.add(r.status_code)
        if r.status_code == 201 and "Location" in r.headers:  # end created sessions and jobs
            httpx.delete(base + r.headers["Location"], timeout=10)

    call()


# --- mutation fuzzers ----------------------------------------------------------------------------------------
def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.split("\r\n")
    op = rng.randrange(9)
    i = rng.randrange(len(lines))
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif op == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3:
        return text[: rng.randrange(len(text))]
    elif op == 4 and lines[i]:
        k = rng.randrange(len(lines[i]))
        lines[i] = lines[i][:k] + chr(rng.choice([0, 0x7F, 0xFFFD, rng.randrange(32, 127)])) + lines[i][k + 1:]
    elif op == 5:
        lines[i] = "".join(str(rng.choice([0, -1, 2**31, 2**64, 99999999999])) if c.isdigit() else c
                           for c in lines[i])
    elif op == 6:
        head, _, _ = lines[i].partition(":")
        lines[i] = f"{head}:{''.join(rng.choice('ab:/ =%0-') for _ in range(rng.randrange(0, 40)))}"
    elif op == 7:
        lines.insert(i, f"a={''.join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 200)))}")
    else:
        return text.replace("\r\n", "\n") if rng.random() < 0.5 else text.replace("m=video", "m=audio", 1)
    return "\r\n".join(lines)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0:
        for _ in range(rng.randrange(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1:
        del b[rng.randrange(len(b)):]
    elif op == 2:
        k = rng.randrange(len(b))
        b[k:k] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))
    elif op == 3:  # make the declared size huge (JPEG SOF0 / PNG IHDR)
        sof = b.find(b"\xff\xc0")
        if sof >= 0:
            b[sof + 5:sof + 9] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\x00\x80\x00"])
        else:
            b[16:24] = rng.choice([b"\x7f\xff\xff\xff" * 2, b"\x00" * 8])
    elif op == 4:
        k = rng.randrange(len(b))
        b[k:k] = b[rng.randrange(len(b)):][:2000]
    else:
        b = bytearray(b[:2] + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))))
    return bytes(b)


async def _keeps_flowing(client, frames: int = 10, timeout: float = 20.0) -> None:
    """``frames`` more processed frames arrive on the live stream."""
    deadline = time.monotonic() + timeout
    for _ in range(frames):
        await asyncio.wait_for(client.remote.recv(), max(0.1, deadline - time.monotonic()))


@in_netns
@pytest.mark.timeout(300)
async def test_mutated_offers_images_and_messages_never_break_the_gateway() -> None:
    from ooblex.webrtc.client import ImageTrack, WhipClient

    rng = random.Random(9)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=Settings(**FUZZ_SETTINGS)) as gw:
        track = ImageTrack(moving_picture(320, 240), fps=30)
        async with WhipClient(gw.url + "/whip/identity", track) as live, httpx.AsyncClient(timeout=30) as http:
            await live.wait_connected()
            await _keeps_flowing(live)
            offers = [await sdp_offer("sendrecv"), await sdp_offer("recvonly"), await sdp_offer("sendonly", "h264")]
            statuses = await _fuzz_http(http, gw.url, CASES, lambda: mutate_text(rng.choice(offers), rng),
                                        lambda body: (rng.choice([f"/whip/{rng.choice(['identity', 'invert'])}",
                                                                  f"/whep/{live.stream_id}"]),
                                                      "application/sdp", body))
            print("SDP answers:", statuses)
            await _keeps_flowing(live)
            pictures = [jpeg.encode(moving_picture(64, 48)(), 80), _png(moving_picture(64, 48)())]
            ctypes = ["image/jpeg", "image/png", "application/octet-stream"]
            statuses = await _fuzz_http(http, gw.url, CASES, lambda: mutate_bytes(rng.choice(pictures), rng),
                                        lambda body: (f"/api/v1/frames/{rng.choice(['identity', 'edges', 'cartoon'])}",
                                                      rng.choice(ctypes), body))
            print("image answers:", statuses)
            await _fuzz_socket(gw.url.replace("http", "ws") + "/ws/cartoon", rng, pictures)
            await _keeps_flowing(live)
            assert (await http.get(gw.url + "/healthz")).json()["status"] == "ok"
        assert eventually_empty(gw)


async def _fuzz_http(http: httpx.AsyncClient, base: str, n: int, body: Callable[[], object],
                     request: Callable[[object], tuple[str, str, object]]) -> dict[int, int]:
    """POST ``n`` fuzzed bodies; every answer is 2xx or a 4xx with a ``detail``; created sessions are ended."""
    statuses: dict[int, int] = {}
    for _ in range(n):
        path, ctype, content = request(body())
        data = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
        r = await http.post(base + path, content=data, headers={"Content-Type": ctype})
        assert r.status_code < 500, (path, r.status_code, r.text, data[:2000])
        assert r.status_code in (200, 201) or "detail" in r.json(), r.text
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 201:
            await http.delete(base + r.headers["Location"])
    return statuses


async def _fuzz_socket(url: str, rng: random.Random, pictures: list[bytes]) -> None:
    """Mutated frames and control messages: a bad frame or parameter gets a 4xx and the stream goes on; a text
    message that is not JSON closes the socket with 1007 and a reason (then the fuzzer reconnects)."""
    sent = errors = closes = 0
    ws = await connect(url, max_size=None)
    json.loads(await ws.recv())
    for _ in range(CASES):
        kind = rng.randrange(4)
        try:
            if kind == 0:
                await ws.send(mutate_bytes(rng.choice(pictures), rng))
            elif kind == 1:
                await ws.send(json.dumps({"params": {rng.choice(["levels", "blur", "self", "x"]):
                                                     rng.choice([3, "nan", -1, None, [1], "7", 1e308])}}))
            elif kind == 2:
                await ws.send(mutate_text('{"params": {"levels": 4}}', rng))
            else:
                await ws.send(rng.choice(pictures))
            sent += 1
            while True:  # drain what is there without waiting for every answer
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.02)
                except asyncio.TimeoutError:
                    break
                if isinstance(msg, str) and "status" in json.loads(msg):
                    assert json.loads(msg)["status"] < 500, msg
                    errors += 1
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1007 and closed.rcvd.reason, closed
            closes += 1
            ws = await connect(url, max_size=None)
            json.loads(await ws.recv())
    try:
        await _processes_a_frame(ws, pictures[0])
    except ConnectionClosed as closed:  # the last bad message's close came after the drain above
        assert closed.rcvd is not None and closed.rcvd.code == 1007, closed
        ws = await connect(url, max_size=None)
        json.loads(await ws.recv())
        await _processes_a_frame(ws, pictures[0])
    await ws.close()
    print(f"WebSocket: {sent} messages, {errors} refused with a 4xx, {closes} closed the socket (1007)")
    assert closes, "no mutated control message was refused as not JSON"


async def _processes_a_frame(ws, picture: bytes) -> None:
    await ws.send(picture)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the socket still processes frames after all that
        if isinstance(await ws.recv(), bytes):
            return
    raise AssertionError("the WebSocket stream stopped processing frames")


def eventually_empty(gw, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while gw.state.sessions.items or gw.state.engine.streams:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()
