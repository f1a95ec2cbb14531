// The coremesh dashboard: plain JavaScript, no framework, no build step.
//
// It reads control's operator API with the session cookie (the login page
// set it) and renders four views, chosen by the URL's hash:
//
//   #/topology        services and edges, coloured by success rate (GET /v1/edges)
//   #/services        every service; #/service/NAME one service: its proxies
//                     and endpoints, routes with live per-subset traffic,
//                     access policy, and charts of the last hour
//                     (GET /v1/edges/series)
//   #/history         config versions, the diff between any two
//                     (GET /v1/history/N), and rollback (POST /v1/rollback)
//   #/proxies         every proxy, its state and last NACK; nodes; the CA
//
// Every view refreshes every REFRESH_MS. A request that changes state sends
// X-Coremesh-Csrf: 1, which control requires with the cookie. The page runs
// under a Content-Security-Policy without inline scripts or styles, so
// everything here builds DOM nodes and sets attributes, never HTML text.
"use strict";

const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";

// ---- small DOM helpers ----

// h("td", {class: "num", "data-x": 1}, "text", child, [more children])
function build(ns, tag, attrs, children) {
  const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "checked" || k === "value" || k === "selected") {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  const add = (c) => {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  add(children);
  return el;
}
const h = (tag, attrs, ...children) => build(null, tag, attrs, children);
const s = (tag, attrs, ...children) => build(SVG_NS, tag, attrs, children);

// ---- formatting ----

function fmtRps(r) {
  if (r === undefined || r === null || Number.isNaN(r)) return "–";
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toFixed(2);
}
function fmtPct(f, digits = 1) {
  if (f === undefined || f === null || Number.isNaN(f)) return "–";
  return `${(f * 100).toFixed(digits)}%`;
}
function fmtMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  return `${ms.toFixed(1)} ms`;
}
function fmtAgo(unixSecs) {
  if (!unixSecs) return "–";
  return fmtSpan(Date.now() / 1000 - unixSecs, true);
}
function fmtIn(unixSecs) {
  if (!unixSecs) return "–";
  return fmtSpan(unixSecs - Date.now() / 1000, false);
}
// "3 s ago", "in 23 h", "expired 5 min ago".
function fmtSpan(secs, past) {
  const neg = secs < 0;
  const a = Math.abs(secs);
  let t;
  if (a < 90) t = `${Math.round(a)} s`;
  else if (a < 90 * 60) t = `${Math.round(a / 60)} min`;
  else if (a < 48 * 3600) t = `${Math.round(a / 3600)} h`;
  else t = `${Math.round(a / 86400)} d`;
  if (past) return neg ? `in ${t}` : `${t} ago`;
  return neg ? `expired ${t} ago` : `in ${t}`;
}
function fmtTime(unixSecs) {
  return new Date(unixSecs * 1000).toLocaleString();
}
// {version: "v1"} -> "version=v1" (keys sorted), as /v1/edges spells a subset.
function subsetKey(labels) {
  return Object.keys(labels || {})
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(",");
}
// Success rate -> the class that colours it.
function health(successRate, requests) {
  if (!requests) return "idle";
  if (successRate >= 0.99) return "ok";
  if (successRate >= 0.95) return "warn";
  return "bad";
}
// Sources that are not services: a caller without a mesh identity
// (`unknown`, counted by the callee's proxy) and a proxy's overflow edge
// (`other`).
function serviceLabel(name) {
  if (name === "" || name === "unknown") return "unknown callers";
  if (name === "other") return "other (overflow)";
  return name;
}

// ---- the API ----

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (method !== "GET") headers["X-Coremesh-Csrf"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (resp.status === 401) {
    window.location.assign("/ui/login");
    throw new ApiError("the session ended; log in again", 401);
  }
  if (!resp.ok) {
    let message = `${method} ${path}: ${resp.status}`;
    try {
      message = (await resp.json()).error || message;
    } catch (_) {
      // keep the status line
    }
    throw new ApiError(message, resp.status);
  }
  return resp.json();
}

// /v1/edges: {available, window, edges, note}. A control without per-edge
// statistics answers 404; the views then say so instead of failing.
async function fetchEdges(window) {
  try {
    const r = await api(`/v1/edges?window=${encodeURIComponent(window)}`);
    return { available: true, window: r.window, edges: r.edges || [], generatedAtMs: r.generatedAtMs };
  } catch (e) {
    if (e.status === 404) {
      return { available: false, window, edges: [], note: "this control serves no per-edge statistics (GET /v1/edges answered 404)" };
    }
    throw e;
  }
}

async function fetchSeries(source, destination) {
  try {
    const q = `source=${encodeURIComponent(source)}&destination=${encodeURIComponent(destination)}`;
    return await api(`/v1/edges/series?${q}`);
  } catch (e) {
    if (e.status === 404) return { source, destination, points: [] };
    throw e;
  }
}

// Config versions never change once written: each is fetched once.
const versionCache = new Map();
async function resourcesAt(version) {
  if (!versionCache.has(version)) {
    versionCache.set(
      version,
      api(`/v1/history/${version}`).catch((e) => {
        versionCache.delete(version);
        throw e;
      }),
    );
  }
  return versionCache.get(version);
}

// ---- state and the refresh loop ----

const ui = {
  window: "10s", // the edges' window: 10s or 1m
  historyA: null, // the two versions the history diff compares
  historyB: null,
  message: null, // {text, kind} shown above a view after an action
  busy: false,
};

