"""The live widget's kernel side, driven through a real kernel's comm channel like a browser would."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from ooblex import jpeg

from .media import write_video

pytest.importorskip("anywidget")
from .kernel_frontend import ROOT, KernelFrontend  # noqa: E402

SETUP = """
import logging, ooblex as ob
warnings = []
class Keep(logging.Handler):
    def emit(self, record): warnings.append(record.getMessage())
logging.getLogger("ooblex.live").addHandler(Keep())

@ob.tensor_thread(params={"k": {"min": 1, "max": 9}})
def invert(frame, k: int = 3):
    return 255 - frame, {"k": k}

w = ob.live(invert)
print(w.model_id)
"""


@pytest.fixture(scope="module")
def kernel():
    k = KernelFrontend()
    yield k
    k.close()


@pytest.fixture(scope="module")
def comm_id(kernel):
    return kernel.execute(SETUP).strip()


def frame_jpeg(value: int) -> bytes:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = value
    return jpeg.encode(img, 95)


def send_frame(kernel: KernelFrontend, comm_id: str, seq: int, value: int = 40) -> tuple[dict, list[bytes]]:
    kernel.send_custom(comm_id, {"type": "frame", "seq": seq, "t": time.time()}, [frame_jpeg(value)])
    return kernel.wait_custom(comm_id, lambda c: c.get("type") in ("frame", "ack") and c.get("ack") == seq)


def test_import_ooblex_does_not_import_ipywidgets():
    code = "import sys, ooblex; assert callable(ooblex.live); assert 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_frame_in_processed_frame_out(kernel, comm_id):
    content, buffers = send_frame(kernel, comm_id, 0, value=40)
    assert content["type"] == "frame" and content["error"] is None
    assert content["result"] == {"k": 3} and content["lane"] == 0
    assert len(buffers) == 1 and content["images"] == [{"role": "output", "format": "jpeg", "width": 64, "height": 48}]
    out = jpeg.decode(buffers[0])
    assert out.shape == (48, 64, 3)
    assert abs(int(out[:, :32].mean()) - 215) < 6 and abs(int(out[:, 32:].mean()) - 255) < 6  # inverted


def test_parameter_change_from_frontend_applies_to_next_frames(kernel, comm_id):
    kernel.send_state(comm_id, {"values": [{"k": 7}]})
    content, _ = send_frame(kernel, comm_id, 1)
    assert content["result"] == {"k": 7}
    assert kernel.execute("print(w.params['k'])").strip() == "7"


def test_invalid_parameter_is_refused_and_reverted(kernel, comm_id):
    kernel.send_state(comm_id, {"values": [{"k": 99}]})
    time.sleep(0.3)
    out = kernel.execute("print(w.params['k'], '|', w.status)")
    assert out.startswith("7 |") and "within [1, 9]" in out
    content, _ = send_frame(kernel, comm_id, 2)
    assert content["result"] == {"k": 7}


@pytest.mark.parametrize("content, buffers, why", [
    ("just text", [], "not an object"),
    ({"type": "selfdestruct"}, [], "unknown message type"),
    ({"type": "frame", "seq": "x"}, [b"\xff\xd8"], "expected an integer"),
    ({"type": "frame", "seq": 100}, [], "carries 0 buffers"),
    ({"type": "frame", "seq": 101}, [b"not a jpeg at all"], "not a decodable image"),
    ({"type": "frame", "seq": 102, "format": "rgba", "width": 3, "height": 3}, [b"\0" * 35], "is not 3x3 RGBA"),
    ({"type": "frame", "seq": 103, "format": "gif"}, [b"GIF89a"], "format 'gif'"),
    ({"type": "rtt", "ms": 5}, [], "without a list"),
])
def test_bad_messages_are_ignored_with_a_warning(kernel, comm_id, content, buffers, why):
    before = int(kernel.execute("print(w.counters['bad_messages'])"))
    kernel.send_custom(comm_id, content, buffers)
    if isinstance(content, dict) and isinstance(content.get("seq"), int):  # the browser's slot is freed
        ack, _ = kernel.wait_custom(comm_id, lambda c: c.get("ack") == content["seq"])
        assert ack["type"] == "ack"
    deadline = time.time() + 10
    while int(kernel.execute("print(w.counters['bad_messages'])")) == before:
        assert time.time() < deadline, "bad message was not counted"
        time.sleep(0.1)
    assert why in kernel.execute("print(warnings[-1])")
    content, _ = send_frame(kernel, comm_id, 200 + len(why))  # still serving
    assert content["type"] == "frame"


def test_burst_is_bounded_latest_frame_wins(kernel, comm_id):
    kernel.execute("""
import time
@ob.tensor_thread
def slow(frame):
    time.sleep(0.05)
    return frame
