"""`fleetsync report`: what became of every entry of SRC, as CSV, JSON or HTML (issue 23).

The rows come from ledger/report_rows.py, the header and the plots' numbers from
ledger/report_summary.py, all in one read transaction: a report of a ledger that a
run still writes is one moment of it, and says so (stderr, and the JSON and HTML
headers). Rows are written as they are read: memory holds one row, the counts, and
the HTML's bounded table (controller/report_html.py), whatever the size of the tree.

A file given with -o is written beside itself and renamed into place once whole (a
failed report leaves no half file), with FILE.sha256 in `sha256sum -c` form. `--csv
FILE` beside an HTML report writes the CSV in the same pass, and the HTML shows the
CSV's SHA-256: a signed-off HTML names the exact CSV it summarises.

Paths and times: controller/report_fields.py.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from fleetsync.ledger import db, lock, migration, report_rows, report_summary

from . import report_html
from .defaults import REPORT_TABLE_ROWS
from .errors import UsageError
from .report_fields import COLUMNS, Tally, fields, utc

FORMATS = ("csv", "json", "html")


class _Sink:
    """A binary stream that hashes what it writes (SHA-256), for text writers: text
    gathered up to about a MiB, then encoded, hashed and written at once (a row at a
    time cost as much as the rest of the row's formatting)."""

    LIMIT = 1 << 20

    def __init__(self, stream):
        self.stream, self.sha256 = stream, hashlib.sha256()
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > self.LIMIT:
            self.flush()

    def flush(self) -> None:
        data = "".join(self.parts).encode("utf-8")
        self.parts, self.size = [], 0
        self.sha256.update(data)
        self.stream.write(data)

    def hexdigest(self) -> str:
        self.flush()
        return self.sha256.hexdigest()


def _check(args) -> str:
    """The ledger, and the files to write: one line (UsageError) before anything is
    opened for writing."""
    if args.csv and args.format != "html":
        raise UsageError("--csv FILE goes with --format html (the HTML then shows the "
                         "CSV's SHA-256); for a CSV alone give --format csv -o FILE")
    for option, path in (("-o", args.output), ("--csv", args.csv)):
        if path is None:
            continue
        if os.path.isdir(path):
            raise UsageError(f"{option} {path} is a directory: give a file")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"{option} {path}: its directory does not exist")
    if args.output and args.csv and os.path.abspath(args.output) == os.path.abspath(args.csv):
        raise UsageError("-o and --csv name the same file")
    if not os.path.exists(args.ledger):
        raise UsageError(f"no ledger at {args.ledger}")
    db.check(args.ledger, write=False)
    if migration.opening(args.ledger) is None:
        raise UsageError(f"{args.ledger} holds no migration yet: nothing to report")
    return os.path.abspath(args.ledger)


@contextlib.contextmanager
def _target(path: str | None) -> Iterator[_Sink]:
    """A sink on stdout, or on a new file beside `path` renamed into place (with its
    sidecar PATH.sha256) only when the report is whole."""
    if path is None:
        sink = _Sink(sys.stdout.buffer)
        yield sink
        sink.flush()
        sys.stdout.buffer.flush()
        return
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, part = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot write beside {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            yield sink
            digest = sink.hexdigest()        # the last text written, then its hash
        os.chmod(part, 0o644)
        os.replace(part, path)
        with open(path + ".sha256", "w", encoding="utf-8") as f:
            f.write(f"{digest}  {name}\n")
    except OSError as e:          # a full disk, a quota: one line, no half report
        _remove(part)
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        _remove(part)
        raise


def _remove(part: str) -> None:
    """The unfinished file, if it is still there (renamed: the report is whole)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)


def run(args) -> int:
    """`fleetsync report`: write the report; 0 once written."""
    ledger_path = _check(args)
    db.check_integrity(ledger_path)           # a report rests on every row: refuse a damaged one
    held = lock.held(ledger_path)
    with db.connect(ledger_path, readonly=True) as conn, conn.begin():
        header = {"ledger": ledger_path, "generated_at": utc(time.time()),
                  **report_summary.migration_header(conn, held),
                  "unmapped": report_rows.unmapped(conn)}
        if header["live"]:
            print(f"fleetsync: warning: a run is writing {ledger_path}: this report is of "
                  f"one moment of it ({header['generated_at']}), not of the migration's end",
                  file=sys.stderr)
        rows = report_rows.entries(conn)
        if args.format == "csv":
            with _target(args.output) as out:
                write_csv(out, rows, header["checksum_choice"], Tally())
        elif args.format == "json":
            with _target(args.output) as out:
                write_json(out, rows, header)
        else:
            _html(conn, args, rows, header)
    return 0


def _html(conn, args, rows, header: dict) -> None:
    """The HTML, and the CSV beside it (--csv) written in the same pass of the rows."""
    tally = Tally(REPORT_TABLE_ROWS)
    with contextlib.ExitStack() as stack:
        csv_sha = None
        if args.csv:
            sink = stack.enter_context(_target(args.csv))
            write_csv(sink, rows, header["checksum_choice"], tally)
            csv_sha = (sink.hexdigest(), os.path.basename(args.csv))
        else:
            for e in rows:
                tally.add(e, fields(e, header["checksum_choice"]))
        page = report_html.page(header, tally, report_summary.hosts(conn),
                                report_summary.throughput(conn), csv_sha)
        with _target(args.output) as out:
            out.write(page)


def write_csv(out: _Sink, rows, algorithm: str, tally: Tally) -> None:
    """A header line, then a line per row (no field holds a newline: escape_path)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in rows:
        row = fields(e, algorithm)
        tally.add(e, row)
        writer.writerow([("" if row[c] is None else row[c]) for c in COLUMNS])


def write_json(out: _Sink, rows, header: dict) -> None:
    """One JSON object, written as it goes: {"header", "rows": [a row a line], "summary"}
    (the summary last: its counts are those of the rows above it)."""
    tally = Tally()
    out.write('{"header": ' + json.dumps({**header, "columns": list(COLUMNS)}) + ',\n"rows": [')
    first = True
    for e in rows:
        row = fields(e, header["checksum_choice"])
        tally.add(e, row)
        out.write(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False))
        first = False
    out.write('\n],\n"summary": ' + json.dumps(tally.summary()) + "}\n")