function route() {
  const parts = (window.location.hash || "#/topology").replace(/^#\/?/, "").split("/");
  const view = parts[0] || "topology";
  const param = parts.slice(1).map(decodeURIComponent).join("/");
  return { view, param };
}

const VIEWS = {
  topology: renderTopology,
  services: renderServices,
  service: renderService,
  history: renderHistory,
  proxies: renderProxies,
};

let refreshTimer = null;
let generation = 0;

async function refresh() {
  clearTimeout(refreshTimer);
  const mine = ++generation;
  const { view, param } = route();
  const render = VIEWS[view] || renderTopology;
  for (const a of document.querySelectorAll("header nav a")) {
    const active = a.dataset.view === view || (view === "services" && a.dataset.view === "service");
    a.classList.toggle("active", active);
  }
  const status = document.getElementById("status");
  try {
    const content = await render(param);
    if (mine !== generation) return; // a newer refresh started meanwhile
    const main = document.getElementById("view");
    main.replaceChildren(...(ui.message ? [messageBox()] : []), content);
    main.dataset.view = view;
    main.dataset.loaded = "1";
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "status";
  } catch (e) {
    if (mine !== generation) return;
    status.textContent = `error: ${e.message}`;
    status.className = "status bad";
  }
  if (mine === generation) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

function messageBox() {
  const m = ui.message;
  return h(
    "div",
    { class: `message ${m.kind}`, role: "status" },
    m.text,
    h("button", { type: "button", class: "link", onclick: () => { ui.message = null; refresh(); } }, "dismiss"),
  );
}

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

function table(columns, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, "none"))),
  );
}

function windowToggle() {
  return h(
    "span",
    { class: "toggle", role: "group", "aria-label": "window" },
    "window: ",
    ["10s", "1m"].map((w) =>
      h("button", {
        type: "button",
        class: w === ui.window ? "on" : null,
        "data-window": w,
        onclick: () => { ui.window = w; refresh(); },
      }, w),
    ),
  );
}

// ---- edges ----

// Sums the edges (one per subset and protocol) per source -> destination.
function edgePairs(edges) {
  const pairs = new Map();
  for (const e of edges) {
    const key = `${e.source}\u0000${e.destination}`;
    let p = pairs.get(key);
    if (!p) {
      p = { source: e.source, destination: e.destination, rps: 0, requests: 0, failures: 0, p99Ms: 0, protocols: new Set() };
      pairs.set(key, p);
    }
    p.rps += e.rps || 0;
    p.requests += e.requests || 0;
    p.failures += e.failures || 0;
    // The exact p99 of the sum is unknown: the highest of the parts bounds it.
    p.p99Ms = Math.max(p.p99Ms, e.p99Ms || 0);
    p.protocols.add(e.protocol);
  }
  for (const p of pairs.values()) {
    p.successRate = p.requests ? 1 - p.failures / p.requests : 1;
  }
  return [...pairs.values()];
}

// ---- Topology ----

async function renderTopology() {
  const [services, edges] = await Promise.all([api("/v1/services"), fetchEdges(ui.window)]);
  const pairs = edgePairs(edges.edges).filter((p) => p.source !== p.destination);
  const names = new Set(services.map((r) => r.name));
  for (const p of pairs) {
    names.add(p.source);
    names.add(p.destination);
  }
  const graph = layout([...names].sort(), pairs, new Set(services.map((r) => r.name)));
  const rows = edges.edges
    .slice()
    .sort((a, b) => (a.source + a.destination + a.subset).localeCompare(b.source + b.destination + b.subset))
    .map((e) =>
      h("tr", { class: "edge-row", "data-source": e.source, "data-destination": e.destination, "data-subset": e.subset, "data-rps": e.rps },
        h("td", {}, serviceLabel(e.source)),
        h("td", {}, h("a", { href: `#/service/${encodeURIComponent(e.destination)}` }, e.destination)),
        h("td", {}, e.subset || "–"),
        h("td", {}, e.protocol),
        h("td", { class: "num" }, fmtRps(e.rps)),
        h("td", { class: `num ${health(e.successRate, e.requests)}` }, fmtPct(e.successRate)),
        h("td", { class: "num" }, fmtMs(e.p50Ms)),
        h("td", { class: "num" }, fmtMs(e.p95Ms)),
        h("td", { class: "num" }, fmtMs(e.p99Ms)),
      ),
    );
  return h(
    "div",
    {},
    h("div", { class: "viewhead" }, h("h1", {}, "Topology"), windowToggle()),
    edges.available ? null : h("p", { class: "note" }, edges.note),
    h("section", { class: "card graph" }, graph, legend()),
    section(
      `Edges over the last ${edges.window}`,
      table(
        [
          { title: "from" }, { title: "to" }, { title: "subset" }, { title: "protocol" },
          { title: "req/s", num: true }, { title: "success", num: true },
          { title: "p50", num: true }, { title: "p95", num: true }, { title: "p99", num: true },
        ],
        rows,
        { id: "edges" },
      ),
    ),
  );
}

function legend() {
  const item = (cls, text) => h("span", { class: `legend-item ${cls}` }, h("span", { class: "swatch" }), text);
  return h("div", { class: "legend" },
    item("ok", "success ≥ 99%"), item("warn", "≥ 95%"), item("bad", "< 95%"), item("idle", "no requests"),
    h("span", { class: "hint" }, "edge labels: requests/s · success · p99 (the highest of its subsets)"));
}

