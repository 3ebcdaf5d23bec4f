// mqlink console: polls /status, draws the pipeline, keeps a bounded
// history for the charts, shows faults, runs queries. Read-only: it only
// GETs /status and POSTs queries to /query.
"use strict";

const POLL_MS = 1000;
const FAULTS_EVERY = 5;          // polls between two fault queries
const HISTORY = 300;             // samples kept per component (5 min)
const NODE_W = 190, COL_GAP = 40, ROW_GAP = 14;

// A token given once as ?token=… is kept for this tab and dropped from the address.
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("mqlink-token", params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
const token = sessionStorage.getItem("mqlink-token");

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

// History per component path: [{t, records, lag}], at most HISTORY.
const history_ = new Map();
let selected = null;
let status = null;
let polls = 0;
let queryBusy = false;

function record(path, t, records, lag) {
  let h = history_.get(path);
  if (!h) { h = []; history_.set(path, h); }
  h.push({ t, records, lag });
  if (h.length > HISTORY) h.splice(0, h.length - HISTORY);
}

// Records per second over the last two samples.
function rate(path) {
  const h = history_.get(path);
  if (!h || h.length < 2) return null;
  const a = h[h.length - 2], b = h[h.length - 1];
  const dt = (b.t - a.t) / 1000;
  return dt > 0 ? Math.max(0, (b.records - a.records) / dt) : null;
}

function pathOf(c) { return (c.kind === "source" ? "sources." : "sinks.") + c.name; }

// The graph: nodes by id, edges in flow order (connection → source →
// stage → sink → connection), laid out in columns by longest path.
function buildGraph(s) {
  const topo = s.topology || { connections: [], sources: [], sinks: [] };
  const comps = new Map(s.components.map((c) => [pathOf(c), c]));
  const nodes = [], edges = [];
  const used = new Set();
  for (const src of topo.sources) if (src.connection) used.add(src.connection);
  for (const snk of topo.sinks) if (snk.connection) used.add(snk.connection);
  for (const c of topo.connections) {
    if (!used.has(c.name)) continue;
    nodes.push({ id: "connections." + c.name, type: c.embedded ? "broker" : "connection", conn: c });
  }
  for (const src of topo.sources) {
    const id = "sources." + src.name;
    nodes.push({ id, type: "source", comp: comps.get(id), spec: src });
    if (src.connection) edges.push(["connections." + src.connection, id]);
    if (src.stage) {
      nodes.push({ id: "stages." + src.name, type: "stage", label: src.stage, spec: src });
      edges.push([id, "stages." + src.name]);
    }
  }
  for (const snk of topo.sinks) {
    const id = "sinks." + snk.name;
    nodes.push({ id, type: "sink", comp: comps.get(id), spec: snk });
    for (const input of snk.inputs) {
      const from = topo.sources.find((x) => x.name === input && x.stage) ? "stages." + input : "sources." + input;
      edges.push([from, id]);
    }
    if (snk.connection) edges.push([id, "connections." + snk.connection]);
  }
  // Longest-path layers (bounded: a loop through a broker cannot spin).
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let moved = false;
    for (const [a, b] of edges) {
      if (layer.has(a) && layer.has(b) && layer.get(b) < layer.get(a) + 1) {
        layer.set(b, layer.get(a) + 1); moved = true;
      }
    }
    if (!moved) break;
  }
  for (const n of nodes) n.layer = layer.get(n.id);
  return { nodes, edges };
}

let drawnShape = "";

