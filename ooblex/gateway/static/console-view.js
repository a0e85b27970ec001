// The operations view shared by the gateway's /console page and the JupyterLab side panel:
// deployments (versions, who/when, licence, requirements, which workers serve or refuse each),
// workers (load, heartbeat, CPU/GPU) and live streams (fps and per-stage latency charts).
// Each host passes an `api` adapter (where the JSON comes from, how to watch a stream) and uPlot.
// Everything shown is set with textContent: names and reasons come from the cluster, never as HTML.

const STAGES = [["queue", "#4fb3ff"], ["compute", "#f5a623"], ["return", "#b57cff"], ["total", "#7ed321"]];
const EMPTY_COLUMNS = { t: [], fps_in: [], fps: [], dropped: [], stale: [], errors: [], queue: [], compute: [],
  return: [], engine: [], total: [], total_p95: [] };

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

const when = (t) => (t ? `${new Date(t * 1000).toLocaleString()} (${ago(Date.now() / 1000 - t)} ago)` : "–");
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

/** A table whose cells carry their column's name (`data-label`): a narrow host (the JupyterLab sidebar)
 *  shows each row as a stacked card with those labels instead of columns that do not fit. */
function table(headers, rows) {
  for (const row of rows) [...row.children].forEach((td, i) => { if (headers[i]) td.dataset.label = headers[i]; });
  return el("table", { class: "ob-table" },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows));
}

/** Mount the view into `root`. Returns {refresh(), stop()}.
 *  api: {cluster(), streams(), history(since), activate(name, v), undeploy(name), watch(stream, box) -> stop fn,
 *        mjpegUrl(stream)}; options: {uPlot, confirm(message) -> Promise<bool>, notify(text, isError),
 *        deploySection: an element shown at the top of the deployments list, every: polling ms}. */