const NODE_W = 140;
const NODE_H = 46;
const COL_GAP = 240;
const ROW_GAP = 36;

// A small layered layout: each service's column is the longest path of
// calls leading to it (callers left, callees right; a call back along a
// cycle is drawn as a curve), rows ordered by their callers' rows.
function layout(names, pairs, services) {
  const incoming = new Map(names.map((n) => [n, []]));
  const outgoing = new Map(names.map((n) => [n, []]));
  for (const p of pairs) {
    outgoing.get(p.source).push(p.destination);
    incoming.get(p.destination).push(p.source);
  }
  // Back edges (found by depth-first search) do not count for columns.
  const back = new Set();
  const mark = new Map(); // 1: on the stack, 2: done
  const visit = (n) => {
    mark.set(n, 1);
    for (const m of outgoing.get(n)) {
      if (mark.get(m) === 1) back.add(`${n}\u0000${m}`);
      else if (!mark.get(m)) visit(m);
    }
    mark.set(n, 2);
  };
  for (const n of names) if (!incoming.get(n).length && !mark.get(n)) visit(n);
  for (const n of names) if (!mark.get(n)) visit(n);
  const col = new Map();
  const colOf = (n, depth = 0) => {
    if (col.has(n)) return col.get(n);
    if (depth > names.length) return 0;
    let c = 0;
    for (const m of incoming.get(n)) {
      if (!back.has(`${m}\u0000${n}`)) c = Math.max(c, colOf(m, depth + 1) + 1);
    }
    col.set(n, c);
    return c;
  };
  names.forEach((n) => colOf(n));
  const columns = [];
  for (const n of names) {
    const c = col.get(n);
    (columns[c] = columns[c] || []).push(n);
  }
  const pos = new Map();
  const rowsMax = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const height = rowsMax * NODE_H + (rowsMax - 1) * ROW_GAP + 60;
  columns.forEach((members, ci) => {
    if (!members) return;
    if (ci > 0) {
      // Barycentre of the callers' rows: fewer crossings.
      const bary = (n) => {
        const ys = incoming.get(n).filter((m) => pos.has(m)).map((m) => pos.get(m).y);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
      };
      members.sort((a, b) => bary(a) - bary(b) || a.localeCompare(b));
    }
    const total = members.length * NODE_H + (members.length - 1) * ROW_GAP;
    members.forEach((n, i) => {
      pos.set(n, { x: 30 + ci * (NODE_W + COL_GAP), y: (height - total) / 2 + i * (NODE_H + ROW_GAP) });
    });
  });
  const width = Math.max(1, columns.length) * (NODE_W + COL_GAP) - COL_GAP + 60;

  // Node colour: the success rate of the calls into it.
  const inbound = new Map();
  for (const p of pairs) {
    const a = inbound.get(p.destination) || { requests: 0, failures: 0 };
    a.requests += p.requests;
    a.failures += p.failures;
    inbound.set(p.destination, a);
  }

  const svg = s("svg", {
    id: "topology",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "services and the calls between them",
  });
  svg.append(
    s("defs", {},
      ["ok", "warn", "bad", "idle"].map((cls) =>
        s("marker", { id: `arrow-${cls}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 11, markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
          s("path", { d: "M0,0 L10,5 L0,10 z", class: `arrowhead ${cls}` })),
      )),
  );
  const labels = [];
  for (const p of pairs) {
    const a = pos.get(p.source);
    const b = pos.get(p.destination);
    const cls = health(p.successRate, p.requests);
    let d;
    let lx;
    let ly;
    if (a.x < b.x) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 2, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
      // Above the line's middle, so the line stays visible.
      lx = mx;
      ly = (y1 + y2) / 2 - 14;
    } else {
      // Same column or backwards: a loop below both boxes.
      const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + 10, y2 = b.y + NODE_H + 2;
      const dip = Math.max(y1, y2) + 50;
      d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
      lx = (x1 + x2) / 2;
      ly = dip - 12;
    }
    const width = Math.max(1.5, Math.min(6, 1.5 + Math.log10(1 + p.rps) * 2));
    svg.append(
      s("g", {
        class: `edge ${cls}`,
        "data-source": p.source,
        "data-destination": p.destination,
        "data-rps": p.rps.toFixed(3),
        "data-success": p.successRate.toFixed(4),
        "data-p99": p.p99Ms.toFixed(2),
      },
      s("title", {}, `${serviceLabel(p.source)} → ${p.destination}: ${fmtRps(p.rps)} req/s, ${fmtPct(p.successRate)} success, p99 ${fmtMs(p.p99Ms)}`),
      s("path", { d, class: "edge-line", "stroke-width": width.toFixed(1), "marker-end": `url(#arrow-${cls})` })),
    );
    const text = `${fmtRps(p.rps)} rps · ${fmtPct(p.successRate)} · p99 ${fmtMs(p.p99Ms)}`;
    labels.push({ lx, ly, text, cls, p });
  }
  for (const n of names) {
    const { x, y } = pos.get(n);
    const inb = inbound.get(n);
    const cls = inb ? health(1 - inb.failures / Math.max(1, inb.requests), inb.requests) : "idle";
    const known = services.has(n);
    const node = s("g", { class: `node ${cls}${known ? "" : " outside"}`, "data-service": n, tabindex: known ? 0 : null },
      s("rect", { x, y, width: NODE_W, height: NODE_H, rx: 8 }),
      s("text", { x: x + NODE_W / 2, y: y + NODE_H / 2 + 5, "text-anchor": "middle" }, serviceLabel(n)));
    if (known) {
      node.addEventListener("click", () => { window.location.hash = `#/service/${encodeURIComponent(n)}`; });
      node.addEventListener("keydown", (ev) => { if (ev.key === "Enter") window.location.hash = `#/service/${encodeURIComponent(n)}`; });
    }
    svg.append(node);
  }
  // Labels last, so they sit above lines and boxes.
  for (const l of labels) {
    const w = l.text.length * 6.4 + 10;
    svg.append(s("g", { class: `edge-label ${l.cls}`, "data-source": l.p.source, "data-destination": l.p.destination },
      s("rect", { x: l.lx - w / 2, y: l.ly - 11, width: w, height: 18, rx: 4 }),
      s("text", { x: l.lx, y: l.ly + 2, "text-anchor": "middle" }, l.text)));
  }
  return svg;
}

// ---- Services ----

async function renderServices() {
  const [services, endpoints, edges] = await Promise.all([api("/v1/services"), api("/v1/endpoints"), fetchEdges(ui.window)]);
  const pairs = edgePairs(edges.edges);
  const rows = services.map((svc) => {
    const eps = endpoints.filter((e) => e.service === svc.name);
    const inbound = pairs.filter((p) => p.destination === svc.name);
    const rps = inbound.reduce((a, p) => a + p.rps, 0);
    const req = inbound.reduce((a, p) => a + p.requests, 0);
    const fail = inbound.reduce((a, p) => a + p.failures, 0);
    const sr = req ? 1 - fail / req : null;
    return h("tr", { class: "service-row", "data-service": svc.name },
      h("td", {}, h("a", { href: `#/service/${encodeURIComponent(svc.name)}` }, svc.name)),
      h("td", {}, svc.protocol || "http"),
      h("td", { class: "num" }, `${eps.filter((e) => e.healthy).length} / ${eps.length}`),
      h("td", { class: "num" }, edges.available ? fmtRps(rps) : "–"),
      h("td", { class: `num ${health(sr, req)}` }, req ? fmtPct(sr) : "–"));
  });
  return h("div", {},
    h("div", { class: "viewhead" }, h("h1", {}, "Services"), windowToggle()),
    edges.available ? null : h("p", { class: "note" }, edges.note),
    section("Every service",
      table([{ title: "service" }, { title: "protocol" }, { title: "healthy endpoints", num: true }, { title: "req/s in", num: true }, { title: "success", num: true }], rows)));
}

function proxyState(p) {
  if (p.nack) return { cls: "bad", text: "NACK" };
  if (!p.connected) return { cls: "idle", text: "disconnected" };
  if (p.applied_version !== null && p.applied_version !== undefined && p.applied_version === p.sent_version) {
    return { cls: "ok", text: "ACK" };
  }
  if (p.held_running) return { cls: "warn", text: "held" };
  return { cls: "warn", text: "pending" };
}

function certCell(expiry) {
  if (!expiry) return h("td", {}, "–");
  const left = expiry - Date.now() / 1000;
  const cls = left < 0 ? "bad" : left < 3600 ? "warn" : null;
  return h("td", { class: cls, title: fmtTime(expiry) }, fmtIn(expiry));
}

function healthCell(healthy) {
  if (healthy === null || healthy === undefined) return h("td", { class: "idle" }, "unknown");
  return h("td", { class: healthy ? "ok" : "bad" }, healthy ? "healthy" : "unhealthy");
}

function matchText(m) {
  if (!m) return "every request";
  const parts = [];
  if (m.path) parts.push(`path = ${m.path}`);
  if (m.pathPrefix) parts.push(`path prefix ${m.pathPrefix}`);
  if (m.pathRegex) parts.push(`path ~ ${m.pathRegex}`);
  if (m.grpc) parts.push(`gRPC ${m.grpc.service}${m.grpc.method ? `/${m.grpc.method}` : ""}`);
  if (m.methods && m.methods.length) parts.push(`method ${m.methods.join("|")}`);
  for (const [k, v] of Object.entries(m.headers || {})) parts.push(`header ${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  for (const [k, v] of Object.entries(m.query || {})) parts.push(`query ${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  return parts.join(", ") || "every request";
}

async function renderService(name) {
  if (!name) return renderServices();
  const [services, routes, policies, resiliences, endpoints, proxies, edges] = await Promise.all([
    api("/v1/services"), api("/v1/routes"), api("/v1/accesspolicies"), api("/v1/resiliences"),
    api("/v1/endpoints"), api("/v1/proxies"), fetchEdges(ui.window),
  ]);
  const svc = services.find((r) => r.name === name);
  const inbound = edges.edges.filter((e) => e.destination === name);
  const outbound = edges.edges.filter((e) => e.source === name);

  // Live traffic into the service per subset.
  const bySubset = new Map();
  for (const e of inbound) {
    const a = bySubset.get(e.subset) || { rps: 0, requests: 0, failures: 0, p99Ms: 0 };
    a.rps += e.rps;
    a.requests += e.requests;
    a.failures += e.failures;
    a.p99Ms = Math.max(a.p99Ms, e.p99Ms || 0);
    bySubset.set(e.subset, a);
  }
  const totalRps = [...bySubset.values()].reduce((a, b) => a + b.rps, 0);
  const subsetRows = [...bySubset.entries()].sort().map(([subset, a]) => {
    const share = totalRps > 0 ? a.rps / totalRps : 0;
    return h("tr", { class: "subset-row", "data-subset": subset, "data-rps": a.rps.toFixed(3), "data-requests": a.requests, "data-share": share.toFixed(4) },
      h("td", {}, subset || "(no subset)"),
      h("td", { class: "num" }, fmtRps(a.rps)),
      h("td", { class: "num share" }, shareBar(share), fmtPct(share)),
      h("td", { class: `num ${health(a.requests ? 1 - a.failures / a.requests : 1, a.requests)}` }, a.requests ? fmtPct(1 - a.failures / a.requests) : "–"),
      h("td", { class: "num" }, fmtMs(a.p99Ms)));
  });

  // Routes: each rule's backends with their configured and live shares.
  const routeCards = routes.filter((r) => r.service === name).map((r) =>
    h("div", { class: "route", "data-route": r.name },
      h("h3", {}, `Route ${r.name}`),
      r.rules.map((rule, i) => {
        const weightSum = rule.backends.reduce((a, b) => a + (b.weight ?? 1), 0) || 1;
        const liveSum = rule.backends.reduce((a, b) => a + (bySubset.get(subsetKey(b.subset))?.rps || 0), 0);
        const extras = [];
        if (rule.timeout) extras.push(`timeout ${rule.timeout}`);
        if (rule.retries) extras.push(`retries ${rule.retries.attempts}${rule.retries.perTryTimeout ? ` × ${rule.retries.perTryTimeout}` : ""} on ${(rule.retries.on || []).join(", ")}`);
        if (rule.failover && rule.failover !== "spill-over") extras.push(`failover ${rule.failover}`);
        return h("div", { class: "rule" },
          h("p", {}, h("strong", {}, `Rule ${i + 1}: `), matchText(rule.match), extras.length ? h("span", { class: "hint" }, ` (${extras.join("; ")})`) : null),
          table([{ title: "backend subset" }, { title: "weight", num: true }, { title: "configured", num: true }, { title: "live req/s", num: true }, { title: "live share of this rule's subsets", num: true }],
            rule.backends.map((b) => {
              const key = subsetKey(b.subset);
              const live = bySubset.get(key)?.rps || 0;
              const weight = b.weight ?? 1;
              return h("tr", { class: "backend-row", "data-subset": key, "data-weight-share": (weight / weightSum).toFixed(4), "data-live-share": liveSum > 0 ? (live / liveSum).toFixed(4) : "" },
                h("td", {}, key || "(every endpoint)"),
                h("td", { class: "num" }, weight),
                h("td", { class: "num" }, fmtPct(weight / weightSum, 0)),
                h("td", { class: "num" }, edges.available ? fmtRps(live) : "–"),
                h("td", { class: "num" }, liveSum > 0 ? fmtPct(live / liveSum) : "–"));
            })));
      })));

  // Endpoints and their proxies, joined by node and address.
  const eps = endpoints.filter((e) => e.service === name);
  const pxs = proxies.filter((p) => p.service === name);
  const rows = pxs.map((p) => {
    const ep = eps.find((e) => e.node === p.node && e.address === p.address);
    const st = proxyState(p);
    return h("tr", { class: "proxy-row", "data-node": p.node, "data-state": st.text },
      h("td", {}, p.address || "–"),
      h("td", {}, p.node),
      h("td", {}, ep ? subsetKey(ep.labels) || "–" : "–"),
      h("td", { class: st.cls, title: p.nack || "" }, st.text, p.applied_config_version ? ` (config v${p.applied_config_version})` : "", p.nack ? h("div", { class: "reason" }, p.nack) : null),
      certCell(p.cert_expiry),
      healthCell(ep ? ep.healthy : p.healthy),
      h("td", {}, p.connected ? fmtAgo(p.last_heartbeat) : `left ${fmtAgo(p.last_seen)}`));
  });
  for (const ep of eps.filter((e) => !pxs.some((p) => p.node === e.node && p.address === e.address))) {
    rows.push(h("tr", { class: "proxy-row" },
      h("td", {}, ep.address), h("td", {}, ep.node), h("td", {}, subsetKey(ep.labels) || "–"),
      h("td", { class: "idle" }, "no proxy session"), h("td", {}, "–"), healthCell(ep.healthy), h("td", {}, "–")));
  }

  const policy = policies.find((p) => p.service === name);
  const resilience = resiliences.find((r) => r.service === name);

  // Charts: every pair that calls this service or that it calls.
  const chartPairs = edgePairs(edges.edges).filter((p) => p.destination === name || p.source === name);
  const series = await Promise.all(chartPairs.map((p) => fetchSeries(p.source, p.destination)));

  return h("div", { class: "service", "data-service": name },
    h("div", { class: "viewhead" },
      h("h1", {}, h("a", { href: "#/services", class: "crumb" }, "Services"), " / ", name),
      windowToggle()),
    svc ? h("p", { class: "sub" }, `protocol ${svc.protocol || "http"}`, svc.port ? ` · port ${svc.port}` : "") :
      h("p", { class: "note" }, `no Service resource named ${name}`),
    edges.available ? null : h("p", { class: "note" }, edges.note),
    section(`Traffic by subset (last ${edges.window})`,
      table([{ title: "subset" }, { title: "req/s", num: true }, { title: "share", num: true }, { title: "success", num: true }, { title: "p99", num: true }], subsetRows, { id: "subsets" })),
    section("Routes and splits", routeCards.length ? routeCards : h("p", { class: "empty" }, "no route: requests go to every healthy endpoint")),
    section("Golden metrics, last hour", charts(chartPairs, series, name)),
    section("Endpoints and proxies",
      table([{ title: "address" }, { title: "node" }, { title: "labels" }, { title: "config" }, { title: "certificate expires" }, { title: "health" }, { title: "heartbeat" }], rows, { id: "proxies" })),
    section("Access policy", policy ? policyView(policy) : h("p", { class: "empty" }, "none: the mesh's default access applies")),
    resilience ? section("Resilience", h("pre", { class: "yaml" }, toYaml(resilience))) : null,
    outbound.length ? section(`Calls from ${name} (last ${edges.window})`,
      table([{ title: "to" }, { title: "subset" }, { title: "req/s", num: true }, { title: "success", num: true }, { title: "p99", num: true }],
        outbound.map((e) => h("tr", {},
          h("td", {}, h("a", { href: `#/service/${encodeURIComponent(e.destination)}` }, e.destination)),
          h("td", {}, e.subset || "–"),
          h("td", { class: "num" }, fmtRps(e.rps)),
          h("td", { class: `num ${health(e.successRate, e.requests)}` }, fmtPct(e.successRate)),
          h("td", { class: "num" }, fmtMs(e.p99Ms)))))) : null);
}

// A share as a small horizontal bar (SVG: the page's policy allows no
// inline styles).
function shareBar(share) {
  const w = 90;
  return s("svg", { class: "bar", width: w, height: 8, viewBox: `0 0 ${w} 8` },
    s("rect", { class: "bar-bg", width: w, height: 8, rx: 2 }),
    s("rect", { class: "bar-fill", width: (Math.max(0, Math.min(1, share)) * w).toFixed(1), height: 8, rx: 2 }));
}

function policyView(policy) {
  return h("div", { class: "policy", "data-default": policy.default },
    h("p", {}, `Policy ${policy.name}: default `, h("strong", { class: policy.default === "deny" ? "warn" : "ok" }, policy.default)),
    table([{ title: "from" }, { title: "methods" }, { title: "path" }],
      (policy.rules || []).map((r) => h("tr", {},
        h("td", {}, r.from.join(", ")),
        h("td", {}, (r.methods || []).join(", ") || "any"),
        h("td", {}, r.path ? `= ${r.path}` : r.pathPrefix ? `${r.pathPrefix}…` : "any")))));
}

// ---- charts ----

const LINE_COLOURS = ["#2f6fd0", "#d0762f", "#2fa36b", "#a33fb0", "#b0a32f", "#3fb0b0"];

function charts(pairs, series, name) {
  if (!pairs.length) return h("p", { class: "empty" }, "no calls to or from this service in the window");
  const lines = pairs.map((p, i) => ({
    label: p.destination === name ? `${serviceLabel(p.source)} → ${name}` : `${name} → ${p.destination}`,
    colour: LINE_COLOURS[i % LINE_COLOURS.length],
    points: (series[i] && series[i].points) || [],
  }));
  const now = Date.now();
  return h("div", { class: "charts" },
    h("div", { class: "chart-legend" }, lines.map((l) => h("span", { class: "legend-item" }, s("svg", { width: 14, height: 4 }, s("rect", { width: 14, height: 4, fill: l.colour })), l.label))),
    h("div", { class: "chart-row" },
      lineChart("Requests/s", lines, (p) => p.rps, fmtRps, now, { min: 0 }),
      lineChart("Success rate", lines, (p) => p.successRate, (v) => fmtPct(v, 0), now, { min: null, max: 1 }),
      lineChart("p99 latency", lines, (p) => p.p99Ms, fmtMs, now, { min: 0 })));
}

// An SVG line chart of the last hour; one line per entry of `lines`.
function lineChart(title, lines, value, fmt, nowMs, { min = 0, max = null } = {}) {
  const W = 330, H = 170, L = 52, R = 8, T = 22, B = 22;
  const from = nowMs - 3600 * 1000;
  const vals = [];
  for (const l of lines) for (const p of l.points) {
    const v = value(p);
    if (typeof v === "number" && !Number.isNaN(v)) vals.push(v);
  }
  let lo = min === null ? Math.min(...vals, max ?? 1) : min;
  let hi = max === null ? Math.max(...vals, 0) : max;
  if (min === null) lo = Math.max(0, Math.floor(lo * 20) / 20 - 0.05); // success rate: to the 5% below
  if (hi <= lo) hi = lo + 1;
  if (max === null) hi *= 1.1;
  const x = (t) => L + ((t - from) / (3600 * 1000)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title, "data-title": title, "data-points": vals.length },
    s("text", { x: L, y: 14, class: "chart-title" }, title));
  for (const f of [0, 0.5, 1]) {
    const v = lo + (hi - lo) * f;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, fmt(v)));
  }
  for (const m of [60, 45, 30, 15, 0]) {
    const t = nowMs - m * 60 * 1000;
    svg.append(s("text", { x: x(t), y: H - 6, "text-anchor": m === 0 ? "end" : m === 60 ? "start" : "middle", class: "axis" }, m ? `-${m}m` : "now"));
  }
  if (!vals.length) {
    svg.append(s("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no data yet"));
  }
  for (const l of lines) {
    const pts = l.points
      .filter((p) => p.tMs >= from && typeof value(p) === "number" && !Number.isNaN(value(p)))
      .map((p) => `${x(p.tMs).toFixed(1)},${y(value(p)).toFixed(1)}`);
    if (pts.length === 1) {
      const [px, py] = pts[0].split(",");
      svg.append(s("circle", { cx: px, cy: py, r: 2.5, fill: l.colour }));
    } else if (pts.length > 1) {
      svg.append(s("polyline", { points: pts.join(" "), fill: "none", stroke: l.colour, "stroke-width": 1.8, "stroke-linejoin": "round" }));
    }
  }
  return svg;
}

// ---- History ----

async function renderHistory() {
  const history = (await api("/v1/history")).slice().sort((a, b) => b.version - a.version);
  const current = history.length ? history[0].version : 0;
  const versions = [0, ...history.map((e) => e.version)];
  if (ui.historyB === null || !versions.includes(ui.historyB)) ui.historyB = current;
  if (ui.historyA === null || !versions.includes(ui.historyA)) {
    ui.historyA = history.length > 1 ? history[1].version : 0;
  }
  const radio = (which, v) => h("input", {
    type: "radio",
    name: `diff-${which}`,
    value: v,
    checked: (which === "a" ? ui.historyA : ui.historyB) === v,
    "aria-label": `${which === "a" ? "from" : "to"} version ${v}`,
    "data-diff": which,
    "data-version": v,
    onchange: () => {
      if (which === "a") ui.historyA = v;
      else ui.historyB = v;
      refresh();
    },
  });
  const rows = history.map((e) => h("tr", { class: `history-row${e.version === current ? " current" : ""}`, "data-version": e.version },
    h("td", { class: "num" }, `v${e.version}`),
    h("td", { title: fmtTime(e.at) }, fmtAgo(e.at)),
    h("td", {}, h("span", { class: "summary" }, e.summary), e.version === current ? h("span", { class: "badge" }, "current") : null),
    h("td", { class: "center" }, radio("a", e.version)),
    h("td", { class: "center" }, radio("b", e.version)),
    h("td", {}, e.version === current ? null :
      h("button", { type: "button", class: "rollback", "data-version": e.version, onclick: () => confirmRollback(e.version, current) }, `Roll back to v${e.version}`))));
  rows.push(h("tr", { class: "history-row", "data-version": 0 },
    h("td", { class: "num" }, "v0"), h("td", {}, "–"), h("td", { class: "hint" }, "empty, before the first apply"),
    h("td", { class: "center" }, radio("a", 0)), h("td", { class: "center" }, radio("b", 0)), h("td", {})));

  const [a, b] = await Promise.all([resourcesAt(ui.historyA), resourcesAt(ui.historyB)]);
  const diff = diffLines(resourcesText(a), resourcesText(b));
  return h("div", {},
    h("div", { class: "viewhead" }, h("h1", {}, "History")),
    section("Config versions",
      h("p", { class: "hint" }, "Pick two versions to compare (from, to). A rollback commits a new version with an old version's resources."),
      table([{ title: "version", num: true }, { title: "when" }, { title: "change" }, { title: "from" }, { title: "to" }, { title: "" }], rows, { id: "history" })),
    section(`Diff v${ui.historyA} → v${ui.historyB}`, diffView(diff)));
}

// Every resource as YAML-like text, sorted by kind and name, one block each.
function resourcesText(resources) {
  const sorted = resources.slice().sort((x, y) => (x.kind + "/" + (x.name || x.service)).localeCompare(y.kind + "/" + (y.name || y.service)));
  const lines = [];
  for (const r of sorted) {
    if (lines.length) lines.push("---");
    const { kind, name, ...rest } = r;
    lines.push(`kind: ${kind}`);
    if (name !== undefined) lines.push(`name: ${name}`);
    lines.push(...toYaml(rest).split("\n").filter((l) => l !== ""));
  }
  return lines;
}

function yamlScalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "string") return /^[\w./@-][\w ./@:-]*$/.test(v) && !/^(true|false|null|yes|no|\d+(\.\d+)?)$/i.test(v) && !v.endsWith(" ") ? v : JSON.stringify(v);
  return String(v);
}

function toYaml(v, indent = "") {
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return v.map((item) => {
      if (item && typeof item === "object" && !Array.isArray(item) && Object.keys(item).length) {
        const body = toYaml(item, indent + "  ").split("\n");
        return `${indent}- ${body[0].trimStart()}${body.length > 1 ? "\n" + body.slice(1).join("\n") : ""}`;
      }
      return `${indent}- ${typeof item === "object" && item !== null ? JSON.stringify(item) : yamlScalar(item)}`;
    }).join("\n");
  }
  if (v && typeof v === "object") {
    return Object.entries(v).map(([k, val]) => {
      if (val && typeof val === "object" && (Array.isArray(val) ? val.length : Object.keys(val).length)) {
        return `${indent}${k}:\n${toYaml(val, indent + "  ")}`;
      }
      if (val && typeof val === "object") return `${indent}${k}: ${Array.isArray(val) ? "[]" : "{}"}`;
      return `${indent}${k}: ${yamlScalar(val)}`;
    }).join("\n");
  }
  return indent + yamlScalar(v);
}

