// Ooblex demo page: webcam -> WHIP (sendrecv) -> processed video back on the same connection; or, with
// ?watch=<stream id>, a receive-only viewer of someone else's stream (WHEP).
"use strict";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const STAGES = ["queue", "compute", "return", "engine", "total"];
let threads = {};
const WATCH = query.get("watch"); // a stream id: this page only watches it
let session = null; // {pc, location, streamId, viewToken, camera, timer}

// With OOBLEX_SECRET set the gateway wants a token: `ooblex demo` and share links give this page's URL
// with #token=..., which is moved out of the address bar into this tab's session storage. Or one logs in
// with a control token (kept under the console's key), and the page mints the narrower tokens it needs.
const TOKEN_KEY = "ooblex-token";
const CONTROL_KEY = "ooblex-control-token";
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) {
  sessionStorage.setItem(TOKEN_KEY, hashToken);
  history.replaceState(null, "", location.pathname + location.search);
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
const controlToken = () => sessionStorage.getItem(CONTROL_KEY) || "";
const authHeaders = (t = token()) => (t ? { Authorization: `Bearer ${t}` } : {});

async function api(path, options = {}) {
  const { token: t, ...init } = options;
  const r = await fetch(path, { ...init, headers: { ...authHeaders(t ?? token()), ...(init.headers || {}) } });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    if (r.status === 401) $("token-box").hidden = false;
    throw new Error(`${r.status}: ${detail}`);
  }
  return r;
}

// A publish token for a thread or a view token for a stream, minted by the gateway for the control token
// (POST /api/v1/tokens): the control token itself never goes into a session or a shared link.
async function minted(body, control = controlToken()) {
  const r = await api("/api/v1/tokens", {
    method: "POST", token: control, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return (await r.json()).token;
}

// What this page is about to do, as the body of a mint request.
const need = () => (WATCH ? { scope: "view", stream: WATCH } : { scope: "publish", thread: $("thread").value });

async function login(ev) {
  ev.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  $("login-error").textContent = "";
  try {
    const probe = await fetch("/api/v1/tokens", {
      method: "POST", headers: { ...authHeaders(value), "Content-Type": "application/json" },
      body: JSON.stringify(need()),
    });
    if (probe.status === 401) throw new Error("the token was refused (expired, or minted with another secret)");
    if (probe.status === 201) { // a control token: keep it, and use what it minted
      sessionStorage.setItem(CONTROL_KEY, value);
      sessionStorage.setItem(TOKEN_KEY, (await probe.json()).token);
    } else { // a publish or view token (403 here): use it as it is
      sessionStorage.removeItem(CONTROL_KEY);
      sessionStorage.setItem(TOKEN_KEY, value);
    }
  } catch (e) {
    $("login-error").textContent = `Log in failed: ${e.message}`;
    return;
  }
  $("token-box").hidden = true;
  document.body.classList.toggle("control", !!controlToken());
  setStatus(WATCH ? "Logged in." : "Logged in: press Start.");
  if (WATCH) start();
}

async function sharePublishLink() {
  const thread = $("thread").value;
  try {
    const t = await minted({ scope: "publish", thread, ttl_s: 3600 });
    $("publish-url").textContent = `${location.origin}/?thread=${encodeURIComponent(thread)}#token=${t}`;
  } catch (e) { $("publish-url").textContent = e.message; }
}

// Viewer URLs carry the stream's own view token (never the publisher's), so they can be shared.
const viewerUrl = (kind, s) => `${location.origin}/${kind}/${s.streamId}${s.viewToken ? `?token=${s.viewToken}` : ""}`;
// This page in watch-only mode, the view token in the fragment (never sent to a server, never logged).
const watchUrl = (s) => `${location.origin}/?watch=${encodeURIComponent(s.streamId)}` +
  (s.viewToken ? `#token=${s.viewToken}` : "");

function setStatus(text) { $("status").textContent = text; }

async function loadThreads() {
  const list = await (await api("/api/v1/threads")).json();
  threads = Object.fromEntries(list.map((t) => [t.name, t]));
  const select = $("thread");
  select.innerHTML = "";
  for (const t of list) select.add(new Option(t.name, t.name));
  const wanted = query.get("thread");
  if (wanted && threads[wanted]) select.value = wanted;
  else if (wanted) setStatus(`Unknown thread "${wanted}".`);
  showParams();
}

function paramControl(p) {
  const wrap = document.createElement("label");
  wrap.className = "param";
  wrap.textContent = p.name;
  const initial = query.has(p.name) ? query.get(p.name) : p.default;
  let input;
  if (p.choices) {
    input = document.createElement("select");
    for (const c of p.choices) input.add(new Option(String(c), String(c)));
    input.value = String(initial);
  } else if (p.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = initial === true || initial === "true" || initial === "1";
  } else if (p.type === "int" || p.type === "float") {
    input = document.createElement("input");
    const bounded = p.min !== null && p.max !== null;
    input.type = bounded ? "range" : "number";
    if (p.min !== null) input.min = p.min;
    if (p.max !== null) input.max = p.max;
    input.step = p.type === "int" ? 1 : bounded ? (p.max - p.min) / 100 : "any";
    input.value = initial;
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.value = initial ?? "";
  }
  input.name = p.name;
  const value = document.createElement("span");
  value.className = "value";
  const show = () => { value.textContent = input.type === "checkbox" ? input.checked : input.value; };
  show();
  input.addEventListener("input", () => { show(); sendParams(); });
  wrap.append(value, input);
  return wrap;
}

function showParams() {
  const t = threads[$("thread").value];
  $("thread-description").textContent = t ? t.description : "";
  const box = $("params");
  box.innerHTML = "";
  if (t) for (const p of t.params) box.append(paramControl(p));
}

function currentParams() {
  const out = {};
  for (const el of $("params").querySelectorAll("input, select")) {
    out[el.name] = el.type === "checkbox" ? el.checked : el.value;
  }
  return out;
}

let paramTimer = null;
function sendParams() {
  if (!session) return;
  clearTimeout(paramTimer);
  paramTimer = setTimeout(async () => {
    try {
      await api(`/api/v1/streams/${session.streamId}`, {
        method: "PATCH", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ params: currentParams() }),
      });
    } catch (e) { setStatus(`Parameters refused: ${e.message}`); }
  }, 80);
}

