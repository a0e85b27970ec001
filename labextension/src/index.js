// The Ooblex side panel for JupyterLab: the cluster the server extension knows (/ooblex/...), drawn by
// the same view as the gateway's /console (console-view.js), plus deploying a tensor thread defined in
// the current notebook (ob.deploy runs in its kernel). Requests go through ServerConnection, so they
// carry Jupyter's credentials and XSRF token and work under any base_url.
import { ILabShell } from "@jupyterlab/application";
import { Dialog, showDialog } from "@jupyterlab/apputils";
import { URLExt } from "@jupyterlab/coreutils";
import { INotebookTracker, NotebookActions } from "@jupyterlab/notebook";
import { ServerConnection } from "@jupyterlab/services";
import { LabIcon } from "@jupyterlab/ui-components";
import { Widget } from "@lumino/widgets";
import uPlot from "uplot";

import { el, mountConsole } from "../../ooblex/gateway/static/console-view.js";

const ICON = new LabIcon({
  name: "ooblex:console",
  svgstr: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<circle cx="12" cy="12" r="3"/><path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 1 1 0 16 8 8 0 0 1 0-16z"/>' +
    "</g></svg>",
});
const KERNEL_HELPER = "__import__('ooblex.jupyter.panel', fromlist=['panel'])";

class ApiError extends Error {
  constructor(status, message) { super(`${status}: ${message}`); this.status = status; }
}

function serverApi() {
  const settings = ServerConnection.makeSettings();
  const url = (path) => URLExt.join(settings.baseUrl, "ooblex", path);
  async function request(path, init = {}) {
    const r = await ServerConnection.makeRequest(url(path), init, settings);
    let body = null;
    try { body = await r.json(); } catch (_) { /* empty */ }
    if (!r.ok) throw new ApiError(r.status, (body && (body.message || body.detail)) || r.statusText);
    return body;
  }
  return { url, request };
}

/** Runs a helper of ooblex.jupyter.panel in the notebook's kernel; its JSON answer, or an Error. */
async function inKernel(notebooks, expression) {
  const kernel = notebooks?.currentWidget?.sessionContext?.session?.kernel;
  if (!kernel) throw new Error("open a notebook (with a running kernel) first");
  const reply = await kernel.requestExecute({ code: "", silent: true, store_history: false,
    user_expressions: { ob: `${KERNEL_HELPER}.${expression}` } }).done;
  const result = reply.content.user_expressions?.ob;
  if (!result || result.status !== "ok") throw new Error(result ? `${result.ename}: ${result.evalue}` : "no answer");
  const value = result.data["application/json"];
  if (value?.error) throw new Error(value.error);
  return value;
}

function deploySection(notebooks, notify, refresh, visible) {
  const select = el("select", { class: "ob-notebook-threads", "aria-label": "tensor thread" });
  const status = el("span", { class: "ob-muted" });
  const load = async () => {
    try {
      const threads = await inKernel(notebooks, "threads(globals())");
      select.replaceChildren(...threads.map((t) => el("option", { value: t.variable, text: `${t.variable} (${t.name})` })));
      status.textContent = threads.length ? "" : "no @ob.tensor_thread in this notebook's kernel yet";
    } catch (e) {
      select.replaceChildren();
      status.textContent = e.message;
    }
  };
  const deploy = el("button", { class: "ob-deploy", text: "Deploy", onclick: async () => {
    if (!select.value) return;
    deploy.disabled = true;
    try {
      const d = await inKernel(notebooks, `deploy(globals(), ${JSON.stringify(select.value)})`);
      notify(`Deployed ${d.name} version ${d.version} from the notebook.`, false);
      await refresh();
    } catch (e) {
      notify(`Deploy failed: ${e.message}`, true);
    } finally {
      deploy.disabled = false;
    }
  } });
  notebooks?.currentChanged.connect(load);
  // A cell that ran may have defined a thread (or the kernel was not up when the panel opened): look again.
  NotebookActions.executed.connect((_, { notebook }) => {
    if (visible() && notebook === notebooks?.currentWidget?.content) load();
  });
  return { node: el("div", { class: "ob-card ob-from-notebook" },
    el("header", {}, el("h3", { text: "Deploy from this notebook" })),
    el("div", { class: "ob-buttons" }, select, el("button", { text: "↻", title: "look again", onclick: load }), deploy),
    status), load };
}

function flattenStreams(gateways) {
  const seen = new Set();
  return gateways.flatMap((g) => (g.streams || []).map((s) => ({ ...s, gateway: g.gateway, gatewayUrl: g.url,
    proxied: g.proxied }))).filter((s) => !seen.has(s.id) && seen.add(s.id));
}

/** The side panel: polls only while it is shown. */
class Panel extends Widget {
  onAfterShow() { this.shown?.(); }
  onAfterHide() { this.hidden?.(); }
}

function activate(app, labShell, notebooks) {
  const { url, request } = serverApi();
  const panel = new Panel();
  panel.id = "ooblex-console";
  panel.addClass("ooblex-panel");
  panel.title.icon = ICON;
  panel.title.caption = "Ooblex cluster: deployments, workers, streams";
  const notice = el("p", { class: "ob-notice", role: "status" });
  const body = el("div");
  panel.node.append(el("h2", { class: "ob-title", text: "Ooblex cluster" }), notice, body);
  const notify = (text, bad) => { notice.textContent = text; notice.classList.toggle("ob-bad", !!bad); };
  const confirm = async (message) => (await showDialog({ title: "Ooblex", body: message,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: "Yes" })] })).button.accept;
  const json = (method, data) => ({ method, body: JSON.stringify(data), headers: { "Content-Type": "application/json" } });
  const api = {
    cluster: () => request("cluster"),
    streams: async () => flattenStreams(await request("streams")),
    history: async (since) => Object.assign({}, ...(await request(`history?since=${since}`)).map((g) => g.streams || {})),
    activate: (name, version) => request(`deployments/${encodeURIComponent(name)}/activate`, json("POST", { version })),
    undeploy: (name) => request(`deployments/${encodeURIComponent(name)}`, { method: "DELETE" }),
    mjpegUrl: (s) => `${s.gatewayUrl}/mjpeg/${s.id}`,
    // The proxy adds the gateway token server-side: no token in this URL, and the browser needs only Jupyter's cookie.
    watch: async (s, box) => {
      if (!s.proxied) throw new Error("this stream's gateway is not the one the server's OOBLEX_GATEWAY names");
      box.replaceChildren(el("img", { class: "ob-video", alt: `stream ${s.id}`, src: url(`gateway/mjpeg/${s.id}`) }));
      return () => box.replaceChildren();
    },
  };
  let view = null;
  const deployBox = deploySection(notebooks, notify, () => view?.refresh(), () => view !== null);
  panel.shown = () => {
    if (!view) view = mountConsole(body, api, { uPlot, confirm, notify, deploySection: deployBox.node, every: 2000 });
    deployBox.load();
  };
  panel.hidden = () => { view?.stop(); view = null; };
  labShell.add(panel, "left", { rank: 950 });
  app.commands.addCommand("ooblex:open-panel", { label: "Ooblex cluster", execute: () => labShell.activateById(panel.id) });
}

export default [{
  id: "@ooblex/jupyterlab-console:panel",
  description: "Ooblex: the cluster's deployments, workers and live streams in a side panel.",
  autoStart: true,
  requires: [ILabShell],
  optional: [INotebookTracker],
  activate,
}];
