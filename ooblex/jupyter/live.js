// ooblex live widget (anywidget ESM). Webcam -> canvas -> JPEG or raw RGBA -> kernel; processed frame -> canvas.
// Frames travel over the side channel (a WebSocket the ooblex server extension proxies to the kernel's
// live loop thread: keeps flowing while a cell runs) or, where that cannot be opened, over the widget's
// comm. At most `max_in_flight` frames are unanswered; a reply acknowledges every frame up to its `ack`
// (older ones were dropped kernel-side: latest-frame-wins), per lane in compare mode.
// Round trip = capture to processed frame drawn.
// The view tells the truth: when its kernel restarts or shuts down it says so, stops the camera and greys
// out (`ooblex-dead`); when the kernel goes quiet it greys out until it is heard again; a camera that
// cannot start stops the widget. A notebook saved with this view open keeps the widget's state with its
// `poster` (the newest frames), so reopened without this kernel it shows that picture ("saved view").

const ACK_TIMEOUT_MS = 2000;
// The kernel speaks at least every 2 s (stats while running, a beat while stopped); longer silence is shown.
const SILENT_MS = 6000;
const WIDGET_STATE = "application/vnd.jupyter.widget-state+json";
const MARK = "ooblex live widget";  // first words of this file: finds this widget's entries in saved state
const RESTARTED = "the kernel restarted: run the cell again";
const SHUT_DOWN = "the kernel was shut down: start a kernel and run the cell again";
const SWITCHED = "the notebook now uses another kernel: run the cell again";
const WINDOW = 200;
const RESOLUTIONS = [[320, 240], [640, 480], [1280, 720], [1920, 1080]];
const PALETTE = ["#00e676", "#ffea00", "#40c4ff", "#ff4081", "#ff9100", "#b388ff"];
const enc = new TextEncoder();
const dec = new TextDecoder();

function pct(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round((p / 100) * (sorted.length - 1))))];
}

function fmt(v) {
  return v == null ? "–" : v.toFixed(v < 10 ? 1 : 0);
}

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function keep(list, v) {
  list.push(v);
  if (list.length > WINDOW) list.splice(0, list.length - WINDOW);
}

// --- side channel: where it is, and its binary messages (u32 header length | JSON header | payloads) ---
function pageConfig() {
  const el = document.getElementById("jupyter-config-data");
  try { return el ? JSON.parse(el.textContent) : null; } catch { return null; }
}

function channelUrl(channel) {
  const cfg = pageConfig();
  if (!cfg || !channel || !channel.kernel || !channel.widget) return null;
  const path = `ooblex/kernels/${encodeURIComponent(channel.kernel)}/live/${encodeURIComponent(channel.widget)}`;
  if (cfg.wsUrl) return cfg.wsUrl.replace(/\/?$/, "/") + path;
  const base = (cfg.baseUrl || "/").replace(/\/?$/, "/");
  return location.origin.replace(/^http/, "ws") + base + path;
}

function pack(header, payload) {
  const head = enc.encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + payload.byteLength);
  new DataView(out.buffer).setUint32(0, head.length);
  out.set(head, 4);
  out.set(new Uint8Array(payload), 4 + head.length);
  return out.buffer;
}

function unpack(buf) {
  const n = new DataView(buf).getUint32(0);
  const header = JSON.parse(dec.decode(new Uint8Array(buf, 4, n)));
  const payloads = [];
  let at = 4 + n;
  for (const size of header.sizes || []) { payloads.push(new Uint8Array(buf, at, size)); at += size; }
  return [header, payloads];
}

function bytesOf(b) {
  return b instanceof Uint8Array ? b : new Uint8Array(b.buffer ?? b, b.byteOffset ?? 0, b.byteLength);
}