// The longest common subsequence of two line lists, as a list of
// {op: " " | "-" | "+", text}.
function diffLines(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push({ op: " ", text: a[i] }); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) { out.push({ op: "-", text: a[i] }); i++; }
    else { out.push({ op: "+", text: b[j] }); j++; }
  }
  while (i < n) out.push({ op: "-", text: a[i++] });
  while (j < m) out.push({ op: "+", text: b[j++] });
  return out;
}

// Changed lines with 3 lines of context; runs of unchanged lines between
// hunks fold to one "…" line.
function diffView(diff) {
  const changed = diff.filter((d) => d.op !== " ").length;
  if (!changed) return h("pre", { class: "diff", id: "diff", "data-changed": 0 }, h("span", { class: "same" }, "no difference"));
  const keep = new Uint8Array(diff.length);
  diff.forEach((d, i) => {
    if (d.op !== " ") for (let k = Math.max(0, i - 3); k <= Math.min(diff.length - 1, i + 3); k++) keep[k] = 1;
  });
  const out = [];
  let skipped = false;
  diff.forEach((d, i) => {
    if (!keep[i]) { skipped = true; return; }
    if (skipped) { out.push(h("span", { class: "fold" }, "…\n")); skipped = false; }
    const cls = d.op === "+" ? "add" : d.op === "-" ? "del" : "same";
    out.push(h("span", { class: cls }, `${d.op} ${d.text}\n`));
  });
  if (skipped) out.push(h("span", { class: "fold" }, "…\n"));
  const adds = diff.filter((d) => d.op === "+").length;
  return h("div", {},
    h("p", { class: "hint" }, `${adds} line(s) added, ${changed - adds} removed`),
    h("pre", { class: "diff", id: "diff", "data-changed": changed }, out));
}

