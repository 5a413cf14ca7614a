"""`fleetsync report` (issue 23, item 3) on ledgers made by real runs: a row per entry
of SRC, outcomes from the ledger's own account, lossless paths, the sidecar checked by
`sha256sum -c`, an HTML page that needs no network, a live ledger said so. Checksums
and verdicts are set with SQL on a real run's ledger: the report's boundary (custody
records them)."""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess

from fleetsync.ledger.lock import LedgerLock

from .support import error_line, eventually, fleetsync, ok, popen, query, run_tree

# Names a tree can hold that break naive reports: not UTF-8, a newline, a tab, a
# backslash that looks like an escape, CSV's comma and quote, a leading dash.
HOSTILE = [b"\xff\xfe-not-utf8", b"new\nline", b"tab\there", b"back\\x41slash",
           b"comma,and \"quote\"", b"-leading-dash", b"caf\xc3\xa9", b"sp ace",
           b"cr\rname", b"del\x7f"]


def report(ledger, *extra: str) -> subprocess.CompletedProcess:
    return fleetsync("report", "--ledger", str(ledger), *extra)


def rows_of(text: str) -> list[dict]:
    """The CSV parsed back, every path turned back into its bytes."""
    rows = list(csv.DictReader(io.StringIO(text)))
    for r in rows:
        r["bytes"] = codecs.escape_decode(r["path"].encode("utf-8"))[0]
    return rows


def hostile_tree(src: bytes) -> set[bytes]:
    """Odd names, hard links, symlinks, empty directories; every entry's path relative
    to src, as the walk records them (src itself is '.')."""
    os.makedirs(src + b"/dir/deeper")
    os.makedirs(src + b"/empty/nested-empty")
    for i, name in enumerate(HOSTILE):
        with open(src + b"/dir/" + name, "wb") as f:
            f.write(b"content %d" % i)
    with open(src + b"/dir/deeper/target", "wb") as f:
        f.write(b"linked")
    os.link(src + b"/dir/deeper/target", src + b"/hard-1")
    os.link(src + b"/dir/deeper/target", src + b"/dir/hard\n2")
    os.symlink(b"dir/deeper/target", src + b"/sym")
    os.symlink(b"nowhere", src + b"/dangling\xff")
    found = {b"."}
    for d, dirs, files in os.walk(src):
        for n in dirs + files:
            found.add(os.path.relpath(os.path.join(d, n), src))
    return found


def test_every_entry_of_a_hostile_tree_has_one_row_that_round_trips(tmp_path):
    src = os.fsencode(tmp_path / "src")
    entries = hostile_tree(src)
    ok(run_tree(tmp_path))
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    r = report(tmp_path / "l.db", "-o", str(out))
    assert r.returncode == 0 and r.stdout == b"" and b"a run is writing" not in r.stderr
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(entries) + 1       # a newline in a name stays escaped
    rows = rows_of(text)
    assert len(rows) == len(entries)                        # `find SRC | wc -l`
    assert {r["bytes"] for r in rows} == entries
    assert [r["bytes"] for r in rows] == sorted(r["bytes"] for r in rows)
    assert {r["outcome"] for r in rows} == {"arrived"}
    by_path = {r["bytes"]: r for r in rows}
    assert by_path[b"sym"]["type"] == "symlink" and by_path[b"empty/nested-empty"]["type"] == "dir"
    assert by_path[b"dir/back\\x41slash"]["path"] == "dir/back\\\\x41slash"
    assert by_path[b"dir/\xff\xfe-not-utf8"]["path"] == "dir/\\xff\\xfe-not-utf8"
    target = by_path[b"dir/deeper/target"]
    assert target["size"] == "6" and int(target["mtime"]) == int(
        os.lstat(src + b"/dir/deeper/target").st_mtime)
    assert all(r["worker"] and r["task_id"] and r["attempt"] and r["copied_at"].endswith("Z")
               for r in rows)
    # The sidecar, as an auditor checks it later, and a changed byte is caught.
    assert (tmp_path / "out" / "r.csv.sha256").read_text().endswith("  r.csv\n")
    check = ["sha256sum", "-c", "r.csv.sha256"]
    assert subprocess.run(check, cwd=tmp_path / "out", capture_output=True).returncode == 0
    out.write_text(text.replace("arrived", "arrivee", 1), encoding="utf-8")
    assert subprocess.run(check, cwd=tmp_path / "out", capture_output=True).returncode == 1
    # printf '%b' gives a name's bytes back, as the README says.
    shown = by_path[b"dir/new\nline"]["path"]
    assert subprocess.run(["bash", "-c", 'printf "%b" "$0"', shown],
                          capture_output=True).stdout == b"dir/new\nline"


