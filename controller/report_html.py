"""The HTML of `fleetsync report --format html`: one self-contained file, readable
with no network (no script, no stylesheet, font or image fetched: the plots are
inline SVG, the style inline CSS).

What it shows: whether a run still wrote the ledger, the summary (entries, bytes,
outcomes, duration, hosts, options, SRC and DEST, rules, the CSV's SHA-256 when
written together), throughput over time and per worker, the failures (the first
REPORT_FAILURES), then the first REPORT_TABLE_ROWS rows: a browser handles a table
of that size, and the CSV holds every row (the page says how many it leaves out).
Every text from the ledger goes through html.escape.
"""
from __future__ import annotations

import html
import json

from fleetsync.ledger import sizes
from fleetsync.ledger.states import ReportOutcome

from .report_fields import COLUMNS, Tally, utc

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right}
.live{background:#fff3cd;border:1px solid #e0b000;padding:.6em;font-weight:bold}
code,pre{font-family:ui-monospace,monospace;font-size:12px}svg{background:#fafafa}
.bad{color:#a00}"""
_W, _H, _PAD = 640, 200, 40        # plot size and left/bottom margin, in px


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(head: list[str] | None, rows: list[list], numeric: set[int] = frozenset()) -> str:
    """A table; head None: rows of (name, value), no header row."""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head or [])
    cells = f"<tr>{cells}</tr>" if cells else ""
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if i in numeric else ""}>{_e(v)}</td>' for i, v in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table>{cells}{body}</table>"


def _bars(values: list[float], labels: list[str], unit: str, title: str) -> str:
    """A bar chart as inline SVG: one bar per value, its label under every few bars."""
    top = max(values, default=0) or 1
    width = (_W - _PAD) / max(len(values), 1)
    every = max(1, len(values) // 8)
    parts = [f'<svg width="{_W}" height="{_H + 20}" role="img" aria-label="{_e(title)}">',
             f'<text x="{_PAD}" y="12" font-size="11">{_e(title)} (max {top:,.2f} {unit})</text>']
    for i, v in enumerate(values):
        h = (_H - 30) * v / top
        x = _PAD + i * width
        parts.append(f'<rect x="{x:.1f}" y="{_H - h:.1f}" width="{max(width - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#4a7ebb"><title>{_e(labels[i])}: {v:,.2f} '
                     f'{unit}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{_H + 14}" font-size="10">{_e(labels[i])}</text>')
    parts.append(f'<line x1="{_PAD}" y1="{_H}" x2="{_W}" y2="{_H}" stroke="#888"/></svg>')
    return "".join(parts)


def _over_time(throughput: dict) -> str:
    if not throughput["bytes"]:
        return "<p>No batch has succeeded yet: nothing to plot.</p>"
    width = throughput["width_sec"]
    rates = [b / width / 2 ** 20 for b in throughput["bytes"]]
    labels = [utc(throughput["start_ts"] + i * width)[11:19] for i in range(len(rates))]
    return (_bars(rates, labels, "MiB/s", f"bytes of succeeded batches per {width:,.3g} s, "
                  "by the time their copy ended (UTC)"))


def _rate(host: dict) -> float:
    """MiB/s from bytes and seconds, not the view's rate rounded to 0.1 (0.0 for a
    small tree, or a slow one)."""
    return (host["bytes"] or 0) / 2 ** 20 / host["wall_seconds"] if host["wall_seconds"] else 0.0


def _per_worker(hosts: list[dict]) -> str:
    done = [h for h in hosts if h["batches"]]
    if not done:
        return "<p>No worker has finished a batch yet.</p>"
    return _bars([_rate(h) for h in done], [h["host"] for h in done],
                 "MiB/s", "per worker: wall-clock rate of its succeeded batches")


def _summary(header: dict, tally: Tally, csv_sha) -> str:
    total_bytes = sum(o["bytes"] for o in tally.outcomes.values())
    rows = [["SRC", header.get("src")], ["DEST", header.get("dest")],
            ["ledger", header["ledger"]], ["migration", header.get("migration_id")],
            ["report made", header["generated_at"]],
            ["run", header.get("run_state")],
            ["started", utc(header.get("created_ts"))],
            ["finished", utc(header.get("finished_ts")) or "not finished"],
            ["duration", f"{header.get('elapsed_sec', 0):,.1f} s (runs added up)"],
            ["entries", f"{tally.entries:,}"],
            ["bytes", f"{sizes.show(total_bytes)} ({total_bytes:,})"],
            ["checksums", header.get("checksum_choice")],
            ["rules", "; ".join(header.get("rules", [])) or "none"]]
    if header.get("unmapped"):
        rows.append(["unmapped", f"{header['unmapped']} rsync lines named no entry "
                     "(view missing_entries, path NULL)"])
    if csv_sha:
        rows.append(["CSV SHA-256", f"{csv_sha[0]}  {csv_sha[1]}"])
    outcomes = [[o.value, f"{c['entries']:,}", sizes.show(c["bytes"])]
                for o, c in tally.outcomes.items()]
    return (_table(None, rows) + "<h2>Outcomes</h2>"
            + _table(["outcome", "entries", "bytes"], outcomes, {1, 2})
            + _table(["type", "entries"], [[t, f"{n:,}"] for t, n in tally.types.items()], {1})
            + _table(["verified", "entries"], [[v, f"{n:,}"] for v, n in
                                               tally.verified.items()], {1}))


def page(header: dict, tally: Tally, hosts: list[dict], throughput: dict,
         csv_sha: tuple[str, str] | None) -> str:
    """The whole page. csv_sha: (hex, file name) of the CSV written with it."""
    live = ('<p class="live">A run was writing this ledger when the report was made: it '
            f"is of one moment ({_e(header['generated_at'])}), not of the migration's end."
            "</p>") if header.get("live") else ""
    failed = tally.outcomes[ReportOutcome.NOT_ARRIVED]["entries"] \
        + tally.outcomes[ReportOutcome.VANISHED]["entries"]
    shown = len(tally.rows)
    host_rows = [[h["host"], h["worker_id"], h["state"], h["batches"] or 0, h["files"] or 0,
                  sizes.show(h["bytes"] or 0), f"{_rate(h):,.3g}"] for h in hosts]
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>fleetsync report: {_e(header.get('src'))} to {_e(header.get('dest'))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>fleetsync report: {_e(header.get('src'))} &rarr; {_e(header.get('dest'))}</h1>",
        live, _summary(header, tally, csv_sha),
        "<h2>Hosts</h2>", _table(["host", "worker", "state", "batches", "files", "bytes",
                                  "MiB/s"], host_rows, {3, 4, 5, 6}),
        "<h2>Throughput over time</h2>", _over_time(throughput),
        "<h2>Throughput per worker</h2>", _per_worker(hosts),
        f"<h2>Failures ({failed:,}: not arrived or vanished)</h2>",
        _table(list(COLUMNS), [[r[c] for c in COLUMNS] for r in tally.failures])
        if tally.failures else "<p>None.</p>",
        f"<p>{failed - len(tally.failures):,} more in the CSV.</p>"
        if failed > len(tally.failures) else "",
        f"<h2>Entries (the first {shown:,} of {tally.entries:,}, by path)</h2>",
        "<p>The CSV report holds every row.</p>" if shown < tally.entries else "",
        _table(list(COLUMNS), [[r[c] for c in COLUMNS] for r in tally.rows]),
        "<h2>Options</h2>",
        f"<pre>{_e(json.dumps(header.get('options', {}), indent=2, sort_keys=True))}</pre>",
        "<p>Paths: UTF-8 where they are; \\xNN for a byte that is not UTF-8 and for a "
        "control character, \\\\ for a backslash (printf '%b' gives the bytes back).</p>",
        "</body></html>\n"])