function drawGraph(s) {
  const g = buildGraph(s);
  const box = $("graph");
  const shape = JSON.stringify(g.nodes.map((n) => [n.id, n.layer]));
  if (shape !== drawnShape) {
    box.replaceChildren();
    drawnShape = shape;
  }
  const pos = new Map();
  let height = 0;
  for (const n of g.nodes) {
    let div = box.querySelector(`[data-node="${CSS.escape(n.id)}"]`);
    if (!div) {
      div = el("div", { class: "node", "data-node": n.id, tabindex: "0", role: "listitem" });
      div.addEventListener("click", () => select(n.id));
      div.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(n.id); }
      });
      box.append(div);
    }
    fillNode(div, n, s);
    div.classList.toggle("selected", selected === n.id);
    pos.set(n.id, { div, x: n.layer * (NODE_W + COL_GAP), y: 0, h: 0 });
  }
  // Stack each column with the nodes' real heights.
  const colY = new Map();
  for (const n of g.nodes) {
    const p = pos.get(n.id);
    const y = colY.get(n.layer) || 0;
    p.y = y;
    p.h = p.div.offsetHeight;
    colY.set(n.layer, y + p.h + ROW_GAP);
    p.div.style.left = p.x + "px";
    p.div.style.top = p.y + "px";
    height = Math.max(height, y + p.h);
  }
  const width = (Math.max(0, ...g.nodes.map((n) => n.layer)) + 1) * (NODE_W + COL_GAP);
  box.style.height = height + 8 + "px";
  let svg = box.querySelector("svg");
  if (!svg) {
    svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("aria-hidden", "true");
    box.prepend(svg);
  }
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + 8);
  svg.replaceChildren();
  for (const [a, b] of g.edges) {
    const p = pos.get(a), q = pos.get(b);
    if (!p || !q) continue;
    const x1 = p.x + NODE_W, y1 = p.y + p.h / 2, x2 = q.x, y2 = q.y + q.h / 2;
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    const mid = (x1 + x2) / 2;
    path.setAttribute("d", x2 > x1
      ? `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`
      : `M${x1},${y1} C${x1 + 40},${y1} ${x2 - 40},${y2} ${x2},${y2}`);
    path.setAttribute("data-edge", a + " -> " + b);
    svg.append(path);
  }
}

function fillNode(div, n, s) {
  const parts = [];
  let state = "running", kind = "", reason = null;
  if (n.type === "source" || n.type === "sink") {
    const c = n.comp || {};
    state = c.status || "starting";
    kind = `${n.type} · ${c.type || ""}`;
    const r = rate(n.id);
    parts.push(`${fmt(r)}/s · ${fmt(c.records)} records`);
    parts.push(n.type === "source"
      ? `acked ${fmt(c.confirmed)} · unacked ${fmt(c.unconfirmed)}` + (c.lag_seconds != null ? ` · lag ${c.lag_seconds}s` : "")
      : `confirmed ${fmt(c.confirmed)} · in flight ${fmt(c.unconfirmed)}`);
    parts.push(`errors ${fmt(c.errors)} · skipped ${fmt(c.skipped)} · dead-lettered ${fmt(c.dead_lettered)}`);
    if (state !== "running" && state !== "finished") reason = c.stalled || c.not_ready || c.last_error;
  } else if (n.type === "stage") {
    kind = `stage · ${n.label}`;
    const c = status.components.find((x) => x.kind === "source" && x.name === n.spec.name) || {};
    state = c.status === "failed" ? "failed" : "running";
    parts.push(`late ${fmt(c.late)} · redelivered ${fmt(c.redelivered)}`);
  } else if (n.type === "broker") {
    kind = "embedded broker";
    const b = s.embedded_broker || {};
    const full = (b.full_queues || []).length;
    state = full ? "stalled" : "running";
    parts.push(`sessions ${fmt(b.sessions)} · subscriptions ${fmt(b.subscriptions)}`);
    parts.push(`undelivered ${fmt(b.undelivered)} · full queues ${full}`);
    if (full) reason = (s.not_ready || []).filter((r) => r.startsWith("embedded broker")).join("; ") || `${full} subscriber queue(s) full`;
    if (!full) state = "running";
  } else {
    kind = "connection";
    state = "";
    parts.push(n.conn.brokers.join(", "));
  }
  const title = n.id.replace(/^(sources|sinks|stages|connections)\./, "");
  div.dataset.state = state || "none";
  div.dataset.kind = n.type;
  div.classList.toggle("passive", n.type === "connection");
  div.setAttribute("aria-label", `${n.type} ${title}${state ? ", " + state : ""}`);
  const children = [
    el("div", { class: "title" }, state ? el("span", { class: "state" }, state) : null, title),
    el("div", { class: "kind" }, kind),
    ...parts.map((p) => el("div", { class: "nums" }, p)),
  ];
  if (reason) children.push(el("div", { class: "reason", "data-reason": "" }, reason));
  div.replaceChildren(...children);
}

function select(id) {
  selected = id;
  for (const d of document.querySelectorAll(".node")) d.classList.toggle("selected", d.dataset.node === id);
  drawDetails();
}