def failing_migration(tmp_path) -> str:
    """A scan, then a run: `gone` vanished after the walk, `x` cannot arrive (DEST holds
    a directory there), `junk.tmp` is excluded, `y` and `z` arrive; a batch per entry."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", str(tmp_path / "l.db")
    src.mkdir()
    (dest / "x" / "inner").mkdir(parents=True)
    for name in ("x", "y", "z", "gone", "junk.tmp"):
        (src / name).write_text(f"{name} bytes\n")
    ok(fleetsync("scan", "--src", str(src), "--ledger", ledger, "--exclude", "*.tmp",
                 "--batch-files", "1"))
    (src / "gone").unlink()
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", ledger,
                  "--no-api", "--max-retries", "0")
    assert r.returncode == 1, r.stderr.decode()
    return ledger


def test_outcomes_come_from_the_ledger_and_checksums_are_algo_hex(tmp_path):
    ledger = failing_migration(tmp_path)
    digest = hashlib.md5((tmp_path / "src" / "y").read_bytes()).digest()
    con = sqlite3.connect(ledger)
    with con:
        con.execute("UPDATE migration SET options = json_set(options, '$.checksum_choice', 'md5')")
        con.execute("UPDATE batch_files SET checksum = ?, verified = 0 WHERE path = CAST('y' "
                    "AS BLOB)", (digest,))
        con.execute("UPDATE batch_files SET checksum = ?, verified = 2 WHERE path = CAST('z' "
                    "AS BLOB)", (b"\x01" * 16,))
    con.close()
    r = report(ledger)
    assert r.returncode == 0, r.stderr.decode()
    rows = {row["path"]: row for row in rows_of(r.stdout.decode())}
    assert set(rows) == {".", "x", "y", "z", "gone", "junk.tmp"}
    assert rows["y"]["outcome"] == "arrived" and rows["z"]["outcome"] == "arrived"
    assert rows["gone"]["outcome"] == "vanished" and rows["gone"]["copied_at"] == ""
    assert rows["junk.tmp"]["outcome"] == "excluded by rule: - *.tmp"
    # An excluded entry is described as one that was copied: the walk keeps its lstat.
    junk = os.lstat(tmp_path / "src" / "junk.tmp")
    assert rows["y"]["type"] and (rows["junk.tmp"]["type"], rows["junk.tmp"]["size"],
                                  rows["junk.tmp"]["mtime"]) == (
        rows["y"]["type"], str(junk.st_size), str(int(junk.st_mtime)))
    assert rows["x"]["outcome"].startswith("not arrived: ") and "in the way" in rows["x"]["outcome"]
    assert rows["x"]["copied_at"] == "" and rows["x"]["worker"] and rows["y"]["copied_at"]
    # The one account: every path missing_entries names is reported as not there.
    missing = {bytes(p).decode() for (p,) in query(ledger, "SELECT path FROM missing_entries")}
    assert missing == {p for p, r in rows.items() if r["outcome"] in ("vanished",)
                       or r["outcome"].startswith("not arrived")}
    assert rows["y"]["checksum"] == "md5:" + digest.hex()
    assert subprocess.run(["md5sum", str(tmp_path / "src" / "y")], capture_output=True,
                          text=True).stdout.split()[0] == rows["y"]["checksum"][4:]
    assert (rows["y"]["verified"], rows["z"]["verified"], rows["x"]["verified"]) == (
        "yes", "missing", "not checked")
    assert rows["x"]["checksum"] == ""
    # JSON: the same rows, a header, a summary counting them.
    doc = json.loads(report(ledger, "--format", "json").stdout)
    assert [r["path"] for r in doc["rows"]] == sorted(rows)
    assert doc["header"]["live"] is False and doc["header"]["checksum_choice"] == "md5"
    assert doc["summary"]["outcomes"]["not arrived"]["entries"] == 1
    assert doc["summary"]["outcomes"]["excluded by rule"]["entries"] == 1
    assert doc["summary"]["entries"] == len(rows)


def test_html_is_self_contained_and_names_its_csv(tmp_path):
    ledger = failing_migration(tmp_path)
    page, table = tmp_path / "r.html", tmp_path / "r.csv"
    r = report(ledger, "--format", "html", "-o", str(page), "--csv", str(table))
    assert r.returncode == 0, r.stderr.decode()
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "src=" not in text
    assert text.count("<svg") == 2
    digest = hashlib.sha256(table.read_bytes()).hexdigest()
    assert f"{digest}  r.csv" in text
    assert (tmp_path / "r.csv.sha256").read_text() == f"{digest}  r.csv\n"
    failures = text[text.index("<h2>Failures"):text.index("<h2>Entries")]
    assert "in the way" in failures and "gone" in failures and ">y<" not in failures
    assert "excluded by rule: - *.tmp" in text and "A run was writing" not in text


def test_a_path_copied_again_is_reported_from_its_latest_batch(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}").write_text(str(i))
    ok(run_tree(tmp_path))
    (src / "f2").write_text("changed, longer")
    ok(run_tree(tmp_path, "--rescan"))
    batches = [t for (t,) in query(tmp_path / "l.db", "SELECT task_id FROM batch_files "
                                   "WHERE path = CAST('f2' AS BLOB) ORDER BY task_id")]
    assert len(batches) == 2
    rows = {r["path"]: r for r in rows_of(report(tmp_path / "l.db").stdout.decode())}
    assert len(rows) == 5                                   # one row per path
    assert rows["f2"]["task_id"] == str(batches[-1]) and rows["f2"]["size"] == "15"


def succeeded(ledger: str) -> int:
    """Batches succeeded so far (0 while the run has not made its tables yet)."""
    try:
        return query(ledger, "SELECT batches FROM batch_counts WHERE state = 'succeeded'")[0][0]
    except (sqlite3.OperationalError, IndexError):
        return 0


def test_a_report_during_a_real_run_says_so(tmp_path):
    """A run copying at 20 KiB/s for the whole fleet (40 s at least) is reported while
    it goes on: said on stderr and in the header; every row is of that moment."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}").write_bytes(b"x" * 20_000)
    ledger = str(tmp_path / "l.db")
    p = popen("run", "--src", str(src), "--dest", str(tmp_path / "dest"), "--ledger", ledger,
              "--no-api", "--batch-files", "1", "--bwlimit", "20KiB")
    try:
        eventually(lambda: succeeded(ledger) > 0, "a batch succeeded", 240, p)
        r = report(ledger, "--format", "json")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(240)
    assert r.returncode == 0, r.stderr.decode()
    assert b"warning: a run is writing" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["header"]["live"] is True and doc["header"]["run_state"] == "running"
    assert len(doc["rows"]) == 41 and doc["summary"]["outcomes"]["arrived"]["entries"] >= 1
    assert all(row["outcome"] in ("arrived", "not arrived: waiting to be copied (its batch is "
                                  "pending)", "not arrived: being copied (its batch is running)")
               for row in doc["rows"]), doc["rows"]


