"""GET /: a live dashboard, one self-contained HTML page (inline CSS and JS, nothing
fetched from outside: a master often has no internet).

The page holds no ledger data: its script polls the JSON routes every 2 s. So the
page itself is public, like /healthz, and every number it shows still needs the
token when the server has one. Open it as `http://HOST:8000/#token=T`: a fragment
never leaves the browser (no server, proxy or Referer ever sees it), the script
keeps it in sessionStorage for the tab and removes it from the address bar.

The rate chart is drawn from successive /throughput samples kept by the page (the
last 10 minutes, each rate over the last 5 polls): it starts empty when the page
opens, beside the run's average.
"""
from __future__ import annotations

import bottle

CONTENT_TYPE = "text/html; charset=utf-8"
# Only inline code, only calls back to this server; no framing (clickjacking).
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'")


def page() -> str:
    """The dashboard page (the route's view: no ledger read)."""
    bottle.response.set_header("Content-Security-Policy", _CSP)
    bottle.response.set_header("X-Content-Type-Options", "nosniff")
    return PAGE


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>fleetsync</title>
<style>
body { margin: 0; padding: 20px 28px; background: #f4f6f8; color: #1d2730;
       font: 15px/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 14px; margin: 0 0 8px; color: #5a6772; }
#state { color: #5a6772; }
#state.bad { color: #b3261e; font-weight: bold; }
#summary { font-size: 40px; font-weight: bold; margin: 10px 0 8px; }
#summary .of { color: #5a6772; font-weight: normal; }
#summary .fail { color: #b3261e; }
td.late { color: #b3261e; white-space: nowrap; }
.bar { position: relative; display: flex; height: 22px; background: #dde3e8;
       border-radius: 4px; overflow: hidden; }
#bar-done { background: #2e7d32; } #bar-failed { background: #c62828; }
#percent { position: absolute; right: 8px; font-size: 13px; line-height: 22px; }
.grid { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 16px 0; }
.card, .box { background: #fff; border: 1px solid #d6dde3; border-radius: 6px;
              padding: 10px 14px; }
.card b { display: block; font-size: 24px; }
.card span { color: #5a6772; font-size: 13px; }
canvas { width: 100%; height: 200px; display: block; }
.cols { display: grid; grid-template-columns: 2fr 3fr; gap: 12px; margin-top: 12px; }
table { border-collapse: collapse; width: 100%; }
td { padding: 3px 10px 3px 0; border-top: 1px solid #eef1f4; overflow-wrap: anywhere; }
td.t { color: #5a6772; white-space: nowrap; }
td.s { white-space: nowrap; }
#workers td:first-child { overflow-wrap: normal; word-break: break-all; min-width: 8em; }
#logs div { padding: 2px 0; border-top: 1px solid #eef1f4; overflow-wrap: anywhere; }
.lvl { display: inline-block; width: 64px; font-size: 12px; font-weight: bold; }
.error .lvl { color: #b3261e; } .warning .lvl { color: #9a6700; }
.none { color: #5a6772; }
</style></head>
<body>
<header><h1>fleetsync</h1><span id="state">loading&hellip;</span></header>
<div id="summary"><span id="completed">-</span> <span class="of">of</span>
 <span id="total">-</span> <span class="of">batches done,</span>
 <span id="failed">-</span> <span class="of">failed</span></div>
<div class="bar"><div id="bar-done"></div><div id="bar-failed"></div>
 <span id="percent"></span></div>
<div class="grid">
 <div class="card"><b id="files">-</b><span>files copied</span></div>
 <div class="card"><b id="gib">-</b><span>GiB copied</span></div>
 <div class="card"><b id="pending">-</b><span>batches pending or running</span></div>
 <div class="card"><b id="elapsed">-</b><span>elapsed</span></div>
 <div class="card"><b id="files-rate">-</b><span>files/s (run average)</span></div>
 <div class="card"><b id="mib-rate">-</b><span>MiB/s (run average)</span></div>
 <div class="card"><b id="batch-rate">-</b><span>batches/s (run average)</span></div>
 <div class="card"><b id="eta">-</b><span>ETA of the batches known so far</span></div>
</div>
<div class="box"><h2>MiB/s over 10 s, last 10 minutes: now <span id="mib-now">-</span>
 (dashed: run average)</h2>
 <canvas id="chart"></canvas></div>
<div class="cols">
 <div class="box"><h2>Workers, last heartbeat, state</h2><table id="workers"></table></div>
 <div class="box"><h2>Recent errors and warnings</h2><div id="logs"></div></div>
</div>
<script>
"use strict";
const KEY = "fleetsync-token", PERIOD = 2000, KEEP = 300;   // 300 x 2 s = 10 minutes
const MIB = 1024 * 1024, SPAN = 5;   // each rate spans 5 polls: batches land in steps
const seen = [], samples = [];       // [time, bytes] of each poll; [time, MiB/s]
const hash = location.hash.match(/[#&]token=([^&]*)/);
if (hash) {
  sessionStorage.setItem(KEY, decodeURIComponent(hash[1]));
  history.replaceState(null, "", location.pathname + location.search);
}
const $ = id => document.getElementById(id);
const num = (x, d = 0) =>
  x.toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
function duration(s) {
  if (!isFinite(s)) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, p = n => String(n).padStart(2, "0");
  return h ? h + "h " + p(m) + "m" : m + "m " + p(s % 60) + "s";
}
async function get(path) {
  const token = sessionStorage.getItem(KEY);
  const headers = token ? {Authorization: "Bearer " + token} : {};
  const r = await fetch(path, {cache: "no-store", headers});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error("/" + path + ": " + ((body.error || {}).message || r.status) +
                             (r.status === 401 ? " (open this page as /#token=YOUR_TOKEN)" : ""));
  return body;
}
function row(parent, cells) {
  const tr = parent.insertRow();
  cells.forEach(([text, cls]) => {
    const td = tr.insertCell(); td.textContent = text; td.className = cls || "";
  });
}
function show(p, t, w, l) {
  $("completed").textContent = num(p.completed); $("total").textContent = num(p.total);
  $("failed").textContent = num(p.failed); $("failed").className = p.failed ? "fail" : "";
  $("pending").textContent = num(p.pending);
  const pct = x => p.total ? (100 * x / p.total) + "%" : "0";
  $("bar-done").style.width = pct(p.completed); $("bar-failed").style.width = pct(p.failed);
  $("percent").textContent = p.total ? (100 * p.completed / p.total).toFixed(1) + " %" : "";
  $("files").textContent = num(t.files_processed);
  $("gib").textContent = num(t.bytes_processed / (MIB * 1024), 2);
  $("elapsed").textContent = duration(t.elapsed_sec);
  $("files-rate").textContent = num(t.files_per_sec, 2);
  $("mib-rate").textContent = num(t.bytes_per_sec / MIB, 2);
  $("batch-rate").textContent = num(t.batches_per_sec, 2);
  const perSec = t.elapsed_sec > 0 ? t.batches_completed / t.elapsed_sec : 0;
  $("eta").textContent = p.total && !p.pending ? "done"
    : perSec > 0 ? duration(p.pending / perSec) : "-";
  const workers = $("workers"); workers.textContent = "";
  // Master local time, no zone: compare heartbeats with each other, not with this clock.
  const names = Object.keys(w.heartbeats);
  const seconds = n => Date.parse(w.heartbeats[n].replace(" ", "T")) / 1000;
  const newest = Math.max(...names.map(seconds));
  const states = w.workers || {};
  names.forEach(n => {
    // up, lost (its batches went back to waiting; tried again at next_try) or gone
    // (left the inventory). Only an up worker that stays silent is worth a flag.
    const s = states[n] || {}, up = s.state === "up";
    const state = s.state === "lost" && s.next_try ? "lost, next try " + s.next_try.slice(11)
      : s.state || "";
    const behind = newest - seconds(n);
    const note = up && behind > 60 ? duration(behind) + " behind" : "";
    row(workers, [[n], [w.heartbeats[n], "t"], [state, "s " + (up ? "" : s.state === "lost"
      ? "late" : "none")], [note, "late"]]);
  });
  if (!names.length) row(workers, [["no worker heard from yet", "none"]]);
  const logs = $("logs"); logs.textContent = "";
  const lines = l.errors.slice(-10).reverse().map(m => ["error", m])
    .concat(l.warnings.slice(-10).reverse().map(m => ["warning", m]));
  lines.forEach(([level, message]) => {
    const div = document.createElement("div"), span = document.createElement("span");
    div.className = level; span.className = "lvl"; span.textContent = level;
    div.append(span, message); logs.append(div);
  });
  if (!lines.length) logs.innerHTML = '<span class="none">none</span>';
}
function sample(t) {
  const now = performance.now();
  seen.push([now, t.bytes_processed]);
  if (seen.length > SPAN + 1) seen.shift();
  const [then, before] = seen[0];
  const rate = (t.bytes_processed - before) / MIB / ((now - then) / 1000);
  if (now > then) samples.push([now, Math.max(0, rate)]);   // a requeue can lower the bytes
  while (samples.length > KEEP) samples.shift();
  if (samples.length) $("mib-now").textContent = num(samples[samples.length - 1][1], 2);
}
function draw(average) {
  const c = $("chart"), ratio = window.devicePixelRatio || 1;
  c.width = c.clientWidth * ratio; c.height = c.clientHeight * ratio;
  const g = c.getContext("2d"), W = c.clientWidth, H = c.clientHeight;
  const left = 60, right = W - 8, top = 8, bottom = H - 22;
  g.scale(ratio, ratio); g.font = "12px DejaVu Sans, sans-serif"; g.fillStyle = "#5a6772";
  const max = Math.max(average, ...samples.map(s => s[1]), 0.01) * 1.15;
  const y = v => bottom - (bottom - top) * v / max;
  const x = ms => right - (right - left) * (performance.now() - ms) / (KEEP * PERIOD);
  g.strokeStyle = "#e3e8ec";
  for (let i = 0; i <= 4; i++) {
    const v = max * i / 4;
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(right, y(v)); g.stroke();
    g.fillText(num(v, max < 10 ? 2 : 0), 4, y(v) + 4);
  }
  g.fillText("10 min ago", left, H - 4); g.fillText("now", right - 24, H - 4);
  g.strokeStyle = "#1565c0"; g.lineWidth = 1.5; g.setLineDash([6, 4]);
  g.beginPath(); g.moveTo(left, y(average)); g.lineTo(right, y(average)); g.stroke();
  g.setLineDash([]); g.lineWidth = 2.5; g.beginPath();
  samples.forEach(([ms, v], i) => i ? g.lineTo(x(ms), y(v)) : g.moveTo(x(ms), y(v)));
  g.stroke();
  if (samples.length < 2) g.fillText("collecting samples\u2026", left + 10, top + 16);
}
async function refresh() {
  try {
    const [p, t, w, l] = await Promise.all(   // relative URLs: the page may sit under a prefix
      ["progress", "throughput", "workers", "logs?limit=10"].map(get));
    show(p, t, w, l); sample(t); draw(t.bytes_per_sec / MIB);
    $("state").className = "";
    $("state").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("state").className = "bad"; $("state").textContent = e.message;
  }
  setTimeout(refresh, PERIOD);
}
refresh();
</script>
</body></html>
"""