function drawDetails() {
  const box = $("details");
  if (!selected || !status) return;
  const topo = status.topology || {};
  const [section, ...rest] = selected.split(".");
  const name = rest.join(".");
  const dl = el("dl");
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") dl.append(el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : v)); };
  let heading = selected;
  if (section === "sources" || section === "sinks") {
    const c = status.components.find((x) => pathOf(x) === selected) || {};
    const spec = (section === "sources" ? topo.sources : topo.sinks || []).find((x) => x.name === name) || {};
    add("type", c.type); add("state", c.status);
    add("connection", spec.connection); add("inputs", spec.inputs ? spec.inputs.join(", ") : null);
    add("stage", spec.stage); add("parallelism", spec.parallelism);
    add("records", c.records); add("confirmed", c.confirmed); add("unconfirmed", c.unconfirmed);
    add("errors", c.errors); add("skipped", c.skipped); add("dead-lettered", c.dead_lettered);
    add("late", c.late); add("redelivered", c.redelivered); add("lag (s)", c.lag_seconds);
    add("not ready", c.not_ready); add("last error", c.last_error);
    for (const cl of c.clients || []) add("client " + cl.client_id, cl.status);
    const metrics = c.metrics || {};
    box.replaceChildren(el("h3", {}, heading), dl, configOf(spec),
      el("details", {}, el("summary", {}, "all metrics"), el("pre", {}, Object.entries(metrics).map(([k, v]) => `${k} ${v}`).join("\n"))));
    return;
  }
  if (section === "connections") {
    const conn = (topo.connections || []).find((x) => x.name === name) || {};
    add("brokers", (conn.brokers || []).join(", ")); add("protocol", conn.protocol);
    add("clean session", String(conn.clean_session));
    if (conn.embedded && status.embedded_broker) {
      const b = status.embedded_broker;
      add("sessions", b.sessions); add("subscriptions", b.subscriptions); add("retained", b.retained);
      add("undelivered", b.undelivered);
      for (const q of b.full_queues || []) add("full queue " + q.client_id, `${q.queued} queued, idle ${q.idle_seconds.toFixed(0)} s`);
    }
    box.replaceChildren(el("h3", {}, heading), dl, configOf(conn));
    return;
  } else if (section === "stages") {
    const spec = (topo.sources || []).find((x) => x.name === name) || {};
    add("kind", spec.stage); add("reads", "sources." + name);
  }
  box.replaceChildren(el("h3", {}, heading), dl);
}

// A component's configuration as loaded, secrets masked by the server.
function configOf(spec) {
  if (!spec.config) return "";
  return el("details", { open: "" }, el("summary", {}, "configuration"),
    el("pre", { class: "config" }, JSON.stringify(spec.config, null, 2)));
}

function drawAccounting(s) {
  const list = $("accounting");
  const items = [];
  for (const c of s.components) {
    if (c.kind !== "source" || !c.accounting) continue;
    const a = c.accounting;
    const sum = a.acknowledged + a.dead_lettered + a.skipped + a.in_flight;
    const ok = sum === a.received;
    items.push(el("li", { "data-accounting": c.name, "data-adds-up": String(ok),
        "data-received": a.received, "data-acknowledged": a.acknowledged, "data-dead-lettered": a.dead_lettered,
        "data-skipped": a.skipped, "data-in-flight": a.in_flight },
      el("strong", {}, c.name), ": received ", fmt(a.received), " = acknowledged ", fmt(a.acknowledged),
      " + dead-lettered ", fmt(a.dead_lettered), " + skipped ", fmt(a.skipped), " + in flight ", fmt(a.in_flight), " ",
      el("span", { class: "sum" }, ok ? "✓ adds up" : `(records moving: ${fmt(sum)})`)));
  }
  list.replaceChildren(...items);
}

function sparkline(values, cls, w, h) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values.map((v) => v || 0));
  // The x axis grows with the history until it holds HISTORY samples.
  const span = Math.max(60, values.length) - 1;
  const pts = values.map((v, i) => `${(i / span) * w},${h - 2 - ((v || 0) / max) * (h - 4)}`);
  if (pts.length > 1) {
    const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    p.setAttribute("points", pts.join(" "));
    p.setAttribute("class", cls);
    svg.append(p);
  }
  return { svg, max };
}

