// The gateway's /console page: log in with a control token (kept in this tab's session storage and sent
// only as an Authorization header, never in a URL), then the shared view (console-view.js) with
// this gateway's endpoints, and the two deploy forms (a signed artifact; an ONNX model and its transform).
import { mountConsole, watchWhep } from "./console-view.js";

const $ = (id) => document.getElementById(id);
const KEY = "ooblex-control-token";
const token = () => sessionStorage.getItem(KEY) || "";
const auth = () => (token() ? { Authorization: `Bearer ${token()}` } : {});
let view = null;

class ApiError extends Error {
  constructor(status, message) { super(`${status}: ${message}`); this.status = status; }
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...auth(), ...(options.headers || {}) } });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    if (r.status === 401) showLogin(token() ? "The token was refused (expired, or minted with another secret)." : "");
    throw new ApiError(r.status, detail);
  }
  return r.json();
}

const json = (method, body) => ({ method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

const adapter = {
  cluster: () => api("/api/v1/cluster"),
  streams: () => api("/api/v1/streams"),
  history: async (since) => (await api(`/api/v1/history?since=${since}`)).streams,
  activate: (name, version) => api(`/api/v1/cluster/deployments/${encodeURIComponent(name)}/activate`,
    json("POST", { version })),
  undeploy: (name) => api(`/api/v1/cluster/deployments/${encodeURIComponent(name)}`, { method: "DELETE" }),
  watch: (s, box) => watchWhep(`/whep/${encodeURIComponent(s.id)}`, auth(), box),
  mjpegUrl: (s) => `${location.origin}/mjpeg/${s.id}` + (token() ? "  (needs a view token: ooblex token view --stream " +
    `${s.id})` : ""),
};

function notify(text, bad) {
  const n = $("notice");
  n.textContent = text;
  n.classList.toggle("bad", !!bad);
}

function showLogin(message) {
  view?.stop();
  view = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  try {
    await api("/api/v1/cluster"); // 401 here shows the login form
  } catch (e) {
    if (e.status !== 401) notify(e.message, true);
    if (e.status === 401 || e.status === 403) {
      if (e.status === 403) showLogin("This token may not use the console: it needs the control scope.");
      return;
    }
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = !token();
  view = mountConsole($("view"), adapter, { uPlot: window.uPlot, notify });
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  $("login-error").textContent = "";
  await start();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showLogin("Logged out.");
});

async function upload(form, path, body, headers) {
  const button = form.querySelector("button");
  button.disabled = true;
  notify("Uploading…", false);
  try {
    const m = await api(path, { method: "POST", body, headers });
    notify(`Deployed ${m.name} version ${m.version}; workers pick it up within a second.`, false);
    form.reset();
    await view?.refresh();
  } catch (e) {
    notify(`Deploy refused: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

$("artifact-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("artifact-file").files[0];
  if (!file) return;
  const keep = $("artifact-keep").checked ? "?keep_versions=true" : "";
  upload(ev.target, `/api/v1/cluster/deployments${keep}`, file,
    { "Content-Type": "application/vnd.ooblex.artifact+zip" });
});

$("onnx-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const data = new FormData(ev.target);
  for (const [k, v] of [...data.entries()]) if (v === "") data.delete(k); // the gateway's defaults
  upload(ev.target, "/api/v1/cluster/deployments/onnx", data, {}); // the browser sets the multipart boundary
});

async function health() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    $("health").textContent = `${h.broker} · ${h.threads} threads · ${h.streams} streams · v${h.version}`;
  } catch (_) { $("health").textContent = "gateway unreachable"; }
}

health();
setInterval(health, 5000);
start();