// RFC 9725 Link headers -> RTCIceServer list: <turn:host:3478>; rel="ice-server"; username="..."; credential="..."
function parseIceLinks(header) {
  const servers = [];
  for (const m of (header || "").matchAll(/<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*(?:=\s*(?:"[^"]*"|[^;,]*))?)*)/g)) {
    const params = {};
    for (const p of m[2].matchAll(/;\s*([^;,=\s]+)\s*(?:=\s*(?:"([^"]*)"|([^;,]*)))?/g)) {
      params[p[1].toLowerCase()] = p[2] ?? (p[3] || "").trim();
    }
    if (params.rel !== "ice-server") continue;
    const server = { urls: m[1] };
    if (params.username) Object.assign(server, { username: params.username, credential: params.credential || "" });
    servers.push(server);
  }
  return servers;
}

async function iceServersFor(path) {
  try {
    const r = await fetch(path, { method: "OPTIONS", headers: authHeaders() });
    return r.status === 204 ? parseIceLinks(r.headers.get("Link")) : [];
  } catch (_) {
    return []; // the POST that follows reports what is wrong
  }
}

function gatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have: host candidates come first
  });
}

// Processed video (and sound) that comes back on `pc` plays in #output.
function receive(pc) {
  const returned = new MediaStream();
  $("output").srcObject = returned;
  pc.ontrack = (ev) => {
    if ("playoutDelayHint" in ev.receiver) ev.receiver.playoutDelayHint = 0; // render at once
    if ("jitterBufferTarget" in ev.receiver) ev.receiver.jitterBufferTarget = 0;
    returned.addTrack(ev.track);
    if (ev.track.kind === "audio") $("unmute").hidden = false;
  };
  pc.onconnectionstatechange = () => {
    if (session?.pc !== pc) return; // an old session's last words
    setStatus(`Connection ${pc.connectionState}.`);
    if (pc.connectionState === "failed") stop("Connection failed.");
  };
}

