// ooblex live widget (anywidget ESM). Webcam -> canvas -> JPEG -> comm; processed JPEG -> canvas.
// At most `max_in_flight` frames are unanswered; an output acknowledges every frame up to its `ack`
// (older ones were dropped kernel-side: latest-frame-wins). Round trip = capture to processed frame drawn.

const ACK_TIMEOUT_MS = 2000;
const RTT_WINDOW = 200;

function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round((p / 100) * (sorted.length - 1))));
  return sorted[i];
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

function buildControl(model, c, onChange) {
  const row = h("label", "ooblex-control");
  row.append(h("span", "ooblex-control-name", c.name));
  const value = () => model.get("params")[c.name];
  let input;
  const out = h("span", "ooblex-control-value");
  if (c.kind === "dropdown") {
    input = h("select");
    c.options.forEach((o, i) => {
      const opt = h("option", null, String(o));
      opt.value = String(i);
      input.append(opt);
    });
    input.value = String(Math.max(0, c.options.findIndex((o) => o === value())));
    input.onchange = () => onChange(c.name, c.options[Number(input.value)]);
  } else if (c.kind === "checkbox") {
    input = h("input");
    input.type = "checkbox";
    input.checked = !!value();
    input.onchange = () => onChange(c.name, input.checked);
  } else if (c.kind === "slider") {
    input = h("input");
    input.type = "range";
    input.min = c.min; input.max = c.max; input.step = c.step;
    input.value = value();
    out.textContent = String(value());
    input.oninput = () => {
      const v = c.type === "int" ? parseInt(input.value, 10) : parseFloat(input.value);
      out.textContent = String(v);
      onChange(c.name, v);
    };
  } else {
    input = h("input");
    input.type = "text";
    input.value = value() == null ? "" : String(value());
    input.onchange = () => onChange(c.name, input.value);
  }
  input.dataset.param = c.name;
  row.append(input, out);
  return row;
}