function drawCharts(s) {
  const box = $("charts");
  const cards = [];
  for (const c of s.components) {
    const path = pathOf(c);
    const h = history_.get(path) || [];
    const rates = h.map((x, i) => i === 0 ? 0 : Math.max(0, (x.records - h[i - 1].records) / Math.max(0.001, (x.t - h[i - 1].t) / 1000)));
    const r = sparkline(rates, "rate", 300, 40);
    const card = el("div", { class: "chart", "data-chart": path },
      el("div", {}, el("strong", {}, path), ` · rate now ${fmt(rates[rates.length - 1])}/s, peak ${fmt(r.max)}/s`), r.svg);
    if (c.kind === "source") {
      const lags = h.map((x) => x.lag || 0);
      const l = sparkline(lags, "lag", 300, 40);
      card.append(el("div", {}, `lag now ${fmt(lags[lags.length - 1])} s, peak ${fmt(l.max)} s`), l.svg);
    }
    cards.push(card);
  }
  box.replaceChildren(...cards);
}

function drawReady(s) {
  const b = $("ready");
  b.textContent = s.ready ? "ready" : "not ready";
  b.className = "badge " + (s.ready ? "ready" : "not-ready");
  $("not-ready").replaceChildren(...(s.not_ready || []).map((r) => el("li", {}, r)));
}

async function poll() {
  try {
    const r = await fetch("/status", { headers: headers(), cache: "no-store" });
    if (r.status === 401) { $("problem").textContent = "This console needs the token: open it once as /?token=…"; return; }
    if (!r.ok) { $("problem").textContent = `/status answered ${r.status}`; return; }
    status = await r.json();
    $("problem").textContent = "";
    const t = Date.now();
    for (const c of status.components) record(pathOf(c), t, c.records, c.lag_seconds);
    drawReady(status);
    drawGraph(status);
    drawAccounting(status);
    drawCharts(status);
    drawDetails();
    $("updated").textContent = "updated " + new Date(t).toLocaleTimeString();
    if (polls++ % FAULTS_EVERY === 0) faults();
  } catch (e) {
    $("problem").textContent = "mqlink does not answer (stopped?): " + e.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// Runs a query; one at a time from this page (the server runs few at once).
async function query(sql) {
  if (queryBusy) return null;
  queryBusy = true;
  try {
    const r = await fetch("/query", { method: "POST", headers: headers({ "Content-Type": "text/plain" }), body: sql });
    const body = await r.json().catch(() => ({ error: `answer ${r.status} is not JSON` }));
    return r.ok ? body : { error: body.error || `answer ${r.status}` };
  } catch (e) {
    return { error: e.message };
  } finally {
    queryBusy = false;
  }
}

async function faults() {
  const res = await query("SELECT timestamp, level, name, message FROM system.connector_logs WHERE level <> 'INFO' ORDER BY timestamp DESC LIMIT 20");
  if (!res || res.error) return;
  const body = $("faults").tBodies[0];
  body.replaceChildren(...res.rows.map((row) => el("tr", { class: row[1] }, ...row.map((v) => el("td", {}, v === null ? "" : v)))));
}

function table(res) {
  const head = el("tr", {}, ...res.columns.map((c) => el("th", { scope: "col" }, c)));
  const rows = res.rows.map((row) => el("tr", {}, ...row.map((v) =>
    el("td", { class: typeof v === "number" ? "num" : null }, v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : v))));
  return el("table", { id: "result-table" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

async function runQuery(e) {
  if (e) e.preventDefault();
  const sql = $("sql").value;
  $("query-state").textContent = "running…";
  let res = await query(sql);
  // The fault poll holds the page's one query at times: wait for it.
  for (let i = 0; res === null && i < 50; i++) {
    await new Promise((r) => setTimeout(r, 100));
    res = await query(sql);
  }
  if (!res || res.error) {
    $("query-state").textContent = "";
    $("result").replaceChildren(el("p", { class: "error", role: "alert" }, res ? res.error : "busy, try again"));
    return;
  }
  $("query-state").textContent = `${res.rows.length} row${res.rows.length === 1 ? "" : "s"}`;
  $("result").replaceChildren(table(res));
}

$("query-form").addEventListener("submit", runQuery);
$("sql").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runQuery(e);
});
poll();