def test_a_ledger_a_run_holds_is_reported_as_one_moment(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    ok(run_tree(tmp_path))
    with LedgerLock(str(tmp_path / "l.db")):          # what a run (or a scan) holds
        r = report(tmp_path / "l.db", "--format", "json")
        page = report(tmp_path / "l.db", "--format", "html").stdout.decode()
    assert r.returncode == 0
    assert b"warning: a run is writing" in r.stderr and b"one moment" in r.stderr
    assert json.loads(r.stdout)["header"]["live"] is True
    assert "A run was writing this ledger" in page


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    ok(run_tree(tmp_path))
    ledger = str(tmp_path / "l.db")
    cases = [
        (("--ledger", str(tmp_path / "none.db")), "no ledger at"),
        (("--ledger", ledger, "-o", str(tmp_path / "no" / "r.csv")), "directory does not exist"),
        (("--ledger", ledger, "-o", str(tmp_path)), "is a directory"),
        (("--ledger", ledger, "--csv", str(tmp_path / "r.csv")), "--csv FILE goes with"),
        (("--ledger", ledger, "--format", "html", "-o", str(tmp_path / "r"), "--csv",
          str(tmp_path / "r")), "same file"),
        (("--ledger", str(src / "a")), "not an SQLite database"),
    ]
    before = sorted(os.listdir(tmp_path))
    for args, words in cases:
        assert words in error_line(fleetsync("report", *args)), args
    assert sorted(os.listdir(tmp_path)) == before