function render({ model, el }) {
  el.classList.add("ooblex-live");
  const head = h("div", "ooblex-head");
  const title = h("span", "ooblex-title");
  const button = h("button", "ooblex-toggle");
  const status = h("span", "ooblex-status");
  head.append(title, button, status);
  const panes = h("div", "ooblex-panes");
  const inPane = h("div", "ooblex-pane");
  const outPane = h("div", "ooblex-pane");
  const video = h("video", "ooblex-input");
  video.muted = true; video.playsInline = true; video.autoplay = true;
  const inCanvas = h("canvas", "ooblex-input");
  const outCanvas = h("canvas", "ooblex-output");
  inPane.append(h("div", "ooblex-label", "input"), video, inCanvas);
  outPane.append(h("div", "ooblex-label", "output"), outCanvas);
  panes.append(inPane, outPane);
  const statsEl = h("div", "ooblex-stats");
  const resultEl = h("pre", "ooblex-result");
  const controlsEl = h("div", "ooblex-controls");
  el.append(head, panes, statsEl, controlsEl, resultEl);

  const grab = document.createElement("canvas");
  const grabCtx = grab.getContext("2d");
  let camera = null;            // MediaStream
  let seq = 0;
  const pending = new Map();    // browser seq -> send time (performance.now())
  let rtts = [];
  let kernelMs = [];            // comm arrival to processed JPEG sent, measured by the kernel
  let captureMs = [];           // draw + JPEG encode in the browser
  let unsentRtts = [];
  let shown = 0;
  let capturing = false;
  let alive = true;
  let kernelStats = {};
  let pump = null;
  let drawing = Promise.resolve();
  el.dataset.framesShown = "0";

  const isBrowser = () => model.get("source_kind") === "browser";

  function renderHead() {
    title.textContent = `${model.get("thread_name")} · v${model.get("version")} · ${model.get("source_label")}`;
    button.textContent = model.get("running") ? "Stop" : "Start";
    status.textContent = model.get("status");
    video.style.display = isBrowser() ? "" : "none";
    inCanvas.style.display = isBrowser() ? "none" : "";
  }

  function renderControls() {
    controlsEl.replaceChildren(...model.get("controls").map((c) => buildControl(model, c, (name, v) => {
      model.set("params", { ...model.get("params"), [name]: v });
      model.save_changes();
    })));
  }

  function updateControls() {
    const params = model.get("params");
    for (const input of controlsEl.querySelectorAll("[data-param]")) {
      if (input === document.activeElement) continue;
      const c = model.get("controls").find((x) => x.name === input.dataset.param);
      const v = params[input.dataset.param];
      if (!c) continue;
      if (c.kind === "checkbox") input.checked = !!v;
      else if (c.kind === "dropdown") input.value = String(Math.max(0, c.options.findIndex((o) => o === v)));
      else input.value = v == null ? "" : String(v);
      const out = input.parentElement.querySelector(".ooblex-control-value");
      if (out && c.kind === "slider") out.textContent = String(v);
    }
  }

  function renderStats() {
    const sorted = [...rtts].sort((a, b) => a - b);
    const p50 = pct(sorted, 50), p95 = pct(sorted, 95);
    el.dataset.rttP50 = p50 == null ? "" : p50.toFixed(2);
    el.dataset.rttP95 = p95 == null ? "" : p95.toFixed(2);
    const k50 = pct([...kernelMs].sort((a, b) => a - b), 50), c50 = pct([...captureMs].sort((a, b) => a - b), 50);
    el.dataset.kernelP50 = k50 == null ? "" : k50.toFixed(2);
    el.dataset.captureP50 = c50 == null ? "" : c50.toFixed(2);
    const lat = kernelStats.latency_ms || {};
    const stages = ["queue", "compute", "return", "engine", "total"]
      .filter((s) => lat[s])
      .map((s) => `${s} ${fmt(lat[s].p50)}/${fmt(lat[s].p95)}`);
    const parts = [`fps ${fmt(kernelStats.fps ?? 0)}`];
    if (isBrowser()) parts.push(`round trip ${fmt(p50)}/${fmt(p95)} ms`);
    parts.push(...stages.map((s) => s + " ms"));
    parts.push(`dropped ${kernelStats.dropped ?? 0} · errors ${kernelStats.errors ?? 0}`);
    statsEl.textContent = parts.join(" · ") + "  (p50/p95)";
  }

  async function startCamera() {
    if (camera) return;
    try {
      const c = model.get("constraints");
      camera = await navigator.mediaDevices.getUserMedia({ video: Object.keys(c).length ? c : true, audio: false });
    } catch (err) {
      status.textContent = `camera unavailable: ${err.name}: ${err.message}`;
      return;
    }
    if (!alive || !model.get("running")) { stopCamera(); return; }
    video.srcObject = camera;
    await video.play().catch(() => {});
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

  function expire(now) {
    for (const [s, t0] of pending) if (now - t0 > ACK_TIMEOUT_MS) pending.delete(s);
  }

  let lastVideoTime = -1;
  async function tick() {
    if (capturing || !camera || video.readyState < 2) return;
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
      const blob = await new Promise((res) => grab.toBlob(res, "image/jpeg", model.get("quality")));
      if (!blob || !camera) return;
      const buf = await blob.arrayBuffer();
      const s = seq++;
      pending.set(s, t0);
      captureMs.push(performance.now() - t0);
      if (captureMs.length > RTT_WINDOW) captureMs = captureMs.slice(-RTT_WINDOW);
      model.send({ type: "frame", seq: s, t: t0 }, undefined, [buf]);
    } finally {
      capturing = false;
    }
  }

  function ack(s) {
    if (s == null) return null;
    const t0 = pending.get(s);
    for (const k of [...pending.keys()]) if (k <= s) pending.delete(k);
    return t0 ?? null;
  }

  async function draw(canvas, buffer) {
    const bmp = await createImageBitmap(new Blob([buffer], { type: "image/jpeg" }));
    if (canvas.width !== bmp.width || canvas.height !== bmp.height) {
      canvas.width = bmp.width; canvas.height = bmp.height;
    }
    canvas.getContext("2d").drawImage(bmp, 0, 0);
    bmp.close();
  }

  function onFrame(msg, buffers) {
    const t0 = ack(msg.ack);
    const [inBuf, outBuf] = msg.input ? buffers : [null, buffers[0]];
    drawing = drawing.then(async () => {
      if (inBuf) await draw(inCanvas, inBuf.buffer ?? inBuf);
      if (outBuf) await draw(outCanvas, outBuf.buffer ?? outBuf);
      shown += 1;
      el.dataset.framesShown = String(shown);
      if (t0 != null) {
        const rtt = performance.now() - t0;
        rtts.push(rtt); unsentRtts.push(rtt);
        if (msg.kernel_ms != null) kernelMs.push(msg.kernel_ms);
        if (kernelMs.length > RTT_WINDOW) kernelMs = kernelMs.slice(-RTT_WINDOW);
        if (rtts.length > RTT_WINDOW) rtts = rtts.slice(-RTT_WINDOW);
      }
      resultEl.textContent = msg.error ? `error: ${msg.error}` : (msg.result ? JSON.stringify(msg.result) : "");
      if (isBrowser()) tick();
    }).catch((err) => { status.textContent = `cannot show frame: ${err}`; });
  }

  function onMsg(msg, buffers) {
    if (msg.type === "frame") onFrame(msg, buffers);
    else if (msg.type === "ack") { ack(msg.ack); }
    else if (msg.type === "reset") { pending.clear(); }
    else if (msg.type === "stats") {
      kernelStats = msg.stats || {};
      renderStats();
      if (unsentRtts.length) { model.send({ type: "rtt", ms: unsentRtts }); unsentRtts = []; }
    }
  }

  function sync() {
    renderHead();
    if (model.get("running") && isBrowser()) startCamera(); else stopCamera();
  }

  button.onclick = () => { model.set("running", !model.get("running")); model.save_changes(); };
  // One list for subscribing and unsubscribing, so the two cannot drift apart.
  const listeners = [
    ["msg:custom", onMsg], ["change:running", sync], ["change:source_kind", sync],
    ["change:status", renderHead], ["change:version", renderHead], ["change:thread_name", renderHead],
    ["change:controls", renderControls], ["change:params", updateControls],
  ];
  for (const [event, handler] of listeners) model.on(event, handler);
  renderControls();
  renderStats();
  sync();

  return () => {
    alive = false;
    stopCamera();
    for (const [event, handler] of listeners) model.off(event, handler);
  };
}

export default { render };
