// In-browser half of benchmarks/av_sync.py (and tests/test_audio_browser.py): a WHEP viewer that
// notes when each flash of the sync signal is shown and each beep is played, on one clock
// (performance.now() ms): video by requestVideoFrameCallback's expectedDisplayTime, audio by an
// AudioWorklet's sample position mapped through AudioContext.getOutputTimestamp().
"use strict";

const BEEP_WORKLET = `
class Beep extends AudioWorkletProcessor {
  constructor() { super(); this.lastLoud = -1e9; }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        if (Math.abs(channel[i]) > 0.1) {
          const t = currentTime + i / sampleRate;
          if (t - this.lastLoud > 0.5) this.port.postMessage(t);
          this.lastLoud = t;
        }
      }
    }
    return true;
  }
}
registerProcessor("beep", Beep);`;

window.avsync = {
  flashes: [], beeps: [], frames: 0, pc: null,

  async whep(url, token) {
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    const tracks = new Promise((resolve) => {
      pc.ontrack = (ev) => { stream.addTrack(ev.track); if (stream.getTracks().length === 2) resolve(); };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") resolve();
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
      setTimeout(resolve, 2000);
    });
    const headers = { "Content-Type": "application/sdp", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    const r = await fetch(url, { method: "POST", headers, body: pc.localDescription.sdp });
    if (r.status !== 201) throw new Error(`WHEP ${r.status}: ${await r.text()}`);
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    await tracks;
    return stream;
  },

  async measure(stream) {
    const video = document.createElement("video");
    // Not muted: Chromium renders (and counts the energy of) remote audio only for an unmuted element.
    Object.assign(video, { muted: false, autoplay: true, playsInline: true, srcObject: stream, width: 160 });
    document.body.append(video);
    await video.play();
    const canvas = document.createElement("canvas");
    canvas.width = 32; canvas.height = 24;
    const g = canvas.getContext("2d", { willReadFrequently: true });
    let bright = false;
    const onFrame = (now, meta) => {
      this.frames++;
      g.drawImage(video, 0, 0, 32, 24);
      const d = g.getImageData(8, 6, 16, 12).data;
      let sum = 0;
      for (let i = 0; i < d.length; i += 4) sum += d[i];
      const isBright = sum / (d.length / 4) > 128;
      if (isBright && !bright) this.flashes.push(meta.expectedDisplayTime);
      bright = isBright;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);

    const ac = new AudioContext();
    await ac.audioWorklet.addModule(URL.createObjectURL(new Blob([BEEP_WORKLET], { type: "text/javascript" })));
    const node = new AudioWorkletNode(ac, "beep");
    node.port.onmessage = (e) => {
      const ts = ac.getOutputTimestamp();
      this.beeps.push(ts.performanceTime + (e.data - ts.contextTime) * 1000);
    };
    ac.createMediaStreamSource(new MediaStream(stream.getAudioTracks())).connect(node);
    node.connect(ac.destination); // pulled by the output, which plays silence (the node outputs none)
    await ac.resume();
  },

  async jitterBuffers() {
    const out = {};
    (await this.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.jitterBufferEmittedCount) {
        out[r.kind] = Math.round(1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount);
      }
    });
    return out;
  },

  async audioEnergy() {
    let energy = 0;
    (await this.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") energy = r.totalAudioEnergy || 0;
    });
    return energy;
  },
};