// The session is open: show where else to watch it, poll its stats, allow Stop.
function opened() {
  const mjpeg = viewerUrl("mjpeg", session);
  $("mjpeg-url").href = mjpeg;
  $("mjpeg-url").textContent = mjpeg;
  $("watch-url").href = watchUrl(session);
  $("watch-url").textContent = watchUrl(session);
  $("whep-url").textContent = `${location.origin}/whep/${session.streamId}`;
  $("view-token").textContent = session.viewToken || "not needed (no secret set)";
  session.timer = setInterval(refreshStats, 1000);
  $("stop").disabled = false;
}

// Watch-only (?watch=ID): a receive-only WHEP session, no camera; a view token (or a control login) with a secret.
async function watch() {
  $("start").disabled = true;
  try {
    if (controlToken()) sessionStorage.setItem(TOKEN_KEY, await minted(need()));
    const path = `/whep/${encodeURIComponent(WATCH)}`;
    const pc = new RTCPeerConnection({ iceServers: await iceServersFor(path) });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    receive(pc);
    await pc.setLocalDescription(await pc.createOffer());
    setStatus("Gathering network candidates…");
    await gatheringDone(pc, 2000);
    setStatus(`Connecting to stream ${WATCH}…`);
    const r = await api(path, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
    session = { pc, camera: null, streamId: WATCH, viewToken: token(), location: r.headers.get("Location"), timer: null };
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    opened();
  } catch (e) {
    await stop(`Could not watch: ${e.message}`);
  }
}

async function start() {
  if (WATCH) return watch();
  $("start").disabled = true;
  const thread = $("thread").value;
  try {
    if (controlToken()) sessionStorage.setItem(TOKEN_KEY, await minted(need()));
    setStatus("Opening camera…");
    const camera = await openCamera();
    $("input").srcObject = camera;
    // STUN/TURN servers (fresh TURN credentials) come before the offer: a camera behind a NAT
    // that lets no UDP through reaches the gateway only through the relay.
    const pc = new RTCPeerConnection({ iceServers: await iceServersFor(`/whip/${encodeURIComponent(thread)}`) });
    const transceiver = pc.addTransceiver(camera.getVideoTracks()[0], { direction: "sendrecv", streams: [camera] });
    preferCodec(transceiver, $("codec").value);
    // The microphone goes along and comes back untouched, in step with the processed video.
    for (const track of camera.getAudioTracks()) pc.addTransceiver(track, { direction: "sendrecv", streams: [camera] });
    receive(pc);
    await pc.setLocalDescription(await pc.createOffer());
    setStatus("Gathering network candidates…");
    await gatheringDone(pc, 2000);
    const qs = new URLSearchParams(currentParams());
    setStatus(`Connecting to ${thread}…`);
    const r = await api(`/whip/${encodeURIComponent(thread)}?${qs}`, {
      method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
    });
    const streamId = r.headers.get("X-Ooblex-Stream");
    session = { pc, camera, streamId, viewToken: r.headers.get("X-Ooblex-View-Token"),
                location: r.headers.get("Location"), timer: null };
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    opened();
  } catch (e) {
    await stop(`Could not start: ${e.message}`);
  }
}

async function openCamera() {
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch (e) {
    return await navigator.mediaDevices.getUserMedia({ video, audio: false }); // no microphone: pictures only
  }
}

// The returned sound starts muted (it is your own microphone, delayed: unmuted it echoes).
function toggleSound() {
  const out = $("output");
  out.muted = !out.muted;
  $("unmute").textContent = out.muted ? "Unmute" : "Mute";
}

function preferCodec(transceiver, name) {
  if (!name || !RTCRtpReceiver.getCapabilities || !transceiver.setCodecPreferences) return;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${name.toLowerCase()}`);
  const rest = codecs.filter((c) => !wanted.includes(c));
  if (wanted.length) transceiver.setCodecPreferences([...wanted, ...rest]);
}

// Ends the session (if any) and says why in the status line.
async function stop(why = "Stopped.") {
  const s = session;
  session = null;
  if (why) setStatus(why);
  if (s) {
    clearInterval(s.timer);
    if (s.location) fetch(s.location, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    s.pc.close();
    s.camera?.getTracks().forEach((t) => t.stop());
  }
  $("input").srcObject = null;
  $("output").srcObject = null;
  $("output").muted = true;
  $("unmute").hidden = true;
  $("unmute").textContent = "Unmute";
  $("start").disabled = false;
  $("stop").disabled = true;
  $("fps").textContent = "– fps";
  $("mjpeg-url").removeAttribute("href");
  $("mjpeg-url").textContent = "–";
  $("watch-url").removeAttribute("href");
  $("watch-url").textContent = "–";
  $("whep-url").textContent = "–";
  $("view-token").textContent = "–";
}

async function refreshStats() {
  if (!session) return;
  try {
    const s = await (await api(`/api/v1/streams/${session.streamId}`)).json();
    $("fps").textContent = `${s.fps.toFixed(1)} fps`;
    const body = $("latency").tBodies[0];
    body.innerHTML = "";
    for (const stage of STAGES) {
      const v = s.latency_ms[stage];
      if (!v) continue;
      const row = body.insertRow();
      for (const cell of [stage, v.p50.toFixed(1), v.p95.toFixed(1), v.p99.toFixed(1)]) row.insertCell().textContent = cell;
    }
    $("counters").textContent =
      `received ${s.received} · processed ${s.processed} · dropped ${s.dropped} · stale ${s.stale} · errors ${s.errors}`;
    $("result").textContent = s.error ? `thread error: ${s.error}` : s.result ? `result: ${JSON.stringify(s.result)}` : "";
  } catch (e) { stop(`Stream ended (${e.message}).`); return; }
  const report = await session?.pc.getStats();
  report?.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video" && r.framesDecoded) {
      const jb = r.jitterBufferEmittedCount ? (1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount).toFixed(1) : "–";
      $("browser-stats").textContent =
        `browser: ${r.framesPerSecond ?? "–"} fps decoded, ${r.frameWidth}x${r.frameHeight}, jitter buffer ${jb} ms`;
    }
  });
}

async function health() {
  try {
    const h = await (await api("/healthz")).json();
    $("health").textContent = `${h.broker} · ${h.threads} threads · ${h.streams} streams`;
  } catch (_) { $("health").textContent = "gateway unreachable"; }
}

// Another thread while streaming: the same camera goes to it (a new WHIP session).
async function switchThread() {
  showParams();
  if (!session) return;
  await stop(null);
  await start();
}

$("thread").addEventListener("change", switchThread);
$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop());
$("unmute").addEventListener("click", toggleSound);
$("token-box").addEventListener("submit", login);
$("share-publish").addEventListener("click", sharePublishLink);
window.addEventListener("pagehide", () => {
  if (session?.location) fetch(session.location, { method: "DELETE", keepalive: true, headers: authHeaders() });
});

(async () => {
  health();
  setInterval(health, 5000);
  document.body.classList.toggle("control", !!controlToken());
  if (WATCH) {
    document.body.classList.add("watching");
    $("watch-id").textContent = WATCH;
    $("start").textContent = "Watch";
    start(); // receive only: no camera to ask for
    return;
  }
  if (query.get("codec")) $("codec").value = query.get("codec").toUpperCase();
  await loadThreads();
  if (query.get("autostart") === "1") start();
})();
