"""GET /: a live dashboard, one self-contained HTML page (inline CSS and JS, nothing
fetched from outside: a master often has no internet).

The page holds no ledger data: its script polls the JSON routes every 2 s. So the
page itself is public, like /healthz, and every number it shows still needs the
token when the server has one. Open it as `http://HOST:8000/#token=T`: a fragment
never leaves the browser (no server, proxy or Referer ever sees it), the script
keeps it in sessionStorage for the tab and removes it from the address bar.

Progress, the rate now, the ETA and whether a run goes on come from /run (the one
estimate of ledger/estimate.py, as `fleetsync status` prints it): the bar is bytes
done, in flight and failed. The rate chart is drawn from successive samples of the
bytes moved (done and in flight) kept by the page (the last 10 minutes, each rate
over the last 5 polls): it starts empty when the page opens, beside the run's
average. Times are the master's (24-hour); a worker's silence is measured against
the master's clock (/run's `now`), never the browser's.
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
#state, #run { color: #5a6772; }
#run.live { color: #2e7d32; font-weight: bold; }
#state.bad { color: #b3261e; font-weight: bold; }
#summary { font-size: 40px; font-weight: bold; margin: 10px 0 8px; }
#summary .of { color: #5a6772; font-weight: normal; }
#summary .fail { color: #b3261e; }
td.late { color: #b3261e; white-space: nowrap; }
.bar { position: relative; display: flex; height: 22px; background: #dde3e8;
       border-radius: 4px; overflow: hidden; }
#bar-done { background: #2e7d32; } #bar-flight { background: #81c784; }
#bar-failed { background: #c62828; }
.barrow { display: flex; align-items: center; gap: 12px; }
.barrow .bar { flex: 1; }
/* beside the bar, on the page's background: over the bar it was dark on green */
#percent { font-size: 18px; font-weight: bold; min-width: 5.5em; text-align: right; }
.grid { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; margin: 16px 0; }
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
#logs .when { color: #5a6772; margin-right: 8px; white-space: nowrap; }
#logs div.old { color: #5a6772; }
.lvl { display: inline-block; width: 64px; font-size: 12px; font-weight: bold; }
.error .lvl { color: #b3261e; } .warning .lvl { color: #9a6700; }
.none { color: #5a6772; }
</style></head>
<body>
<header><h1>fleetsync</h1><span id="run"></span><span id="state">loading&hellip;</span>
</header>
<div id="summary"><span id="completed">-</span> <span class="of">of</span>
 <span id="total">-</span> <span class="of">batches done,</span>
 <span id="failed">-</span> <span class="of">failed</span></div>
<div class="barrow"><div class="bar"><div id="bar-done"></div><div id="bar-flight"></div>
 <div id="bar-failed"></div></div><span id="percent"></span></div>
<div class="grid">
 <div class="card"><b id="files">-</b><span>files copied</span></div>
 <div class="card"><b id="gib">-</b><span>GiB copied</span></div>
 <div class="card"><b id="gib-flight">-</b><span>GiB in flight (estimated)</span></div>
 <div class="card"><b id="pending">-</b><span>batches pending or running</span></div>
 <div class="card"><b id="elapsed">-</b><span>elapsed</span></div>
 <div class="card"><b id="files-rate">-</b><span>files/s (run average)</span></div>
 <div class="card"><b id="mib-rate">-</b><span>MiB/s (run average)</span></div>
 <div class="card"><b id="batch-rate">-</b><span>batches/s (run average)</span></div>
 <div class="card"><b id="mib-now-rate">-</b><span>MiB/s now (estimated)</span></div>
 <div class="card"><b id="eta">-</b><span>ETA of the batches known so far</span></div>
</div>
<div class="box"><h2>MiB/s over 10 s, last 10 minutes: last <span id="mib-now">-</span>
 (dashed: run average)</h2>
 <canvas id="chart"></canvas></div>
<div class="cols">
 <div class="box"><h2>Workers, last heartbeat, state</h2><table id="workers"></table></div>
 <div class="box"><h2>Latest errors and warnings, newest first (master time)</h2>
  <div id="logs"></div></div>
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
const GIB = MIB * 1024, SILENT = 60;   // an up worker silent this long is flagged
// Master local times ("YYYY-MM-DD HH:MM:SS", no zone) compared with each other only.
const seconds = text => Date.parse(text.replace(" ", "T")) / 1000;
const clock = d => [d.getHours(), d.getMinutes(), d.getSeconds()]
  .map(n => String(n).padStart(2, "0")).join(":");            // 24-hour, like the heartbeats
const NOT_RUNNING = {
  stopped: r => "not running (stopped, last heard " + r.last_heard + ")",
  crashed: r => "not running (crashed, last heard " + r.last_heard + ")",
  finished: r => "finished",
  waiting: r => "not running (" + num(r.batches_waiting) +
    (r.batches_waiting === 1 ? " batch" : " batches") + " waiting)",
};
function show(p, t, r, w, l) {
  const running = r.state === "running";
  $("run").textContent = running ? "running" : NOT_RUNNING[r.state](r);
  $("run").className = running ? "live" : "";
  $("completed").textContent = num(p.completed); $("total").textContent = num(p.total);
  $("failed").textContent = num(p.failed); $("failed").className = p.failed ? "fail" : "";
  $("pending").textContent = num(p.pending);
  // The bar is bytes (batches when there are none), from the same estimate as the ETA.
  const share = (bytes, batches) => (r.bytes_total ? 100 * bytes / r.bytes_total
    : r.batches_total ? 100 * batches / r.batches_total : 0) + "%";
  $("bar-done").style.width = share(r.bytes_done, r.batches_done);
  $("bar-flight").style.width = share(r.bytes_in_flight, 0);
  $("bar-failed").style.width = share(r.bytes_failed, r.batches_failed);
  $("percent").textContent = r.batches_total ? r.percent.toFixed(1) + " %" : "";
  $("files").textContent = num(t.files_processed);
  $("gib").textContent = num(t.bytes_processed / GIB, 2);
  $("gib-flight").textContent = num(r.bytes_in_flight / GIB, 2);
  $("elapsed").textContent = duration(t.elapsed_sec);
  $("files-rate").textContent = num(t.files_per_sec, 2);
  $("mib-rate").textContent = num(t.bytes_per_sec / MIB, 2);
  $("batch-rate").textContent = num(t.batches_per_sec, 2);
  $("mib-now-rate").textContent = r.bytes_per_sec === null ? "-" : num(r.bytes_per_sec / MIB, 2);
  $("eta").textContent = r.state === "finished" ? "done" : !running ? "not running"
    : r.eta_sec === null ? "?" : r.eta_sec < 1 ? "finishing"
    : duration(r.eta_sec);
  const workers = $("workers"); workers.textContent = "";
  const names = Object.keys(w.heartbeats), now = seconds(r.now);
  const states = w.workers || {};
  names.forEach(n => {
    // up, lost (its batches went back to waiting; tried again at next_try) or gone
    // (left the inventory); with no run going on, an up worker is idle. Only an up
    // worker of a live run that stays silent is worth a flag.
    const s = states[n] || {}, up = s.state === "up";
    const state = s.state === "lost" && s.next_try ? "lost, next try " + s.next_try.slice(11)
      : up && !running ? "idle" : s.state || "";
    const silent = now - seconds(w.heartbeats[n]);
    const note = up && running && silent > SILENT ? "silent " + duration(silent) : "";
    row(workers, [[n], [w.heartbeats[n], "t"], [state, "s " + (up ? "" : s.state === "lost"
      ? "late" : "none")], [note, "late"]]);
  });
  if (!names.length) row(workers, [["no worker heard from yet", "none"]]);
  const logs = $("logs"); logs.textContent = "";
  (l.lines || []).slice().reverse().forEach(x => {
    const div = document.createElement("div"), span = document.createElement("span");
    const when = document.createElement("span");
    div.className = x.level + (now - seconds(x.time) > 3600 ? " old" : "");   // an hour old
    span.className = "lvl"; span.textContent = x.level;
    when.className = "when"; when.textContent = x.time;
    div.append(span, when, x.message); logs.append(div);
  });
  if (!(l.lines || []).length) logs.innerHTML = '<span class="none">none</span>';
}
function sample(r) {
  const now = performance.now(), moved = r.bytes_done + r.bytes_in_flight;
  seen.push([now, moved]);
  if (seen.length > SPAN + 1) seen.shift();
  const [then, before] = seen[0];
  const rate = (moved - before) / MIB / ((now - then) / 1000);
  if (now > then) samples.push([now, Math.max(0, rate)]);   // a requeue can lower the bytes
  while (samples.length > KEEP) samples.shift();
  if (samples.length) $("mib-now").textContent = num(samples[samples.length - 1][1], 2);
}
function ticks(top) {
  // Five labels from 0 to a round maximum at least top (0.1 MiB/s when idle), with as
  // many decimals as they need to differ (an idle chart once read 0.01, 0.01, 0.01).
  const raw = Math.max(top, 0.1) / 4, p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * p).find(x => x >= raw * (1 - 1e-9));
  const d = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));   // the step's own decimals
  return [0, 1, 2, 3, 4].map(i => [step * i, num(step * i, d)]);
}
function draw(average) {
  const c = $("chart"), ratio = window.devicePixelRatio || 1;
  c.width = c.clientWidth * ratio; c.height = c.clientHeight * ratio;
  const g = c.getContext("2d"), W = c.clientWidth, H = c.clientHeight;
  const left = 60, right = W - 8, top = 8, bottom = H - 22;
  g.scale(ratio, ratio); g.font = "12px DejaVu Sans, sans-serif"; g.fillStyle = "#5a6772";
  const marks = ticks(Math.max(average, ...samples.map(s => s[1])) * 1.15);
  const max = marks[4][0];
  c.dataset.ticks = marks.map(m => m[1]).join(" ");
  const y = v => bottom - (bottom - top) * v / max;
  const x = ms => right - (right - left) * (performance.now() - ms) / (KEEP * PERIOD);
  g.strokeStyle = "#e3e8ec";
  marks.forEach(([v, label]) => {
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(right, y(v)); g.stroke();
    g.fillText(label, 4, y(v) + 4);
  });
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
    const [p, t, r, w, l] = await Promise.all(   // relative URLs: the page may sit under a prefix
      ["progress", "throughput", "run", "workers", "logs?limit=10"].map(get));
    show(p, t, r, w, l); sample(r); draw(t.bytes_per_sec / MIB);
    $("state").className = "";
    $("state").textContent = "updated " + clock(new Date());
  } catch (e) {
    $("state").className = "bad"; $("state").textContent = e.message;
  }
  setTimeout(refresh, PERIOD);
}
refresh();
</script>
</body></html>
"""