w2 = ob.live(slow, max_in_flight=1)
print(w2.model_id)
""")
    cid = kernel.execute("print(w2.model_id)").strip()
    for seq in range(30):
        kernel.send_custom(cid, {"type": "frame", "seq": seq, "t": 0}, [frame_jpeg(seq * 8)])
    last, buffers = kernel.wait_custom(cid, lambda c: c.get("ack") == 29, timeout=20)
    assert last["type"] in ("frame", "ack")
    stats = eval(kernel.execute("print(w2.stats())"))  # noqa: S307 - our own kernel's repr of a dict
    assert stats["processed"] < 30, "every frame was computed: nothing was dropped under a burst"
    assert stats["processed"] + stats["dropped"] + stats["refused"] + stats["stale"] >= 29
    kernel.execute("w2.close()")


def test_code_swap_on_rerun_keeps_widget_and_params(kernel, comm_id):
    out = kernel.execute("""
def invert(frame, k: int = 3, flip: bool = False):
    return (frame[:, ::-1] if flip else frame), {"k": k, "swapped": True}
w_again = ob.live(invert)
print(w_again is w, w.version, w.params, [c['kind'] for c in w.lanes[0]['controls']])
""")
    assert out.strip() == "True 2 {'k': 7, 'flip': False} ['slider', 'checkbox']"
    content, buffers = send_frame(kernel, comm_id, 300, value=40)
    assert content["result"] == {"k": 7, "swapped": True}
    out = jpeg.decode(buffers[0])
    assert abs(int(out[:, :32].mean()) - 40) < 6  # no longer inverted


def test_user_error_comes_back_flagged(kernel, comm_id):
    kernel.execute("""
def invert(frame, k: int = 3):
    raise RuntimeError("boom")
ob.live(invert)
""")
    content, buffers = send_frame(kernel, comm_id, 400)
    assert content["error"] == "RuntimeError: boom" and buffers  # original pixels pass through


def test_stop_refuses_frames_and_snapshot_returns_numpy(kernel, comm_id):
    out = kernel.execute("s = w.snapshot(); print(type(s.output).__name__, s.output.shape, s.error)")
    assert out.strip() == "ndarray (48, 64, 3) RuntimeError: boom"
    kernel.execute("w.stop()")
    content, buffers = send_frame(kernel, comm_id, 500)
    assert content["type"] == "ack" and not buffers


def test_kernel_side_video_source_pushes_input_and_output(kernel, comm_id, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    out = kernel.execute(f"""
def darker(frame, gain: float = 0.5):
    return (frame * gain).astype("uint8"), {{"mean": float(frame.mean())}}
v = ob.live(darker, source={str(clip)!r})
rec = v.record(1.0)
print(v.source_kind, len(rec.frames), len(rec.inputs), rec.array().shape, rec.results[0] is not None)
print(v.model_id)
""")
    first, cid = out.strip().splitlines()
    kind, n_frames, n_inputs, *_ = first.split()
    assert kind == "kernel" and int(n_frames) >= 15 and n_frames == n_inputs  # ~30 fps, looped clip
    assert "120, 160, 3)" in first and first.endswith("True")
    content, buffers = kernel.wait_custom(cid, lambda c: c.get("type") == "frame")
    assert [i["role"] for i in content["images"]] == ["input", "output"] and len(buffers) == 2
    inp, outp = jpeg.decode(buffers[0]), jpeg.decode(buffers[1])
    assert abs(inp.mean() * 0.5 - outp.mean()) < 4
    kernel.execute("v.close()")


def test_an_ipywebrtc_camera_stream_means_the_browser_camera_with_its_constraints():
    """A real ipywebrtc CameraStream selects the browser camera with that stream's constraints."""
    from ipywebrtc import CameraStream

    from ooblex.jupyter.widget import _camera_stream_constraints, _describe_source

    camera = CameraStream(constraints={"audio": False, "video": {"facingMode": "user", "width": 320}})
    assert _describe_source(camera) == ("browser", "ipywebrtc CameraStream (browser)")
    assert _camera_stream_constraints(camera) == {"facingMode": "user", "width": 320}
    assert _camera_stream_constraints(CameraStream.facing_environment(audio=False)) == {
        "facingMode": "environment"}
    assert _describe_source("webcam")[0] == "browser"
    assert _describe_source("clip.mp4") == ("kernel", "clip.mp4") and _describe_source(0)[0] == "kernel"


