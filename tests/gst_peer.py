"""A WHIP publisher or WHEP viewer built on GStreamer ``webrtcbin`` at its default settings.

Runs under Debian's own Python (``/usr/bin/python3`` with ``python3-gi``), not the project's
virtual environment: it is an independent peer, with GStreamer's ICE (libnice), DTLS (its default
RSA-2048 certificate), RTP stack and RTCP timing (reports every ~5 s, RFC 3550).

    python3 gst_peer.py whip URL --codec vp8|h264 --seconds S [--token T]
    python3 gst_peer.py whep URL --seconds S [--token T]

Prints one JSON object per line: ``{"event": "answered", ...}`` once the server answered, then
``{"event": "tick", "t": s, "frames": n, "state": ...}`` each second (frames decoded so far, for a
viewer), ``{"event": "error", ...}`` on a pipeline error, and exits 0 after ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

SOURCE = "videotestsrc is-live=true pattern=smpte ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert"
ENCODERS = {
    # what a WebRTC browser stack sends
    "vp8": "vp8enc deadline=1 target-bitrate=800000 keyframe-max-dist=60 ! rtpvp8pay pt=96 ! "
           "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    # what OBS sends: x264 baseline, zero latency, SPS and PPS in packets of their own before each IDR
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast bitrate=800 key-int-max=60 ! "
            "video/x-h264,profile=baseline ! rtph264pay pt=102 config-interval=-1 aggregate-mode=none ! "
            "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000",
}
VIEWER_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.frames = 0
        self.loop = GLib.MainLoop()
        self.started = time.monotonic()
        if args.mode == "whip":
            self.pipe = Gst.parse_launch(f"{SOURCE} ! queue ! {ENCODERS[args.codec]} ! webrtcbin name=rtc")
            self.rtc = self.pipe.get_by_name("rtc")
            # a WHIP publisher only sends (as OBS does); webrtcbin's default would be sendrecv
            self.rtc.emit("get-transceiver", 0).set_property(
                "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        else:
            self.pipe = Gst.Pipeline.new("viewer")
            self.rtc = Gst.ElementFactory.make("webrtcbin", "rtc")
            self.pipe.add(self.rtc)
            self.rtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                          Gst.Caps.from_string(VIEWER_CAPS))
            self.rtc.connect("pad-added", self.on_pad)
        self.rtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.rtc.connect("notify::ice-gathering-state", self.on_gathering)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def run(self) -> int:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(1000, self.tick)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return 0

    def on_negotiation_needed(self, rtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        rtc.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()  # keep it referenced: the offer lives in it
        offer = reply.get_value("offer")
        self.rtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, rtc: Gst.Element, _pspec: object) -> None:
        if rtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        """Non-trickle WHIP/WHEP: POST the offer with every candidate, apply the answer."""
        sdp = self.rtc.get_property("local-description").sdp.as_text()
        headers = {"Content-Type": "application/sdp"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        request = urllib.request.Request(self.args.url, data=sdp.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer_text = response.read().decode()
                location = response.headers.get("Location")
                stream = response.headers.get("X-Ooblex-Stream")
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            say(event="error", message=f"POST {self.args.url}: {exc}")
            self.loop.quit()
            return False
        _, message = GstSdp.SDPMessage.new_from_text(answer_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.rtc.emit("set-remote-description", answer, Gst.Promise.new())
        say(event="answered", location=location, stream=stream)
        return False

    def on_pad(self, rtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.parse_bin_from_description(
            "rtpvp8depay ! vp8dec ! videoconvert ! fakesink name=sink signal-handoffs=true sync=false", True)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        decode.get_by_name("sink").connect("handoff", self.on_frame)
        pad.link(decode.get_static_pad("sink"))

    def on_frame(self, *_args: object) -> None:
        self.frames += 1

    def tick(self) -> bool:
        elapsed = time.monotonic() - self.started
        state = self.rtc.get_property("connection-state").value_nick
        say(event="tick", t=round(elapsed, 1), frames=self.frames, state=state)
        if elapsed >= self.args.seconds:
            self.loop.quit()
            return False
        return True

    def on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        say(event="error", message=f"{error.message} ({debug})")
        self.loop.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["whip", "whep"])
    parser.add_argument("url")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="vp8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--token")
    args = parser.parse_args()
    Gst.init(None)
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