export function mountConsole(root, api, options = {}) {
  const uPlot = options.uPlot;
  const confirmAction = options.confirm || ((m) => Promise.resolve(window.confirm(m)));
  const notify = options.notify || (() => {});
  const sections = {
    deployments: el("section", { class: "ob-section ob-deployments" }),
    workers: el("section", { class: "ob-section ob-workers" }),
    streams: el("section", { class: "ob-section ob-streams" }),
  };
  root.classList.add("ob-console");
  root.replaceChildren(
    el("h2", { text: "Deployments" }), options.deploySection || "", sections.deployments,
    el("h2", { text: "Workers" }), sections.workers,
    el("h2", { text: "Streams" }), sections.streams);
  const charts = new Map(); // stream id -> {box, fps: uPlot, latency: uPlot, data}
  let lastT = 0;
  let timer = null;
  let busy = false;

  async function act(what, fn) {
    try {
      await fn();
      notify(`${what}: done.`, false);
    } catch (e) {
      notify(`${what} failed: ${e.message}`, true);
    }
    await refresh();
  }

  function versionRow(d, v) {
    const by = v.deployed_by || {};
    const who = [by.user && by.host ? `${by.user}@${by.host}` : by.host || by.user, by.via,
      by.uploaded ? `uploaded via ${by.uploaded.via} from ${by.uploaded.client}` : by.client ? `from ${by.client}` : ""]
      .filter(Boolean).join(", ");
    const buttons = el("div", { class: "ob-buttons" });
    if (!v.active) {
      buttons.append(el("button", {
        class: "ob-activate", "data-version": v.version, text: v.version < d.active ? "Roll back to this" : "Activate",
        onclick: async () => {
          if (await confirmAction(`Serve ${d.name} version ${v.version} instead of version ${d.active}?`)) {
            await act(`${d.name}@${v.version} active`, () => api.activate(d.name, v.version));
          }
        },
      }));
    }
    const byWorker = new Map(); // one line per worker process, with each queue it serves this version on
    for (const w of v.workers) byWorker.set(w.id, [...(byWorker.get(w.id) || []), w]);
    const serving = [...byWorker.values()].map((qs) => el("li", {
      text: `${qs[0].host || qs[0].id} (${qs.map((q) => q.queue).join(", ")} · ` +
        `${fmt(qs.reduce((sum, q) => sum + q.fps, 0))} fps)` }));
    const refused = v.refused.map((r) => el("li", { class: "ob-refused",
      text: `${r.host || r.worker}: ${r.reason} (try ${r.attempts}; next in ${ago(r.retry_at - Date.now() / 1000)})` }));
    return el("tr", { class: `ob-version${v.active ? " ob-active" : ""}`, "data-version": v.version },
      el("td", {}, el("strong", { text: `v${v.version}` }), v.active ? el("span", { class: "ob-badge", text: "active" }) : ""),
      el("td", {}, el("div", { text: when(v.created) }), el("div", { class: "ob-muted", text: who || "–" })),
      el("td", {}, el("div", { text: v.license || "licence not given" }),
        el("div", { class: "ob-muted", text: v.requirements.length ? v.requirements.join(", ") : "no requirements" }),
        el("div", { class: "ob-muted", text: `Python ${v.python || "?"} · code ${v.code}` +
          (v.weights.length ? ` · weights ${v.weights.map((w) => w.name).join(", ")}` : "") })),
      el("td", {}, el("div", { class: v.verified ? "ob-ok" : "ob-bad",
        text: v.verified ? `signed ✓ ${v.signature}` : `refused: ${v.problem}` })),
      el("td", {}, serving.length ? el("ul", { class: "ob-list ob-serving" }, serving) : el("span", { class: "ob-muted",
        text: v.served ? "no worker yet" : "not served" }), refused.length ? el("ul", { class: "ob-list" }, refused) : ""),
      el("td", {}, buttons));
  }

  function renderDeployments(c) {
    const box = sections.deployments;
    if (c.reachable === false) { // the Jupyter server knows no cluster yet: say how to start one
      box.replaceChildren(el("p", { class: "ob-muted ob-no-cluster", text: c.hint }));
      return;
    }
    if (!c.cluster) {
      box.replaceChildren(el("p", { class: "ob-muted", text: "This gateway runs its own embedded engine, not a " +
        "cluster: no registry, no workers. Start one with ooblex up (or ooblex gateway --broker redis://…)." }));
      return;
    }
    if (!c.secret) {
      box.replaceChildren(el("p", { class: "ob-bad", text: "No OOBLEX_SECRET here: deployed threads cannot be " +
        "verified, so none are shown." }));
      return;
    }
    if (!c.deployments.length) {
      box.replaceChildren(el("p", { class: "ob-muted", text: "Nothing deployed yet." }));
      return;
    }
    box.replaceChildren(...c.deployments.map((d) => el("article", { class: "ob-card ob-deployment", "data-name": d.name },
      el("header", {},
        el("h3", { text: d.name }),
        el("span", { class: "ob-muted", text: `active v${d.active} · ${d.serving} worker(s) · ${fmt(d.fps)} fps` +
          (d.refused ? ` · ${d.refused} refusal(s)` : "") }),
        el("button", { class: "ob-danger ob-undeploy", text: "Undeploy", onclick: async () => {
          if (await confirmAction(`Undeploy ${d.name}? Every version stops being served.`)) {
            await act(`${d.name} undeployed`, () => api.undeploy(d.name));
          }
        } })),
      d.description ? el("p", { class: "ob-muted", text: d.description }) : "",
      table(["version", "deployed", "licence · requirements", "signature", "workers", ""],
        d.versions.map((v) => versionRow(d, v))))));
  }

  function renderWorkers(c) {
    const box = sections.workers;
    if (!c.workers?.length) {
      box.replaceChildren(el("p", { class: "ob-muted", text: c.cluster ? "No live worker." : "–" }));
      return;
    }
    const gpu = (w) => (w.gpus && w.gpus.length ? w.gpus.map((g) => `${g.name}${g.percent !== null ? ` ${g.percent}%` : ""}` +
      ` ${g.memory_used_mb}/${g.memory_total_mb} MiB`).join("; ") : "–");
    box.replaceChildren(table(["worker", "threads", "in flight", "frames/s", "heartbeat", "CPU", "memory", "GPU",
      "Ooblex"], c.workers.map((w) => el("tr", { class: "ob-worker", "data-id": w.id },
        el("td", {}, el("div", { text: w.host || "?" }), el("div", { class: "ob-muted", text: w.id })),
        el("td", { text: (w.served || []).join(", ") || "–" }),
        el("td", { text: String(w.in_flight ?? "–") }),
        el("td", { text: fmt(w.fps) }),
        el("td", { class: w.heartbeat_age_s > 2.5 ? "ob-bad" : "", text: `${fmt(w.heartbeat_age_s)} s ago` }),
        el("td", { text: w.cpu ? `${fmt(w.cpu.percent, 0)}% · load ${fmt(w.cpu.load, 2)} / ${w.cpu.count} cores` : "–" }),
        el("td", { text: w.memory_mb ? `${fmt(w.memory_mb, 0)} MiB` : "–" }),
        el("td", { text: gpu(w) }),
        el("td", { text: w.ooblex || "?" })))));
  }

  // The y axis as wide as its longest tick label (uPlot's fixed default clips "1000" and "12.5k")
  function axisWidth(self, values) {
    const longest = Math.max(3, ...(values || []).map((v) => String(v).length));
    return 14 + longest * 7;
  }

  function chart(title, series, width) {
    const box = el("div", { class: "ob-chart" });
    const opts = {
      title, width, height: 150, cursor: { drag: { x: false, y: false } }, legend: { live: false },
      scales: { x: { time: true } },
      axes: [{ stroke: "currentColor", grid: { stroke: "rgba(128,128,128,.15)" } },
        { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,.15)" }, size: axisWidth }],
      series: [{}, ...series.map(([label, stroke, dash]) => ({ label, stroke, width: 1.5, dash, spanGaps: false }))],
    };
    const plot = new uPlot(opts, [[], ...series.map(() => [])], box);
    return { box, plot };
  }

  function streamCard(s) {
    const room = sections.streams.clientWidth || 900; // a narrow host (the sidebar) gets one chart per row
    const width = room < 600 ? Math.max(160, room - 30) : Math.min(520, room / 2 - 40);
    const fps = chart("frames/s", [["in", "#8b93a1"], ["out", "#4fb3ff"], ["dropped+stale", "#ff6b6b"]], width);
    const latency = chart("latency, ms (p50 per stage; total p95 dashed)",
      [...STAGES.map(([k, c]) => [k, c]), ["total p95", "#7ed321", [4, 4]]], width);
    const video = el("div", { class: "ob-player" });
    let stopWatching = null;
    const watch = el("button", { class: "ob-watch", text: "Watch (WHEP)", onclick: async () => {
      if (stopWatching) {
        stopWatching();
        stopWatching = null;
        watch.textContent = "Watch (WHEP)";
        video.replaceChildren();
        return;
      }
      try {
        watch.textContent = "Stop watching";
        stopWatching = await api.watch(s, video);
      } catch (e) {
        watch.textContent = "Watch (WHEP)";
        notify(`Watching ${s.id} failed: ${e.message}`, true);
      }
    } });
    const counters = el("span", { class: "ob-counters" });
    const head = el("span", { class: "ob-muted" });
    const card = el("article", { class: "ob-card ob-stream", "data-id": s.id },
      el("header", {}, el("h3", { text: s.thread }), head, counters, watch),
      el("div", { class: "ob-muted" }, "MJPEG ", el("code", { class: "ob-mjpeg", text: api.mjpegUrl(s) }),
        s.gateway ? ` · gateway ${s.gateway}` : ""),
      el("div", { class: "ob-charts" }, fps.box, latency.box), video);
    return { card, fps: fps.plot, latency: latency.plot, head, counters, data: { ...EMPTY_COLUMNS },
      stop: () => stopWatching && stopWatching() };
  }

  function renderStreams(streams, history) {
    const box = sections.streams;
    const ids = new Set(streams.map((s) => s.id));
    for (const [id, c] of charts) {
      if (!ids.has(id)) {
        c.stop();
        c.fps.destroy();
        c.latency.destroy();
        c.card.remove();
        charts.delete(id);
      }
    }
    if (!streams.length) {
      box.replaceChildren(el("p", { class: "ob-muted ob-no-streams", text: "No live stream." }));
      return;
    }
    box.querySelector(".ob-no-streams")?.remove();
    for (const s of streams) {
      let c = charts.get(s.id);
      if (!c) {
        c = streamCard(s);
        charts.set(s.id, c);
        box.append(c.card);
      }
      c.head.textContent = `${s.id} · ${fmt(s.fps)} fps · p50 total ${fmt(s.latency_ms?.total?.p50)} ms`;
      c.counters.textContent = `dropped ${s.dropped} · stale ${s.stale} · errors ${s.errors}`;
      c.counters.classList.toggle("ob-bad", s.errors > 0);
      const fresh = history[s.id];
      if (fresh) {
        const keep = (options.seconds || 300);
        for (const k of Object.keys(EMPTY_COLUMNS)) c.data[k] = [...(c.data[k] || []), ...(fresh[k] || [])];
        const cut = c.data.t.findIndex((t) => t > c.data.t[c.data.t.length - 1] - keep);
        if (cut > 0) for (const k of Object.keys(EMPTY_COLUMNS)) c.data[k] = c.data[k].slice(cut);
        const d = c.data;
        c.fps.setData([d.t, d.fps_in, d.fps, d.dropped.map((v, i) => (v === null ? null : v + d.stale[i]))]);
        c.latency.setData([d.t, ...STAGES.map(([k]) => d[k]), d.total_p95]);
        c.card.dataset.samples = String(d.t.length);
        c.card.dataset.lastFps = String(d.fps[d.fps.length - 1] ?? "");
      }
    }
  }

  // Polls every `every` ms while there is a cluster; without one (or while requests fail) it waits twice as
  // long each time, up to `maxEvery`, so an idle panel does not fill the server's log.
  const every = options.every || 1000;
  const maxEvery = options.maxEvery || 30000;
  let wait = every;
  let stopped = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const c = await api.cluster();
      renderDeployments(c);
      renderWorkers(c);
      if (c.reachable === false) {
        renderStreams([], {});
        wait = Math.min(wait * 2, maxEvery);
      } else {
        const [streams, history] = await Promise.all([api.streams(), api.history(lastT)]);
        for (const cols of Object.values(history)) if (cols.t.length) lastT = Math.max(lastT, cols.t[cols.t.length - 1]);
        renderStreams(streams, history);
        wait = every;
      }
      root.dataset.updated = String(Date.now());
      root.dataset.every = String(wait);
    } catch (e) {
      notify(e.message, true);
      if (e.status === 401 || e.status === 403) stop();
      wait = Math.min(wait * 2, maxEvery);
    } finally {
      busy = false;
    }
  }

  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, wait);
  }

  function stop() {
    stopped = true;
    clearTimeout(timer);
    timer = null;
    for (const c of charts.values()) c.stop();
  }

  loop();
  return { refresh, stop };
}

/** Receive a stream over WHEP into a <video> in `box`; resolves to a function that stops watching. */
export async function watchWhep(url, headers, box) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  const video = el("video", { autoplay: true, muted: true, playsinline: true, class: "ob-video" });
  pc.ontrack = (ev) => { video.srcObject = new MediaStream([ev.track]); };
  box.replaceChildren(video);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, 2000);
  });
  const r = await fetch(url, { method: "POST", headers: { ...headers, "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp });
  if (!r.ok) {
    pc.close();
    let detail = r.statusText;
    try { const j = await r.json(); detail = j.detail || j.message; } catch (_) { /* not JSON */ }
    throw new Error(`${r.status}: ${detail}`);
  }
  const location = r.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
  return () => {
    if (location) fetch(location, { method: "DELETE", headers }).catch(() => {});
    pc.close();
    box.replaceChildren();
  };
}
