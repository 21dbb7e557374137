"use strict";
// lsmux dashboard: polls /v1/status (its summary: no subscriber list) for
// the upstream and the throughput of the last minutes, and subscribes to
// the stream itself over SSE (EventSource reconnects by itself after an
// lsmux restart and resumes with Last-Event-ID).
const $ = (sel) => document.querySelector(sel);
const token = new URLSearchParams(location.search).get("access_token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token) : url);
const fmt = new Intl.NumberFormat();

let stream = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function ago(t) {
  const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.floor(s / 60) + " min ago" : Math.floor(s / 3600) + " h ago";
}

// lastCell says what the slot waits for, or its last error: current when
// it happened in the slot's present state, history (muted, with its age)
// once the slot has connected again since.
function lastCell(c) {
  if (c.hold) return el("td", {}, c.hold);
  if (!c.lastError) return el("td", {}, c.lastStatus && c.state === "streaming" ? String(c.lastStatus) : "");
  const text = (c.lastStatus && c.state !== "streaming" ? c.lastStatus + " " : "") + c.lastError;
  const current = c.lastErrorAt && new Date(c.lastErrorAt).getTime() >= new Date(c.since).getTime() - 1000;
  if (current) return el("td", { class: "current-error" }, text);
  return el("td", { class: "past-error muted" }, "before it connected, " + ago(c.lastErrorAt || c.since) + ": " + c.lastError);
}

function renderUpstream(conns) {
  const rows = conns.map((c) => {
    let next = "";
    if ((c.state === "waiting" || c.state === "failing") && c.nextAttempt) {
      next = "in " + Math.max(0, Math.ceil((new Date(c.nextAttempt) - Date.now()) / 1000)) + " s";
    }
    return el("tr", {}, el("td", {}, "#" + c.slot), el("td", { class: "state-" + c.state }, c.state), el("td", {}, ago(c.since)),
      el("td", {}, fmt.format(c.attempts)), el("td", {}, fmt.format(c.hits)), lastCell(c), el("td", {}, next));
  });
  $("#upstream").replaceChildren(...rows);

  const now = Date.now(), hour = 3600e3;
  const events = conns.flatMap((c) => (c.events || []).map((e) => ({ ...e, slot: c.slot }))).sort((a, b) => new Date(a.time) - new Date(b.time));
  const svgNS = "http://www.w3.org/2000/svg";
  const marks = events.map((e) => {
    // A mark is 3 units wide: the newest one ends at the right edge, not past it.
    const x = Math.max(0, Math.min(997, 997 - ((now - new Date(e.time)) / hour) * 997));
    const r = document.createElementNS(svgNS, "rect");
    r.setAttribute("x", x.toFixed(1));
    r.setAttribute("y", e.kind === "connected" ? "4" : "20");
    r.setAttribute("width", "3");
    r.setAttribute("height", "16");
    r.setAttribute("fill", e.kind === "connected" ? "var(--ok)" : e.kind === "lost" ? "var(--warn)" : "var(--bad)");
    const title = document.createElementNS(svgNS, "title");
    title.textContent = new Date(e.time).toLocaleTimeString() + " " + e.kind + (e.status ? " " + e.status : "") + (e.reason ? ": " + e.reason : "");
    r.append(title);
    return r;
  });
  $("#timeline").replaceChildren(...marks);
  $("#events").replaceChildren(...events.slice(-8).reverse().map((e) =>
    el("li", { class: e.kind }, new Date(e.time).toLocaleTimeString() + "  #" + e.slot + " " + e.kind + (e.status ? " " + e.status : "") + (e.reason ? " — " + e.reason : ""))));
}

// renderCluster says, in cluster mode, who holds the upstream.
function renderCluster(c) {
  const p = $("#cluster");
  p.hidden = !c;
  if (!c) return;
  const who = c.role === "leader" ? "this replica (" + c.replica + ") holds the upstream" :
    c.leader ? "replica " + c.leader + " holds the upstream; this is " + c.replica : "no replica holds the upstream yet";
  p.textContent = "Cluster: " + who + " · NATS " + c.nats + " · JetStream seq " + fmt.format(c.consumedSeq) +
    (c.notReady ? " · not ready: " + c.notReady : "");
}

// renderHistory shows the durable history (a data dir, or the cluster's
// JetStream): how far back a subscriber can resume, what it costs on disk,
// and whether writing it is in trouble.
function renderHistory(h) {
  const p = $("#history");
  p.hidden = !h;
  if (!h) return;
  const since = h.oldest ? "oldest hit held " + new Date(h.oldest).toLocaleString() : "no hits held yet";
  p.textContent = "History (" + (h.store === "embedded" ? "data dir " + (h.dir || "") : "cluster JetStream") + "): " +
    fmt.format(h.hits) + " hits · " + since + " · " + bytes(h.bytes) + " on disk of " + bytes(h.maxBytes) +
    " · replays running " + h.replaysRunning + " of " + h.maxReplays +
    (h.replaysRefused ? " (" + fmt.format(h.replaysRefused) + " refused)" : "") +
    (h.failing ? " · NOT STORING: " + (h.lastError || "writes fail") + "; " + fmt.format(h.heldInMemory) + " hits held in memory" : "") +
    (h.lostFromHistory ? " · " + fmt.format(h.lostFromHistory) + " hits lost from history" : "");
  p.classList.toggle("failing", !!h.failing);
}

// bytes formats a byte count in binary units.
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

// renderThroughput uses the server's per-second counts of the last five
// minutes, so the chart is full from the first poll.
function renderThroughput(s) {
  const tp = s.throughput || { hitsIn: [], delivered: [] };
  const start = new Date(tp.start).getTime();
  const rates = tp.hitsIn.map((n, i) => ({ t: start + (i + 1) * 1000, in: n, out: tp.delivered[i] || 0 }));
  const recent = rates.slice(-5);
  const avg = (key) => (recent.length ? recent.reduce((a, r) => a + r[key], 0) / recent.length : 0);
  $("#hits-total").textContent = fmt.format(s.ring.appended);
  $("#rate-in").textContent = fmt.format(Math.round(avg("in")));
  $("#rate-out").textContent = fmt.format(Math.round(avg("out")));
  const counts = s.subscriberCounts || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  $("#subs").textContent = fmt.format(total);
  $("#subs-detail").textContent = "subscribers (" + ["ws", "sse", "ndjson"].map((k) => k + " " + (counts[k] || 0)).join(", ") + ")";
  drawChart(rates);
}

// drawChart draws hits/s in and deliveries/s out with a time axis (a tick
// a minute, labelled with the clock) and the scale's maximum.
function drawChart(rates) {
  const c = $("#chart");
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const span = 5 * 60e3, axis = 16, top = 16;
  const max = Math.max(1, ...rates.map((r) => Math.max(r.in, r.out)));
  const now = Date.now();
  const xOf = (t) => w - ((now - t) / span) * w;
  g.fillStyle = css.getPropertyValue("--muted");
  g.strokeStyle = css.getPropertyValue("--line");
  g.font = "11px system-ui";
  g.fillText(fmt.format(Math.round(max)) + "/s", 4, 12);
  const ticks = [];
  for (let t = Math.ceil((now - span) / 60e3) * 60e3; t <= now; t += 60e3) {
    const x = xOf(t);
    g.beginPath(); g.moveTo(x, h - axis); g.lineTo(x, h - axis + 4); g.stroke();
    const label = new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    g.fillText(label, Math.min(Math.max(0, x - 14), w - 34), h - 3);
    ticks.push(label);
  }
  c.dataset.ticks = ticks.join(" ");
  c.dataset.points = String(rates.length);
  for (const [key, color] of [["in", "--in"], ["out", "--out"]]) {
    g.strokeStyle = css.getPropertyValue(color);
    g.lineWidth = 1.5;
    g.beginPath();
    rates.forEach((r, i) => {
      const x = xOf(r.t);
      const y = h - axis - 2 - (r[key] / max) * (h - axis - top - 2);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

// needToken explains a 401: the page needs the token lsmux was started
// with, passed as ?access_token= (EventSource cannot send a header).
function needToken() {
  $("#lsmux-state").textContent = token ? "lsmux refused this token (401): check LSMUX_AUTH_TOKEN" : "lsmux asks for a token (401): open this page as /?access_token=<token>";
  $("#auth").hidden = false;
}

async function poll() {
  try {
    const res = await fetch(withToken("/v1/status"));
    if (res.status === 401) return needToken();
    if (!res.ok) throw new Error("status " + res.status);
    const st = await res.json();
    $("#auth").hidden = true;
    const s = st.streams.find((x) => x.name === stream) || st.streams[0];
    if (!s) return;
    if (!stream) start(s.name, st);
    $("#lsmux-state").textContent = st.shuttingDown ? "lsmux is shutting down" : "live";
    renderUpstream(s.upstream);
    renderCluster(s.cluster);
    renderHistory(s.history);
    renderThroughput(s);
  } catch (e) {
    $("#lsmux-state").textContent = "lsmux unreachable, retrying…";
  }
}

// The stream panel: top pages, countries and events over a sliding window
// of two minutes, from a projected (and, when busy, sampled) subscription.
const WINDOW = 120e3;
let seen = [];
function startTops(name, rate) {
  const sample = rate > 200 ? Math.max(0.01, 200 / rate).toFixed(2) : "";
  $("#window-note").textContent = "(last 2 minutes" + (sample ? ", a " + Math.round(sample * 100) + " % sample of visitors" : "") + ")";
  const url = "/v1/streams/" + encodeURIComponent(name) + "/sse?fields=pageName,geoCountry,events" + (sample ? "&sample=" + sample : "");
  const es = new EventSource(withToken(url));
  es.addEventListener("hit", (ev) => {
    const h = JSON.parse(ev.data);
    seen.push({ t: Date.now(), page: h.pageName, country: h.geoCountry, events: Object.keys(h.events || {}) });
  });
  setInterval(renderTops, 1000);
}

function renderTops() {
  const cut = Date.now() - WINDOW;
  seen = seen.filter((x) => x.t >= cut);
  const top = (key) => {
    const m = new Map();
    for (const x of seen) for (const v of [].concat(x[key] || [])) if (v) m.set(v, (m.get(v) || 0) + 1);
    return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, n]) => el("li", {}, el("span", {}, k), el("span", {}, fmt.format(n))));
  };
  $("#top-pages").replaceChildren(...top("page"));
  $("#top-countries").replaceChildren(...top("country"));
  $("#top-events").replaceChildren(...top("events"));
}

// The live tail, with the API's own filter language.
let tail = null, paused = false, shown = 0;
async function startTail(name, filter) {
  const url = withToken("/v1/streams/" + encodeURIComponent(name) + "/sse" + (filter ? "?filter=" + encodeURIComponent(filter) : ""));
  // EventSource cannot read an error answer, so ask first: a bad filter
  // gets the compiler's message (with its position) before any stream
  // starts.
  try {
    const res = await fetch(withToken("/v1/validate" + (filter ? "?filter=" + encodeURIComponent(filter) : "")));
    const body = await res.json();
    if (!body.valid) {
      $("#filter-error").textContent = body.error;
      return;
    }
  } catch (e) {
    $("#filter-error").textContent = "lsmux unreachable: " + e.message;
    return;
  }
  $("#filter-error").textContent = "";
  if (tail) tail.close();
  $("#tail").replaceChildren();
  shown = 0;
  $("#tail-count").textContent = "0";
  tail = new EventSource(url);
  tail.addEventListener("hit", (ev) => {
    if (paused) return;
    const h = JSON.parse(ev.data);
    const row = el("div", { "data-country": h.geoCountry || "" }, el("span", { class: "seq" }, ev.lastEventId + " "),
      el("span", { class: "cc" }, (h.geoCountry || "?") + " "), (h.pageName || "") + "  " + ev.data.slice(0, 160));
    const box = $("#tail");
    box.prepend(row);
    while (box.childNodes.length > 200) box.lastChild.remove();
    shown++;
    $("#tail-count").textContent = fmt.format(shown);
  });
  tail.addEventListener("gap", (ev) => {
    const g = JSON.parse(ev.data);
    $("#tail").prepend(el("div", { class: "error" }, "gap: hits " + g.from + ".." + g.to + " were lost to this view"));
  });
}

function start(name, st) {
  stream = name;
  $("#stream-name").textContent = name;
  const rate = st.streams[0].upstream.reduce((n, c) => n + (c.hitsPerSecond || 0), 0);
  startTops(name, rate);
  startTail(name, "");
  if (st.demo) setupDemo();
}

async function setupDemo() {
  const res = await fetch(withToken("/demo/"));
  if (!res.ok) return;
  const { faults } = await res.json();
  $("#demo").hidden = false;
  $("#demo-buttons").replaceChildren(...Object.entries(faults).sort().map(([kind, what]) => {
    const b = el("button", { type: "button", title: what, "aria-label": "Inject fault: " + what }, kind);
    b.addEventListener("click", async () => {
      const r = await fetch(withToken("/demo/faults/" + kind), { method: "POST" });
      const body = await r.json();
      $("#demo-result").textContent = body.injected ? "Injected: " + body.injected + ". Watch the upstream row wait out the reconnect delay while the tail keeps its subscribers." : body.error;
    });
    return b;
  }));
}

$("#auth").addEventListener("submit", (e) => {
  e.preventDefault();
  const u = new URL(location.href);
  u.searchParams.set("access_token", $("#auth-token").value.trim());
  location.assign(u.toString());
});
$("#filter-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (stream) startTail(stream, $("#filter").value.trim());
});
$("#pause").addEventListener("click", () => {
  paused = !paused;
  $("#pause").setAttribute("aria-pressed", String(paused));
  $("#pause").textContent = paused ? "Resume" : "Pause";
  $("#tail-paused").textContent = paused ? " (paused)" : "";
});

poll();
setInterval(poll, 1000);