def test_swap_to_code_whose_setup_fails_keeps_the_running_version(kernel, comm_id):
    out = kernel.execute("""
@ob.tensor_thread(name="invert")
class Broken:
    def setup(self):
        raise OSError("weights.bin not found")
    def __call__(self, frame, k: int = 3):
        return frame
try:
    ob.live(Broken)
except OSError as exc:
    print("raised:", exc)
w.start()
print(w.version, w.title)
""")
    assert out.splitlines()[0] == "raised: weights.bin not found"
    version = out.splitlines()[1]
    content, _ = send_frame(kernel, comm_id, 600)
    assert content["type"] == "frame" and content["error"] == "RuntimeError: boom"  # the previous code still runs
    assert version.endswith(" invert")


def test_http_mjpeg_url_as_kernel_side_source():
    """An IP-camera style MJPEG URL (here ooblex's own MJPEG sink) read in the kernel's process."""
    import threading

    import ooblex as ob
    from ooblex.frame import Frame
    from ooblex.media.sinks import MJPEGServerSink

    sink, stop = MJPEGServerSink(), threading.Event()

    def feed() -> None:
        while not stop.is_set():
            sink.write(Frame(np.full((60, 80, 3), 100, np.uint8)))
            stop.wait(0.03)

    threading.Thread(target=feed, daemon=True).start()
    live = ob.live(lambda frame: 255 - frame, source=sink.url, name="mjpeg-test")
    try:
        assert live.source_kind == "kernel" and live.source_label == sink.url
        rec = live.record(1.0)
        assert len(rec.frames) >= 10
        assert abs(int(rec.inputs[-1].mean()) - 100) < 4 and abs(int(rec.frames[-1].mean()) - 155) < 4
    finally:
        live.close()
        stop.set()
        sink.close()