function confirmRollback(version, current) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = `Roll back to version ${version}?`;
  document.getElementById("confirm-text").textContent =
    `This commits a new config version (after v${current}) with the resources of v${version}; every proxy gets it within seconds. ` +
    "The history keeps every version, so this can itself be rolled back.";
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      const r = await api("/v1/rollback", { method: "POST", body: { to: version } });
      ui.message = { kind: "ok", text: `Rolled back to v${version}: now v${r.version}${r.changed.length ? ` (changed ${r.changed.join(", ")})` : " (nothing changed)"}. ` };
      ui.historyA = null;
      ui.historyB = null;
    } catch (e) {
      ui.message = { kind: "bad", text: `Rollback failed: ${e.message} ` };
    }
    refresh();
  };
  dialog.showModal();
}

// ---- Proxies ----

async function renderProxies() {
  const [proxies, nodes, ca] = await Promise.all([api("/v1/proxies"), api("/v1/nodes"), api("/v1/ca")]);
  const sorted = proxies.slice().sort((a, b) => (a.service + a.node).localeCompare(b.service + b.node));
  const rows = sorted.map((p) => {
    const st = proxyState(p);
    return h("tr", { class: "proxy-row", "data-service": p.service, "data-node": p.node, "data-state": st.text },
      h("td", {}, h("a", { href: `#/service/${encodeURIComponent(p.service)}` }, p.service)),
      h("td", {}, p.node),
      h("td", {}, p.address || "–"),
      h("td", { class: st.cls }, st.text),
      h("td", { class: "num" }, p.applied_config_version ? `v${p.applied_config_version}` : "–"),
      h("td", { class: p.nack ? "bad reason" : "" }, p.nack || "–"),
      h("td", {}, p.connected ? fmtAgo(p.last_heartbeat) : `left ${fmtAgo(p.last_seen)}`),
      certCell(p.cert_expiry),
      healthCell(p.healthy),
      h("td", { class: p.problem ? "warn" : "" }, p.problem || "–"));
  });
  const nodeRows = nodes.map((n) => h("tr", {},
    h("td", {}, n.node),
    h("td", { class: n.evicted_at ? "bad" : "ok" }, n.evicted_at ? `evicted ${fmtAgo(n.evicted_at)}` : "member"),
    h("td", { class: "num" }, n.certificates),
    h("td", { class: "num" }, n.revoked)));
  return h("div", {},
    h("div", { class: "viewhead" }, h("h1", {}, "Proxies")),
    section("Every proxy",
      table([{ title: "service" }, { title: "node" }, { title: "address" }, { title: "state" }, { title: "config", num: true }, { title: "last NACK" }, { title: "heartbeat" }, { title: "certificate expires" }, { title: "health" }, { title: "problem" }], rows, { id: "all-proxies" })),
    section("Nodes", table([{ title: "node" }, { title: "membership" }, { title: "certificates", num: true }, { title: "revoked", num: true }], nodeRows)),
    section("Certificate authority",
      h("dl", { class: "facts" },
        h("dt", {}, "trust domain"), h("dd", {}, ca.trust_domain),
        h("dt", {}, "fingerprint"), h("dd", { class: "mono" }, ca.fingerprint),
        h("dt", {}, "expires"), h("dd", { title: fmtTime(ca.not_after) }, fmtIn(ca.not_after)),
        h("dt", {}, "control's clock"), h("dd", {}, clockSkew(ca.now)))));
}

// Control's clock against this browser's, to the second (the answer's
// travel time is below that on any sane network).
function clockSkew(controlNow) {
  const skew = Math.round(controlNow - Date.now() / 1000);
  if (Math.abs(skew) <= 1) return "within a second of this browser's";
  return `${Math.abs(skew)} s ${skew > 0 ? "ahead of" : "behind"} this browser's`;
}

// ---- start ----

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await fetch("/ui/logout", { method: "POST", headers: { "X-Coremesh-Csrf": "1" }, credentials: "same-origin" });
  } finally {
    window.location.assign("/ui/login");
  }
});
window.addEventListener("hashchange", () => { ui.message = null; refresh(); });
refresh();
