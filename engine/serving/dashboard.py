"""``GET /dashboard``: one self-contained page (no network but ``/metrics``).

Its script polls ``metrics`` (relative: the page works behind a path prefix)
every ``POLL_MS``, parses the Prometheus text and shows: ingest and apply
rates (with two minutes of history), api request rates and latency
percentiles by op, queue depths and projection lags, live actors, dead
letters, fusion weights per segment, the model's status, queue and caches.
With ``[http] tokens_file`` set, open it as ``/dashboard#token=TOKEN`` (an
admin token: ``/metrics`` is `stats`); the fragment never leaves the browser.
"""

POLL_MS = 2000

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:")

DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interest: live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.2em 1.5em;color:#222;background:#f6f6f4}
h1{font-size:1.3em;margin:0}h2{font-size:1em;margin:0 0 .5em}
header{display:flex;align-items:baseline;gap:1em;margin-bottom:.8em}
#status{color:#555}#status.bad{color:#b00;font-weight:600}
.tiles{display:flex;flex-wrap:wrap;gap:.6em;margin-bottom:1em}
.tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:8.5em}
.tile b{display:block;font-size:1.6em;font-variant-numeric:tabular-nums}.tile small{color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(430px,1fr));gap:1em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7em .9em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
td,th{border-bottom:1px solid #eee;padding:.2em .5em;text-align:right;white-space:nowrap}
th{color:#555;font-weight:600}th:first-child,td:first-child{text-align:left}
td.bar{width:40%;text-align:left}td.mix{min-width:5em}.empty{color:#888;font-style:italic}
.legend span{display:inline-block;margin-right:1em}.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}
svg text{font:11px system-ui,sans-serif;fill:#555}
</style></head><body>
<header><h1>interest</h1><span id="status">loading...</span></header>
<div class="tiles">
<div class="tile"><small>ingest</small><b id="rate">-</b><small>events/s received</small></div>
<div class="tile"><small>applied</small><b id="applied">-</b><small>events/s</small></div>
<div class="tile"><small>api</small><b id="reqs">-</b><small>requests/s</small></div>
<div class="tile"><small>live actors</small><b id="actors">-</b><small>users in memory</small></div>
<div class="tile"><small>log head</small><b id="head">-</b><small>position</small></div>
<div class="tile"><small>dead letters</small><b id="dead">-</b><small>entries</small></div>
<div class="tile"><small>memory</small><b id="rss">-</b><small>MB resident</small></div>
<div class="tile"><small>model</small><b id="model">-</b><small id="modelnote">jobs queued</small></div>
</div>
<div class="grid">
<section><h2>Ingest (events/s, last 2 minutes)</h2><div id="spark"></div>
<div class="legend"><span><i class="sw" style="background:#2a6"></i>received</span><span><i class="sw" style="background:#36c"></i>applied</span><span id="outcomes"></span></div></section>
<section><h2>API latency (ms, last requests)</h2><table id="latency"></table></section>
<section><h2>Queues and projection lags</h2><table id="lags"></table><table id="queues"></table></section>
<section><h2>Fusion weights by segment</h2><table id="fusion"></table></section>
<section><h2>Model</h2><table id="modeltable"></table></section>
</div>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const history = [];
let last = null;
const COLORS = ["#36c", "#2a6", "#d73", "#a4c", "#c93", "#399", "#c36", "#777"];
const esc = s => String(s).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";");
const $ = id => document.getElementById(id);
function parse(text) {
  const out = {};
  for (const line of text.split("\\n")) {
    if (!line || line[0] === "#") continue;
    const r = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\\{(.*)\\})?\\s+(\\S+)/.exec(line);
    if (!r) continue;
    const labels = {}, lr = /([a-zA-Z_]\\w*)="((?:[^"\\\\]|\\\\.)*)"/g;
    let x;
    while ((x = lr.exec(r[2] || ""))) labels[x[1]] = x[2].replace(/\\\\(.)/g, (_, c) => c === "n" ? "\\n" : c);
    const v = r[3] === "+Inf" ? Infinity : r[3] === "-Inf" ? -Infinity : Number(r[3]);
    (out[r[1]] = out[r[1]] || []).push({labels, value: v});
  }
  return out;
}
const all = (m, name) => m[name] || [];
const one = (m, name) => all(m, name).length ? all(m, name)[0].value : 0;
const sum = (m, name) => all(m, name).reduce((a, s) => a + s.value, 0);
const by = (m, name, label) => { const o = {}; for (const s of all(m, name)) o[s.labels[label]] = s.value; return o; };
const fmt = v => !isFinite(v) ? "-" : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
const bar = (frac, color) => '<svg width="100%" height="10" viewBox="0 0 100 10" preserveAspectRatio="none"><rect width="' +
  (100 * Math.max(0, Math.min(1, frac))).toFixed(1) + '" height="10" fill="' + color + '"/></svg>';