def test_a_recording_of_a_video_file_with_sound_saves_that_sound_in_step(tmp_path):
    """A kernel-side file with a soundtrack (a flash and a beep together every 0.5 s): the saved .mp4 has
    AAC sound as long as the video, not silent, each beep where its flash is in the processed frames."""
    import av

    import ooblex as ob
    from ooblex.media.avsync import BeepDetector, FlashDetector, SyncSignal, mono, offsets

    signal = SyncSignal(period=0.5, flash=0.1, width=160, height=120)
    clip = signal.write(tmp_path / "sync.mp4", 3.0)
    live = ob.live(lambda frame: frame // 2, source=str(clip), name="sound-test")
    try:
        rec = live.record(1.5)
    finally:
        live.close()
    path = rec.save(tmp_path / "recorded.mp4")
    flashes, beeps, video_end, audio_end, loudest = [], [], 0.0, 0.0, 0.0
    seen, heard = FlashDetector(signal, level=64), BeepDetector(signal)  # the output is half as bright
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert audio.codec_context.name == "aac"
        fps = float(video.average_rate)
        for f in c.decode(video, audio):
            if isinstance(f, av.VideoFrame):
                video_end = max(video_end, f.time + 1 / fps)
                flashes += [t for t in [seen.feed(float(f.to_ndarray(format="rgb24").mean()), f.time)] if t]
            else:
                samples = mono(f)
                audio_end = max(audio_end, f.time + f.samples / f.sample_rate)
                loudest = max(loudest, float(np.abs(samples).max()))
                beeps += heard.feed(samples, f.time)
    assert len(rec.frames) >= 20 and abs(audio_end - video_end) < 0.05, (audio_end, video_end)
    assert loudest > 0.3  # the tone (0.5 of full scale), AAC-coded
    pairs = offsets([t for t in flashes if t > 0.05], [t for t in beeps if t > 0.05], signal.period)
    assert len(pairs) >= 2 and all(abs(ms) <= 45 for ms in pairs), pairs  # a dropped frame is 33 ms


def test_a_browser_webcam_recording_saves_video_only(kernel, comm_id, tmp_path):
    """The browser camera's frames come without sound: the saved file has no audio stream."""
    import av

    cid = kernel.execute("cam = ob.live(invert, name='webcam-recording')\nprint(cam.model_id)").strip()
    kernel.send_custom(cid, {"type": "hello", "transport": "comm", "why": "test"})
    kernel.execute("r = cam.record(30)")  # fills in the background (comm path) until stopped
    for seq in range(10):
        assert send_frame(kernel, cid, seq)[0]["type"] == "frame"
    path = tmp_path / "webcam.mp4"
    out = kernel.execute(f"r.stop()\nprint(len(r.frames), r.has_sound, r.save({str(path)!r}).name)\ncam.close()")
    n, has_sound, name = out.split()
    assert int(n) >= 5 and has_sound == "False" and name == "webcam.mp4"
    with av.open(str(path)) as c:
        assert len(list(c.decode(c.streams.video[0]))) == int(n) and not c.streams.audio


def test_compare_mode_sends_the_same_frames_to_each_thread(kernel, comm_id):
    cid = kernel.execute("""
def darken(frame, gain: float = 0.5):
    return (frame * gain).astype("uint8")
cmp = ob.live([darken, invert], name="compare")
print(cmp.model_id)
""").strip()
    kernel.send_custom(cid, {"type": "frame", "seq": 0, "t": 0}, [frame_jpeg(200)])
    lanes = {}
    deadline = time.time() + 20
    while len(lanes) < 2 and time.time() < deadline:
        for content, buffers in kernel.custom_messages(cid, 0.5):
            if content.get("type") == "frame":
                lanes[content["lane"]] = jpeg.decode(buffers[0])
    assert abs(int(lanes[0][:, :32].mean()) - 100) < 6  # darken
    assert lanes[1].shape == (48, 64, 3)  # the (last swapped-in) invert of this kernel
    out = kernel.execute("""
print(cmp.compare, [l['label'] for l in cmp.lanes], cmp.set_params(gain=0.25)[0])
s = cmp.snapshot()
print(len(s), s[0].output.shape, len(cmp.stats()))
""").splitlines()
    assert out[0] == "True ['darken', 'invert'] {'gain': 0.25}"
    assert out[1] == "2 (48, 64, 3) 2"
    with pytest.raises(RuntimeError, match="has no parameter 'nope'"):
        kernel.execute("cmp.set_params(nope=1)")
    kernel.execute("cmp.close()")


def test_on_the_comm_path_snapshot_times_out_with_a_clear_message_and_record_fills_in_the_background(kernel, comm_id):
    cid = kernel.execute("""
c = ob.live(lambda f: f, name="comm-only")
print(c.model_id)
""").strip()
    kernel.send_custom(cid, {"type": "hello", "transport": "comm", "why": "no server extension"})
    time.sleep(0.3)
    out = kernel.execute("try:\n    c.snapshot(timeout=0.5)\nexcept TimeoutError as exc:\n    print(exc)")
    assert out.startswith("snapshot(): no processed frame within 0.5 s: this widget's frames travel over the "
                          "comm: no server extension;") and "later cell" in out
    kernel.outputs.clear()
    out = kernel.execute("r = c.record(0.5)\nprint(r.done, c.transport)")
    assert out.strip() == "False comm: no server extension"  # returned at once
    seen = kernel.outputs + kernel.held  # the progress line keeps updating after the cell ended
    deadline = time.time() + 10
    while not any(m["msg_type"] == "update_display_data" and "done>" in m["content"]["data"]["text/plain"]
                  for m in seen):
        assert time.time() < deadline, "the recording's output line was not updated to done"
        seen += _iopub(kernel, 0.3)
    kernel.execute("c.close()")


def test_record_shows_live_progress_in_the_cell(kernel, comm_id, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    kernel.outputs.clear()
    kernel.execute(f"p = ob.live(lambda f: f, source={str(clip)!r}, name='progress')\nrec = p.record(1.0)")
    shown = [m for m in kernel.outputs if m["msg_type"] in ("display_data", "update_display_data")
             and m["content"].get("transient", {}).get("display_id")]
    texts = [m["content"]["data"]["text/plain"] for m in shown]
    assert shown[0]["msg_type"] == "display_data" and "s left>" in texts[0]
    assert len({m["content"]["transient"]["display_id"] for m in shown}) == 1  # one line, updated in place
    assert len(shown) >= 3 and "done>" in texts[-1]
    kernel.execute("p.close()")


def _iopub(kernel: KernelFrontend, timeout: float) -> list[dict]:
    out = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            out.append(kernel.kc.get_iopub_msg(timeout=max(deadline - time.time(), 0.01)))
        except Exception:  # noqa: BLE001 - queue.Empty
            break
    return out


def test_float_output_is_shown_with_a_one_time_note(kernel, comm_id):
    """A thread returning floats in [0, 1] shows its picture (not a black frame), and the widget says once why."""
    kernel.execute("""
def invert(frame, k: int = 3):
    return (255 - frame) / 255.0
ob.live(invert)
""")
    kernel.send_custom(comm_id, {"type": "frame", "seq": 450, "t": time.time()}, [frame_jpeg(40)])
    frame, notes = None, []
    deadline = time.time() + 20  # the bound only catches a hang
    while (frame is None or not notes) and time.time() < deadline:
        for content, buffers in kernel.custom_messages(comm_id, 0.2):
            if content.get("type") == "frame" and content.get("ack") == 450:
                frame = (content, buffers)
            elif content.get("type") == "note":
                notes.append(content["text"])
    assert frame is not None and frame[0]["error"] is None
    out = jpeg.decode(frame[1][0])
    assert abs(int(out[:, :32].mean()) - 215) < 6  # scaled back to 0..255, not 0..1
    assert len(notes) == 1 and "float pixels" in notes[0] and "scaled by 255" in notes[0]