async function drawBytes(canvas, bytes, meta) {
  if (meta.format === "rgba") {
    const img = new ImageData(new Uint8ClampedArray(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      meta.width, meta.height);
    if (canvas.width !== img.width || canvas.height !== img.height) { canvas.width = img.width; canvas.height = img.height; }
    canvas.getContext("2d").putImageData(img, 0, 0);
    return;
  }
  const bmp = await createImageBitmap(new Blob([bytes], { type: "image/jpeg" }));
  if (canvas.width !== bmp.width || canvas.height !== bmp.height) { canvas.width = bmp.width; canvas.height = bmp.height; }
  canvas.getContext("2d").drawImage(bmp, 0, 0);
  bmp.close();
}

// --- the result overlay (schema: ooblex/jupyter/overlay.py) ---
function drawOverlay(canvas, ov, w, hgt, mirror) {
  if (canvas.width !== w || canvas.height !== hgt) { canvas.width = w; canvas.height = hgt; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, hgt);
  if (!ov) return 0;
  const sx = ov.size ? w / ov.size[0] : 1, sy = ov.size ? hgt / ov.size[1] : 1;
  const X = (x) => (mirror ? w - x * sx : x * sx);
  const line = Math.max(2, Math.round(w / 320));
  const font = Math.max(12, Math.round(w / 40));
  ctx.font = `${font}px sans-serif`;
  ctx.textBaseline = "top";
  const tag = (text, x, y, color) => {
    const tw = ctx.measureText(text).width + 8;
    ctx.fillStyle = "rgba(0,0,0,0.6)";
    ctx.fillRect(x, y, tw, font + 6);
    ctx.fillStyle = color;
    ctx.fillText(text, x + 4, y + 3);
  };
  const dot = (p, color) => {
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(X(p[0]), p[1] * sy, line * 1.2, 0, 2 * Math.PI);
    ctx.fill();
  };
  let drawn = 0;
  ov.boxes.forEach((b, i) => {
    const color = b.color || PALETTE[i % PALETTE.length];
    const [x, y, bw, bh] = b.box;
    const left = mirror ? X(x + bw) : X(x);
    ctx.strokeStyle = color;
    ctx.lineWidth = line;
    ctx.strokeRect(left, y * sy, bw * sx, bh * sy);
    const text = [b.label, b.score == null ? null : b.score.toFixed(2)].filter((s) => s != null).join(" ");
    if (text) tag(text, left, Math.max(0, y * sy - font - 6), color);
    b.points.forEach((p) => dot(p, color));
    drawn += 1;
  });
  ov.points.forEach((p) => dot(p, PALETTE[1]));
  ov.labels.forEach((text, i) => tag(text, 4, 4 + i * (font + 8), "#fff"));
  return drawn + ov.points.length + ov.labels.length;
}

function buildControl(value, c, onChange) {
  const row = h("label", "ooblex-control");
  row.append(h("span", "ooblex-control-name", c.name));
  let input;
  const out = h("span", "ooblex-control-value");
  if (c.kind === "dropdown") {
    input = h("select");
    c.options.forEach((o, i) => {
      const opt = h("option", null, String(o));
      opt.value = String(i);
      input.append(opt);
    });
    input.value = String(Math.max(0, c.options.findIndex((o) => o === value)));
    input.onchange = () => onChange(c.name, c.options[Number(input.value)]);
  } else if (c.kind === "checkbox") {
    input = h("input");
    input.type = "checkbox";
    input.checked = !!value;
    input.onchange = () => onChange(c.name, input.checked);
  } else if (c.kind === "slider") {
    input = h("input");
    input.type = "range";
    input.min = c.min; input.max = c.max; input.step = c.step;
    input.value = value;
    out.textContent = String(value);
    input.oninput = () => {
      const v = c.type === "int" ? parseInt(input.value, 10) : parseFloat(input.value);
      out.textContent = String(v);
      onChange(c.name, v);
    };
  } else {
    input = h("input");
    input.type = "text";
    input.value = value == null ? "" : String(value);
    input.onchange = () => onChange(c.name, input.value);
  }
  input.dataset.param = c.name;
  row.append(input, out);
  return row;
}

// --- saved state: this widget's model (and the models it refers to) as a notebook keeps them ---
function base64(view) {
  const b = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

function modelState(m) {
  const state = m.serialize(m.get_state(true));
  const buffers = [];
  for (const [k, v] of Object.entries(state)) {
    if (v instanceof DataView || ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
      buffers.push({ path: [k], data: base64(v instanceof ArrayBuffer ? new DataView(v) : v), encoding: "base64" });
      delete state[k];
    }
  }
  const entry = { model_name: m.get("_model_name"), model_module: m.get("_model_module"),
    model_module_version: m.get("_model_module_version"), state };
  if (buffers.length) entry.buffers = buffers;
  return entry;
}

// Resolves this widget's model and those it refers to ("IPY_MODEL_<id>": its layout), for a synchronous save.
async function resolveModels(mgr, id, into = new Map()) {
  if (into.has(id)) return into;
  const m = await mgr.get_model(id);
  into.set(id, m);
  for (const v of Object.values(m.serialize(m.get_state(true)))) {
    if (typeof v === "string" && v.startsWith("IPY_MODEL_")) await resolveModels(mgr, v.slice(10), into);
  }
  return into;
}

function keepInNotebook(mgr, models) {
  const nb = mgr.context?.model;
  if (!nb?.getMetadata || !nb.setMetadata) return;
  const meta = nb.getMetadata("widgets") || {};
  const saved = meta[WIDGET_STATE] || { version_major: 2, version_minor: 0, state: {} };
  const state = {};
  for (const [id, entry] of Object.entries(saved.state || {})) {
    const ours = typeof entry?.state?._esm === "string" && entry.state._esm.includes(MARK);
    if (!ours || mgr.has_model(id)) state[id] = entry;  // drop the state of ooblex widgets gone for good
  }
  for (const [id, m] of models) state[id] = modelState(m);
  nb.setMetadata("widgets", { ...meta, [WIDGET_STATE]: { ...saved, state } });
}

function render({ model, el }) {
  el.classList.add("ooblex-live");
  if (el.classList.contains("jupyter-widgets-disconnected")) return renderSaved(model, el);
  // header: title, transport badge, status; toolbar; panes (input + one per lane)
  const head = h("div", "ooblex-head");
  const title = h("span", "ooblex-title");
  const badge = h("span", "ooblex-path");
  const status = h("span", "ooblex-status");
  head.append(title, badge, status);
  const bar = h("div", "ooblex-toolbar");
  const button = h("button", "ooblex-toggle");
  const cameraSel = h("select", "ooblex-camera");
  cameraSel.title = "camera";
  const sizeSel = h("select", "ooblex-resolution");
  sizeSel.title = "resolution";
  for (const [w, hh] of RESOLUTIONS) {
    const o = h("option", null, `${w}×${hh}`);
    o.value = `${w}x${hh}`;
    sizeSel.append(o);
  }
  const check = (cls, label, on) => {
    const l = h("label", `ooblex-check ${cls}`);
    const box = h("input");
    box.type = "checkbox";
    box.checked = on;
    l.append(box, h("span", null, label));
    return [l, box];
  };
  const [mirrorLabel, mirrorBox] = check("ooblex-mirror", "mirror", false);
  const [overlayLabel, overlayBox] = check("ooblex-overlay-toggle", "overlay", true);
  const snapButton = h("button", "ooblex-snapshot", "Snapshot");
  snapButton.title = "keep the newest processed frame in live.snapshots";
  const recButton = h("button", "ooblex-record", "● Record");
  recButton.title = "record processed frames into live.recordings";
  bar.append(button, cameraSel, sizeSel, mirrorLabel, overlayLabel, snapButton, recButton);
  const panes = h("div", "ooblex-panes");
  const inPane = h("div", "ooblex-pane");
  const video = h("video", "ooblex-input");
  video.muted = true; video.playsInline = true; video.autoplay = true;
  const inCanvas = h("canvas", "ooblex-input");
  const inInfo = h("div", "ooblex-stats ooblex-input-stats");
  inPane.append(h("div", "ooblex-label", "input"), h("div", "ooblex-media"), inInfo);
  inPane.querySelector(".ooblex-media").append(video, inCanvas);
  panes.append(inPane);
  el.append(head, bar, panes);

  const grab = document.createElement("canvas");
  const grabCtx = grab.getContext("2d", { willReadFrequently: true });
  let camera = null;            // MediaStream
  let seq = 0;
  const pending = new Map();    // browser seq -> {t0, lanes: Set of lanes still to answer}
  let captureMs = [];           // draw + encode in the browser
  let capturing = false;
  let alive = true;
  let pump = null;
  let lanes = [];               // per lane: its elements and measurements
  let ws = null;                // the side channel, when open
  let path = "connecting";
  let retryMs = 2000;
  let retryTimer = null;
  let noteTimer = null;
  let dead = null;              // why the kernel behind this view is gone (the view then stays as it is)
  let cameraError = "";         // why the camera did not start (the widget was stopped)
  let heard = performance.now();  // the kernel's last message
  el.dataset.framesShown = "0";
  el.dataset.state = "live";

  const isBrowser = () => model.get("source_kind") === "browser";

  function setPath(p, why) {
    path = p;
    el.dataset.transport = p;
    badge.textContent = p === "channel" ? "side channel" : p === "gone" ? "no kernel" : p;
    badge.className = `ooblex-path ooblex-path-${p}`;
    badge.title = p === "channel"
      ? "frames travel over the ooblex server extension's WebSocket: they keep flowing while cells run"
      : p === "comm" ? `frames travel over the widget's comm, which the kernel reads only between cells (${why})`
        : p === "gone" ? "no kernel behind this view" : "opening the side channel";
  }

  function note(text) {
    status.textContent = text;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(renderHead, 5000);
  }

  // --- transport ---
  function sendControl(msg) {
    if (ws) ws.send(JSON.stringify(msg)); else model.send(msg);
  }

  function sendFrame(header, payload) {
    if (ws) ws.send(pack(header, payload)); else model.send(header, undefined, [payload]);
  }

  function useComm(why) {
    if (dead) return;
    if (path !== "comm") model.send({ type: "hello", transport: "comm", why });
    setPath("comm", why);
  }

  function connect() {
    retryTimer = null;
    if (!alive || ws || dead) return;
    const url = channelUrl(model.get("channel"));
    if (!url) {
      useComm(pageConfig() ? "the kernel serves no side channel" : "this page is not JupyterLab or Notebook 7");
      return;
    }
    const sock = new WebSocket(url);
    sock.binaryType = "arraybuffer";
    let opened = false;
    const giveUp = setTimeout(() => sock.close(), 5000);
    sock.onopen = () => {
      clearTimeout(giveUp);
      opened = true;
      retryMs = 2000;
      ws = sock;
      pending.clear();
      setPath("channel");
      tick();
    };
    sock.onmessage = (ev) => {
      if (typeof ev.data === "string") onMsg(JSON.parse(ev.data), []);
      else { const [header, payloads] = unpack(ev.data); onMsg(header, payloads); }
    };
    sock.onclose = (ev) => {
      clearTimeout(giveUp);
      if (ws === sock) { ws = null; pending.clear(); }
      if (!alive || dead) return;
      useComm(opened ? `side channel closed (${ev.reason || ev.code})`
        : "the ooblex server extension's WebSocket could not be opened (not installed or enabled, or a remote kernel)");
      if (opened) note(`side channel lost (${ev.reason || ev.code}): frames travel over the comm, between cells`);
      retryTimer = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 60000);
    };
  }

  // --- lanes: one output pane per thread, with its stats, controls and result ---
  function buildLanes() {
    for (const lane of lanes) lane.pane.remove();
    lanes = model.get("lanes").map((spec, i) => {
      const pane = h("div", "ooblex-pane ooblex-lane");
      const media = h("div", "ooblex-media");
      const canvas = h("canvas", "ooblex-output");
      const overlay = h("canvas", "ooblex-overlay");
      media.append(canvas, overlay);
      const stats = h("div", "ooblex-stats");
      const controls = h("div", "ooblex-controls");
      const result = h("pre", "ooblex-result");
      pane.append(h("div", "ooblex-label", spec.label), media, stats, controls, result);
      panes.append(pane);
      const lane = { i, spec, pane, canvas, overlay, stats, controls, result, rtts: [], unsent: [], kernelMs: [],
        shown: 0, drawing: Promise.resolve(), kernel: {} };
      renderControls(lane);
      return lane;
    });
    el.classList.toggle("ooblex-compare", lanes.length > 1);
  }

  function renderControls(lane) {
    const values = model.get("values")[lane.i] || {};
    lane.controls.replaceChildren(...lane.spec.controls.map((c) => buildControl(values[c.name], c, (name, v) => {
      const all = model.get("values").map((x, j) => (j === lane.i ? { ...x, [name]: v } : x));
      model.set("values", all);
      model.save_changes();
      if (ws) sendControl({ type: "params", lane: lane.i, params: all[lane.i] });
    })));
  }

  function updateControls() {
    const all = model.get("values");
    for (const lane of lanes) {
      const values = all[lane.i] || {};
      for (const input of lane.controls.querySelectorAll("[data-param]")) {
        if (input === document.activeElement) continue;
        const c = lane.spec.controls.find((x) => x.name === input.dataset.param);
        if (!c) continue;
        const v = values[c.name];
        if (c.kind === "checkbox") input.checked = !!v;
        else if (c.kind === "dropdown") input.value = String(Math.max(0, c.options.findIndex((o) => o === v)));
        else input.value = v == null ? "" : String(v);
        const out = input.parentElement.querySelector(".ooblex-control-value");
        if (out && c.kind === "slider") out.textContent = String(v);
      }
    }
  }

  function renderHead() {
    title.textContent = `${model.get("title")} · v${model.get("version")} · ${model.get("source_label")}`;
    if (dead) return;
    const running = model.get("running");
    button.textContent = running ? "Stop" : "Start";
    el.dataset.running = String(running);
    status.textContent = !running && cameraError ? cameraError : model.get("status");
    status.classList.toggle("ooblex-alert", !running && !!cameraError);
    const browser = isBrowser();
    video.style.display = browser ? "" : "none";
    inCanvas.style.display = browser ? "none" : "";
    cameraSel.style.display = browser && cameraSel.options.length > 1 ? "" : "none";
    sizeSel.style.display = browser ? "" : "none";
  }

  function renderStats() {
    for (const lane of lanes) {
      const p50 = pct(lane.rtts, 50), p95 = pct(lane.rtts, 95);
      const k = lane.kernel, lat = k.latency_ms || {};
      const parts = [`fps ${fmt(k.fps ?? 0)}`];
      if (isBrowser()) parts.push(`round trip ${fmt(p50)}/${fmt(p95)} ms`);
      for (const s of ["queue", "compute", "engine", "total"]) {
        if (lat[s]) parts.push(`${s} ${fmt(lat[s].p50)}/${fmt(lat[s].p95)} ms`);
      }
      parts.push(`dropped ${k.dropped ?? 0} · errors ${k.errors ?? 0}`);
      lane.stats.textContent = parts.join(" · ") + "  (p50/p95)";
      lane.pane.dataset.rttP50 = p50 == null ? "" : p50.toFixed(2);
      lane.pane.dataset.framesShown = String(lane.shown);
      if (lane.i === 0) {
        el.dataset.rttP50 = lane.pane.dataset.rttP50;
        el.dataset.rttP95 = p95 == null ? "" : p95.toFixed(2);
        const k50 = pct(lane.kernelMs, 50);
        el.dataset.kernelP50 = k50 == null ? "" : k50.toFixed(2);
      }
    }
    const c50 = pct(captureMs, 50);
    el.dataset.captureP50 = c50 == null ? "" : c50.toFixed(2);
    inInfo.textContent = isBrowser() && camera
      ? `${grab.width}×${grab.height} · ${model.get("codec")} · capture ${fmt(c50)} ms` : "";
  }

  // --- camera ---
  function constraints() {
    const c = { ...model.get("constraints") };
    if (cameraSel.value) c.deviceId = { exact: cameraSel.value };
    return Object.keys(c).length ? c : true;
  }

  async function listCameras() {
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const current = camera && camera.getVideoTracks()[0]?.getSettings().deviceId;
    cameraSel.replaceChildren(...devices.map((d, i) => {
      const o = h("option", null, d.label || `camera ${i + 1}`);
      o.value = d.deviceId;
      return o;
    }));
    if (current) cameraSel.value = current;
    renderHead();
  }

  async function startCamera() {
    if (camera) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: constraints(), audio: false });
    } catch (err) {
      // Not running without a camera: the button says Start (which tries again) and the kernel knows.
      cameraError = `camera unavailable: ${err.name}${err.message ? `: ${err.message}` : ""}`;
      if (!dead && model.get("running")) { model.set("running", false); model.save_changes(); }
      renderHead();
      return;
    }
    if (camera) { stream.getTracks().forEach((t) => t.stop()); return; }  // a second start raced this one
    camera = stream;
    if (!alive || dead || !model.get("running") || !isBrowser()) { stopCamera(); return; }
    video.srcObject = camera;
    await video.play().catch(() => {});
    listCameras().catch(() => {});
    pump = setInterval(tick, 5);
  }

  function stopCamera() {
    if (pump) clearInterval(pump);
    pump = null;
    if (camera) camera.getTracks().forEach((t) => t.stop());
    camera = null;
    video.srcObject = null;
    pending.clear();
  }

  function restartCamera() {
    stopCamera();
    if (model.get("running") && isBrowser()) startCamera();
  }

  function expire(now) {
    for (const [s, p] of pending) if (now - p.t0 > ACK_TIMEOUT_MS) pending.delete(s);
  }

  let lastVideoTime = -1;
  async function tick() {
    if (capturing || !camera || video.readyState < 2 || path === "connecting") return;
    const now = performance.now();
    expire(now);
    if (pending.size >= model.get("max_in_flight") || video.currentTime === lastVideoTime) return;
    capturing = true;
    try {
      lastVideoTime = video.currentTime;
      const w = video.videoWidth, hgt = video.videoHeight;
      if (grab.width !== w || grab.height !== hgt) { grab.width = w; grab.height = hgt; }
      const t0 = performance.now();
      grabCtx.drawImage(video, 0, 0, w, hgt);
      let header, payload;
      if (model.get("codec") === "raw") {
        payload = grabCtx.getImageData(0, 0, w, hgt).data.buffer;
        header = { format: "rgba", width: w, height: hgt };
      } else {
        const blob = await new Promise((res) => grab.toBlob(res, "image/jpeg", model.get("quality")));
        if (!blob) return;
        payload = await blob.arrayBuffer();
        header = { format: "jpeg" };
      }
      if (!camera) return;
      const s = seq++;
      pending.set(s, { t0, lanes: new Set(lanes.map((l) => l.i)) });
      keep(captureMs, performance.now() - t0);
      sendFrame({ type: "frame", seq: s, ...header }, payload);
    } finally {
      capturing = false;
    }
  }

  // An answer from `lane` (null: every lane) covers every frame up to `s`; returns when `s` was sent.
  function ack(lane, s) {
    if (s == null) return null;
    const t0 = pending.get(s)?.t0 ?? null;
    for (const [k, p] of pending) {
      if (k > s) continue;
      if (lane == null) p.lanes.clear(); else p.lanes.delete(lane);
      if (!p.lanes.size) pending.delete(k);
    }
    return t0;
  }

  function onFrame(msg, buffers) {
    const lane = lanes[msg.lane ?? 0];
    if (!lane) return;
    const t0 = ack(lane.i, msg.ack);
    const images = (msg.images || []).map((meta, i) => [meta, buffers[i]]).filter(([, b]) => b);
    lane.drawing = lane.drawing.then(async () => {
      for (const [meta, buf] of images) await drawBytes(meta.role === "input" ? inCanvas : lane.canvas, bytesOf(buf), meta);
      const shown = overlayBox.checked
        ? drawOverlay(lane.overlay, msg.overlay, lane.canvas.width, lane.canvas.height, mirrorBox.checked)
        : drawOverlay(lane.overlay, null, lane.canvas.width, lane.canvas.height, false);
      lane.pane.dataset.overlayItems = String(shown);
      lane.shown += 1;
      if (lane.i === 0) el.dataset.framesShown = String(lane.shown);
      if (t0 != null) {
        const rtt = performance.now() - t0;
        keep(lane.rtts, rtt);
        if (lane.unsent.length < 64) lane.unsent.push(rtt);
        if (msg.kernel_ms != null) keep(lane.kernelMs, msg.kernel_ms);
      }
      lane.result.textContent = msg.error ? `error: ${msg.error}` : (msg.result ? JSON.stringify(msg.result) : "");
      if (isBrowser()) tick();
    }).catch((err) => { status.textContent = `cannot show frame: ${err}`; });
  }

  function onStats(msg) {
    (msg.lanes || []).forEach((k, i) => { if (lanes[i]) lanes[i].kernel = k || {}; });
    renderStats();
    const rec = msg.recording;
    recButton.classList.toggle("ooblex-recording", !!rec);
    recButton.textContent = rec ? `■ Stop ${rec.seconds.toFixed(1)} s · ${rec.frames}` : "● Record";
    for (const lane of lanes) {
      if (lane.unsent.length) sendControl({ type: "rtt", lane: lane.i, ms: lane.unsent });
      lane.unsent = [];
    }
  }

  function onMsg(msg, buffers) {
    if (dead) return;
    heard = performance.now();
    if (el.dataset.state === "silent") { el.classList.remove("ooblex-silent"); el.dataset.state = "live"; renderHead(); }
    if (msg.type === "frame") onFrame(msg, buffers);
    else if (msg.type === "ack") ack(msg.lane ?? null, msg.ack);
    else if (msg.type === "reset") pending.clear();
    else if (msg.type === "stats") onStats(msg);
    else if (msg.type === "note") note(msg.text);
    else if (msg.type === "recording") { recButton.classList.remove("ooblex-recording"); recButton.textContent = "● Record"; }
    else if (msg.type === "params") {
      const all = model.get("values").map((x, j) => (j === msg.lane ? msg.params : x));
      model.set("values", all);
      updateControls();
      if (msg.error) note(msg.error);
    }
  }

  function sync() {
    if (dead) return;
    if (model.get("running")) cameraError = "";
    renderHead();
    if (model.get("running") && isBrowser()) startCamera(); else stopCamera();
  }

  // The kernel behind this view is gone: say why, stop the camera, grey out, and make every button inert.
  function die(why) {
    if (dead) return;
    dead = why;
    if (camera && video.readyState >= 2) {  // keep the last camera picture (greyed) where the video was
      inCanvas.width = video.videoWidth;
      inCanvas.height = video.videoHeight;
      inCanvas.getContext("2d").drawImage(video, 0, 0);
      video.style.display = "none";
      inCanvas.style.display = "";
    }
    stopCamera();
    clearTimeout(retryTimer);
    clearTimeout(noteTimer);
    if (ws) { const sock = ws; ws = null; sock.close(); }
    pending.clear();
    el.classList.add("ooblex-dead");
    el.classList.remove("ooblex-silent");
    el.dataset.state = "dead";
    el.dataset.running = "false";
    setPath("gone");
    status.textContent = why;
    status.classList.add("ooblex-alert");
    button.textContent = "Start";
    button.title = why;
    for (const c of el.querySelectorAll("button, select, input")) c.disabled = true;
  }

  // Where the page can say (JupyterLab, Notebook 7): the kernel this widget lives in, watched for restarts,
  // shutdowns and kernel switches. Elsewhere the heartbeat below still notices a silent kernel.
  const mgr = model.widget_manager;
  const kernel = mgr?.kernel ?? null;
  const onKernelStatus = (_, st) => {
    if (st === "restarting" || st === "autorestarting") die(RESTARTED);
    else if (st === "dead") die(SHUT_DOWN);
  };
  kernel?.statusChanged?.connect(onKernelStatus);
  const onSave = (_, phase) => { if (phase === "started" && savable) keepInNotebook(mgr, savable); };
  let savable = null;
  if (mgr?.context?.saveState && model.get("channel").widget) {
    resolveModels(mgr, model.get("channel").widget).then((m) => { savable = m; }).catch(() => {});
    mgr.context.saveState.connect(onSave);
  }
  const watchdog = setInterval(() => {
    if (dead) return;
    if (kernel && (kernel.isDisposed || mgr.kernel !== kernel)) { die(mgr.kernel ? SWITCHED : SHUT_DOWN); return; }
    const quiet = performance.now() - heard;
    if (quiet > SILENT_MS && el.dataset.state === "live") {
      el.classList.add("ooblex-silent");
      el.dataset.state = "silent";
      status.textContent = `the kernel has not answered for ${Math.round(quiet / 1000)} s (busy, or gone)`;
    }
  }, 1000);

  function relane() {
    buildLanes();
    renderHead();
    renderStats();
  }

  button.onclick = () => {
    if (dead) return;
    model.set("running", !model.get("running"));  // fires change:running here at once (sync)
    model.save_changes();
  };
  cameraSel.onchange = restartCamera;
  sizeSel.onchange = () => {
    const [w, hgt] = sizeSel.value.split("x").map(Number);
    model.set("constraints", { ...model.get("constraints"), width: { ideal: w }, height: { ideal: hgt } });
    model.save_changes();
    restartCamera();
  };
  mirrorBox.onchange = () => el.classList.toggle("ooblex-mirrored", mirrorBox.checked);
  snapButton.onclick = () => sendControl({ type: "snapshot" });
  recButton.onclick = () => {
    const on = !recButton.classList.contains("ooblex-recording");
    recButton.classList.toggle("ooblex-recording", on);
    recButton.textContent = on ? "■ Stop" : "● Record";
    sendControl({ type: "record", on });
  };
  const wanted = model.get("constraints").width?.ideal;
  const size = RESOLUTIONS.find(([w]) => w === wanted);
  if (size) sizeSel.value = `${size[0]}x${size[1]}`;

  // One list for subscribing and unsubscribing, so the two cannot drift apart.
  const listeners = [
    ["msg:custom", (msg, buffers) => onMsg(msg, (buffers || []).map(bytesOf))], ["change:running", sync],
    ["change:source_kind", sync], ["change:status", renderHead], ["change:version", renderHead],
    ["change:title", renderHead], ["change:lanes", relane], ["change:values", updateControls],
    ["change:channel", () => { if (!ws) connect(); }],
    ["comm_live_update", () => setTimeout(() => {
      if (el.classList.contains("jupyter-widgets-disconnected")) die(RESTARTED);
    }, 0)],
  ];
  for (const [event, handler] of listeners) model.on(event, handler);
  setPath("connecting");
  relane();
  connect();
  sync();

  return () => {
    alive = false;
    stopCamera();
    clearInterval(watchdog);
    kernel?.statusChanged?.disconnect(onKernelStatus);
    mgr?.context?.saveState?.disconnect(onSave);
    clearTimeout(retryTimer);
    if (ws) ws.close();
    for (const [event, handler] of listeners) model.off(event, handler);
  };
}

// A view without a kernel behind it (a saved notebook reopened): the newest frames as they were saved.
function renderSaved(model, el) {
  el.classList.add("ooblex-saved");
  el.dataset.state = "saved";
  const head = h("div", "ooblex-head");
  head.append(h("span", "ooblex-title", `${model.get("title")} · v${model.get("version")} · ${model.get("source_label")}`),
    h("span", "ooblex-status", "saved view of the newest frames: run the cell to go live"));
  el.append(head);
  const poster = model.get("poster");
  if (poster && poster.byteLength) {
    const img = h("img", "ooblex-poster");
    img.alt = "the newest input and output when the notebook was saved";
    img.src = URL.createObjectURL(new Blob([bytesOf(poster)], { type: "image/jpeg" }));
    el.append(img);
    return () => URL.revokeObjectURL(img.src);
  }
  el.append(h("div", "ooblex-stats", "no frames were processed before the notebook was saved"));
  return undefined;
}

export default { render };