const table = (id, head, rows, empty) => { $(id).innerHTML = "<tr>" + head.map(h => "<th>" + h + "</th>").join("") + "</tr>" +
  (rows.length ? rows.join("") : '<tr><td class="empty" colspan="' + head.length + '">' + esc(empty) + "</td></tr>"); };
const row = cells => "<tr>" + cells.map((c, i) => i === cells.length - 1 && String(c).startsWith("<svg") ? '<td class="bar">' + c + "</td>" : "<td>" + c + "</td>").join("") + "</tr>";
function spark() {
  const w = 560, h = 110, left = 44, n = 60, max = Math.max(1, ...history.map(p => Math.max(p.received, p.applied)));
  const line = (key, color) => '<polyline fill="none" stroke="' + color + '" stroke-width="2" points="' +
    history.map((p, i) => (left + (n - history.length + i) * (w - left - 4) / (n - 1)).toFixed(1) + "," + (h - 14 - p[key] / max * (h - 24)).toFixed(1)).join(" ") + '"/>';
  $("spark").innerHTML = '<svg width="' + w + '" height="' + h + '" role="img" aria-label="ingest rate">' +
    '<line x1="' + left + '" y1="' + (h - 14) + '" x2="' + (w - 4) + '" y2="' + (h - 14) + '" stroke="#ccc"/>' +
    '<line x1="' + left + '" y1="10" x2="' + (w - 4) + '" y2="10" stroke="#eee"/>' +
    '<text x="' + (left - 4) + '" y="14" text-anchor="end">' + fmt(max) + '</text><text x="' + (left - 4) + '" y="' + (h - 11) + '" text-anchor="end">0</text>' +
    '<text x="' + left + '" y="' + (h - 1) + '">-2 min</text><text x="' + (w - 4) + '" y="' + (h - 1) + '" text-anchor="end">now</text>' +
    line("applied", "#36c") + line("received", "#2a6") + "</svg>";
}
function rates(m, now) {
  const received = sum(m, "interest_ingest_events_total"), applied = one(m, "interest_events_applied_total");
  const requests = by(m, "interest_api_requests_total", "op"), outcomes = by(m, "interest_ingest_events_total", "outcome");
  const out = {received: null, applied: null, requests: {}};
  if (last) {
    const dt = Math.max(0.001, now - last.t), d = (a, b) => Math.max(0, (a - b) / dt);
    out.received = d(received, last.received); out.applied = d(applied, last.applied);
    for (const op in requests) out.requests[op] = d(requests[op], last.requests[op] || 0);
    history.push({received: out.received, applied: out.applied}); if (history.length > 60) history.shift();
  }
  last = {t: now, received, applied, requests};
  $("outcomes").textContent = Object.keys(outcomes).sort().map(k => k + " " + outcomes[k]).join(", ");
  return out;
}
function render(m) {
  const r = rates(m, Date.now() / 1000);
  const perOp = Object.values(r.requests);
  $("rate").textContent = r.received === null ? "-" : fmt(r.received);
  $("applied").textContent = r.applied === null ? "-" : fmt(r.applied);
  $("reqs").textContent = r.received === null ? "-" : fmt(perOp.reduce((a, b) => a + b, 0));
  $("actors").textContent = one(m, "interest_live_actors");
  $("dead").textContent = one(m, "interest_dead_letters");
  $("head").textContent = one(m, "interest_head");
  $("rss").textContent = (one(m, "interest_rss_bytes") / 1048576).toFixed(0);
  spark();
  const lat = {};
  for (const s of all(m, "interest_api_latency_seconds")) (lat[s.labels.op] = lat[s.labels.op] || {})[s.labels.quantile] = s.value * 1000;
  const total = by(m, "interest_api_requests_total", "op");
  const maxP99 = Math.max(1, ...Object.values(lat).map(l => l["0.99"] || 0));
  table("latency", ["op", "requests", "per s", "p50", "p99", ""], Object.keys(lat).sort().map(op =>
    row([esc(op), total[op] || 0, op in r.requests ? fmt(r.requests[op]) : "-", fmt(lat[op]["0.5"]), fmt(lat[op]["0.99"]), bar((lat[op]["0.99"] || 0) / maxP99, "#a4c")])), "no requests yet");
  const pos = by(m, "interest_projection_position", "projection"), lagE = by(m, "interest_projection_lag_events", "projection"),
        lagS = by(m, "interest_projection_lag_seconds", "projection");
  const maxLag = Math.max(1, ...Object.values(lagE));
  table("lags", ["projection", "position", "lag (events)", "lag (s)", ""], Object.keys(pos).sort().map(p =>
    row([esc(p), pos[p], lagE[p] || 0, fmt(lagS[p] || 0), bar((lagE[p] || 0) / maxLag, "#d73")])), "no projections");
  const queues = [["writer jobs", one(m, "interest_writer_queue_jobs")], ["events waiting for commit", one(m, "interest_writer_pending_events")]];
  const depth = by(m, "interest_model_queue_depth", "priority");
  for (const p of Object.keys(depth).sort()) queues.push(["model queue: " + p, depth[p]]);
  const maxQ = Math.max(1, ...queues.map(q => q[1]));
  table("queues", ["queue", "depth", ""], queues.map(q => row([esc(q[0]), q[1], bar(q[1] / maxQ, "#c93")])), "");
  const fusion = {}, sources = new Set();
  for (const s of all(m, "interest_fusion_weight")) { (fusion[s.labels.segment] = fusion[s.labels.segment] || {})[s.labels.source] = s.value; sources.add(s.labels.source); }
  const cols = [...sources].sort();
  const stack = w => { const tot = cols.reduce((a, c) => a + Math.max(0, w[c] || 0), 0) || 1; let x = 0;
    return '<svg width="100%" height="12" viewBox="0 0 100 12" preserveAspectRatio="none">' + cols.map((c, i) => {
      const wd = 100 * Math.max(0, w[c] || 0) / tot, s = '<rect x="' + x.toFixed(2) + '" width="' + wd.toFixed(2) + '" height="12" fill="' + COLORS[i % COLORS.length] + '"><title>' + esc(c) + "</title></rect>"; x += wd; return s; }).join("") + "</svg>"; };
  const segs = Object.keys(fusion), swatch = i => '<i class="sw" style="background:' + COLORS[i % COLORS.length] + '"></i>';
  table("fusion", ["source", ...segs.map(esc)], segs.length ? [...cols.map((c, i) => row([swatch(i) + esc(c), ...segs.map(g => fmt(fusion[g][c] || 0))])),
    '<tr><td>mix</td>' + segs.map(g => '<td class="mix">' + stack(fusion[g]) + "</td>").join("") + "</tr>"] : [], "no fusion weights yet");
  const available = one(m, "interest_model_available");
  $("model").textContent = available ? one(m, "interest_model_queued") : "off";
  $("modelnote").textContent = available ? "jobs queued" : "no model loaded";
  const hits = by(m, "interest_cache_hit_ratio", "cache");
  const modelRows = [["status", available ? "loaded" : "not loaded"], ["tokens/s", fmt(one(m, "interest_model_tokens_per_second"))],
    ["jobs running", one(m, "interest_model_in_flight")], ["jobs queued", one(m, "interest_model_queued")],
    ["generations", one(m, "interest_model_generations_total")], ["deadline drops", one(m, "interest_model_deadline_drops_total")]];
  for (const c of Object.keys(hits).sort()) modelRows.push([c + " cache hit rate", (100 * hits[c]).toFixed(0) + " %"]);
  table("modeltable", ["", "value"], modelRows.map(x => row([esc(x[0]), esc(x[1])])), "");
  const ready = one(m, "interest_ready"), up = one(m, "interest_uptime_seconds");
  $("status").textContent = (ready ? "ready" : "not ready") + " \\u00b7 up " + (up >= 3600 ? (up / 3600).toFixed(1) + " h" : up >= 60 ? (up / 60).toFixed(0) + " min" : up.toFixed(0) + " s") +
    " \\u00b7 updated " + new Date().toLocaleTimeString();
  $("status").className = ready ? "" : "bad";
}
async function poll() {
  try {
    const r = await fetch("metrics", {headers, cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status + (r.status === 401 ? " (open the page as /dashboard#token=TOKEN)" : ""));
    render(parse(await r.text()));
  } catch (e) { $("status").textContent = "cannot read metrics: " + e.message; $("status").className = "bad"; }
  setTimeout(poll, last && !history.length ? 1000 : POLL_MS);    // a first rate after 1 s
}
poll();
</script></body></html>
""".replace("__POLL_MS__", str(POLL_MS))
