"""Custody (issue 23, items 1 and 2; ledger/custody.py): SRC's checksum of every file,
recorded while copying, and verify by file, on real rsync, Ansible and files."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess

from fleetsync.api.app import make_app
from fleetsync.controller import file_outcomes, outcome, protocol, rsync, slot
from fleetsync.controller.policy import Policy
from fleetsync.ledger import batches, custody, db, migration
from fleetsync.ledger.batches import Report
from fleetsync.ledger.entry_outcomes import EntryOutcome
from fleetsync.ledger.states import EntryClass, FileVerdict, OutcomeKind

from .support import error_line, fleetsync, make_odd_tree, ok, query
from .test_api import call
from .test_playbook import _preflight


def _run(src, dest, ledger, *more: str) -> str:
    return ok(fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                        "--no-api", *more))


def _tool_sums(tool: list[str], root: bytes, names: list[bytes]) -> dict[bytes, bytes]:
    """The digests a standard tool prints for these files (-z: NUL-ended records,
    names as they are), by name."""
    out = subprocess.run([*tool, "-z", "--", *names], cwd=root, capture_output=True,
                         check=True).stdout
    found = {}
    for record in out.split(b"\0")[:-1]:
        digest, name = record.split(b"  ", 1)
        found[name] = bytes.fromhex(digest.decode())
    return found


def _recorded(ledger) -> dict[bytes, bytes | None]:
    """Every regular file's recorded checksum (None: none)."""
    return {bytes(p): None if c is None else bytes(c) for p, c in query(
        ledger, "SELECT path, checksum FROM batch_files WHERE is_dir = 0 AND type = 0")}


def _odd_tree(tmp_path) -> bytes:
    src = os.fsencode(tmp_path / "src")
    make_odd_tree(src)
    os.link(os.path.join(src, b"exec"), os.path.join(src, b"exec-hardlink"))
    return src


def test_every_transferred_files_checksum_is_md5sum_of_src(tmp_path):
    """--checksum-choice md5: every regular file of a hostile tree (odd names, a hard
    link, a sparse file) has md5sum's digest of its SRC bytes recorded; entries that
    are not regular files have none; the ledger says md5."""
    src = _odd_tree(tmp_path)
    ledger = tmp_path / "l.db"
    _run(tmp_path / "src", tmp_path / "dest", ledger, "--checksum-choice", "md5",
         "--batch-files", "5")
    recorded = _recorded(ledger)
    assert len(recorded) >= 14 and None not in recorded.values(), recorded
    assert recorded == _tool_sums(["md5sum"], src, list(recorded))
    assert query(ledger, "SELECT count(*) FROM batch_files WHERE checksum IS NOT NULL "
                 "AND (is_dir = 1 OR type != 0)") == [(0,)]
    assert query(ledger, "SELECT json_extract(options, '$.checksum_choice') "
                 "FROM migration") == [("md5",)]
    # /batches/<id> shows them (added keys): `md5:HEX`, null where none.
    app = make_app(str(ledger))
    shown = {}
    for (task_id,) in query(ledger, "SELECT task_id FROM batches"):
        for e in call(app, f"/batches/{task_id}").json["entries"]:
            shown[bytes.fromhex(e["path_hex"])] = (e["checksum"], e["verified"])
    assert {p: c for p, (c, _) in shown.items() if c} == {
        p: "md5:" + c.hex() for p, c in recorded.items()}
    assert {v for _, v in shown.values()} == {None}


def test_files_already_at_dest_get_srcs_checksum_xxh128_as_xxhsum_says(tmp_path):
    """Files rsync did not need to send (DEST copied beforehand by plain rsync) get
    SRC's checksum all the same, and xxh128 (the default) is what `xxhsum -H2` says."""
    src = _odd_tree(tmp_path)
    dest = tmp_path / "dest"
    subprocess.run(["rsync", "-aH", f"{tmp_path / 'src'}/", f"{dest}/"], check=True)
    ledger = tmp_path / "l.db"
    _run(tmp_path / "src", dest, ledger, "--batch-files", "5")
    assert query(ledger, "SELECT sum(bytes_sent) < 100000 FROM attempts") == [(1,)]
    recorded = _recorded(ledger)
    assert None not in recorded.values(), recorded
    xxh = {}
    for name in recorded:   # xxhsum prints names as they are: one file at a time
        out = subprocess.run(["xxhsum", "-H2", "--", name], cwd=src, capture_output=True,
                             check=True).stdout
        xxh[name] = bytes.fromhex(out.split(b" ", 1)[0].decode())
    assert recorded == xxh


def test_a_byte_flipped_at_dest_with_its_mtime_put_back_is_named_by_verify(tmp_path):
    """One byte of a DEST file changed, its size and mtime (and its directory's) put
    back; another file removed; a third with no checksum recorded (as in a ledger
    copied before custody): verify names all three, in its summary and in the view
    custody_problems, with their batches' verdicts 'differs' and exit 1; every
    other file is 'same'."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "d").mkdir(parents=True)
    for i in range(9):
        (src / "d" / f"f{i}").write_bytes(os.urandom(3000 + i))
    _run(src, dest, ledger, "--batch-files", "4")
    flipped = dest / "d" / "f3"
    st, top = os.stat(flipped), os.stat(dest / "d")
    with open(flipped, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(flipped, ns=(st.st_atime_ns, st.st_mtime_ns))
    (dest / "d" / "f6").unlink()
    os.utime(dest / "d", ns=(top.st_atime_ns, top.st_mtime_ns))
    with db.connect(str(ledger)) as conn, conn.begin():
        conn.exec_driver_sql("UPDATE batch_files SET checksum = NULL WHERE path = ?",
                             (b"d/f8",))
    r = fleetsync("verify", "--ledger", str(ledger))
    out = r.stdout.decode()
    assert r.returncode == 1, out + r.stderr.decode()
    assert "3 files are not proven intact at DEST: 1 differs, 1 missing, 1 unrecorded" in out
    assert "  differs: d/f3\n" in out and "  missing: d/f6\n" in out, out
    assert "  unrecorded: d/f8\n" in out, out
    assert sorted(query(ledger, "SELECT path_text, problem FROM custody_problems")) == [
        ("d/f3", "differs"), ("d/f6", "missing"), ("d/f8", "unrecorded")]
    assert query(ledger, "SELECT count(*) FROM batch_files WHERE is_dir = 0 AND verified = ?",
                 int(FileVerdict.SAME)) == [(6,)]
    differing = {t for (t,) in query(ledger, "SELECT task_id FROM custody_problems")}
    assert {t for (t,) in query(ledger, "SELECT task_id FROM verifications "
                                "WHERE state = 'differs'")} == differing
    # The requeued batches' next copy compares checksums: DEST is whole again, every
    # file recorded, and a verify finds nothing.
    assert b"back in the queue" in fleetsync("verify", "--ledger", str(ledger),
                                             "--requeue").stdout
    _run(src, dest, ledger, "--verify")
    assert (dest / "d" / "f3").read_bytes() == (src / "d" / "f3").read_bytes()
    assert query(ledger, "SELECT count(*) FROM custody_problems") == [(0,)]
    assert query(ledger, "SELECT count(*) FROM batch_files WHERE is_dir = 0 "
                 "AND verified = ? AND checksum IS NOT NULL", int(FileVerdict.SAME)) == [(9,)]


def test_an_unknown_algorithm_is_one_line_at_once_and_a_ledger_keeps_its_own(tmp_path):
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    (src / "f").write_text("f")
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--checksum-choice", "crc32", "--inventory", "/nonexistent")
    assert "'crc32': not one fleetsync records (choose xxh128, md5, sha1)" in error_line(r)
    assert not ledger.exists() and not dest.exists()
    _run(src, dest, ledger, "--checksum-choice", "sha1")
    before = ledger.read_bytes()
    r = fleetsync("run", "--src", str(src), "--dest", str(dest), "--ledger", str(ledger),
                  "--no-api", "--checksum-choice", "md5")
    assert "this ledger records sha1 checksums" in error_line(r)
    assert ledger.read_bytes() == before
    assert len(_recorded(ledger)[b"f"]) == custody.ALGORITHMS["sha1"]
    r = fleetsync("verify", "--ledger", str(ledger), "--verify-rate", "0")
    assert "--verify-rate '0'" in error_line(r)


def test_a_worker_whose_rsync_lacks_the_algorithm_fails_its_preflight(tmp_path):
    """The preflight asks the host's real rsync for the migration's algorithm; one it
    does not know (as an rsync older than 3.2 does not know xxh128) is the reason."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    script = _preflight(tmp_path, "m", "t")
    assert "@@fleetsync worker" in subprocess.run(["/bin/sh", "-c", script],
                                                  capture_output=True, text=True).stdout
    templar = Templar(loader=DataLoader(), variables=dict(
        fleetsync_src=str(tmp_path / "src"), fleetsync_dest=str(tmp_path / "dest"),
        fleetsync_checksum_choice="xxh999"))
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "playbooks", "preflight.sh.j2")) as f:
        script = templar.template(trust_as_template(f.read()))
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True).stdout
    assert protocol.errors(out) == [f"rsync here lacks the checksum xxh999 (--checksum-choice): "
                                    f"{_rsync_version()}"], out
    assert "@@fleetsync worker" not in out


def _rsync_version() -> str:
    return subprocess.run(["rsync", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]


def test_checksums_are_kept_only_for_entries_that_arrived(tmp_path):
    """rsync prints %C before its write can still fail: an entry the attempt's
    outcome says did not arrive gets no checksum, the others do, and a hard link's
    second name takes its group's."""
    engine = db.writer(str(tmp_path / "l.db"))
    migration.open_or_create(engine, "/src", "/dest", {})
    with engine.connect() as conn:
        with conn.begin():
            batches.create(conn, [(b"a", 0, 1, 0, 1, 1), (b"b", 0, 1, 0, 1, 1),
                                  (b"b2", 0, 1, 0, 1, 1)], 3, 0, 3, 0, 0.0)
            conn.exec_driver_sql("INSERT INTO hardlinks(dev, ino, path, size, task_id) "
                                 "VALUES (1, 7, ?, 1, 1), (1, 7, ?, 1, 1)", (b"b", b"b2"))
        [claim] = batches.claim(conn, "w", 1)
        report = Report(1, claim.claim_no, "w", 23, checksums={b"a": b"A" * 16, b"b": b"B" * 16})
        report.file_outcomes = [EntryOutcome(b"a", EntryClass.PERMANENT, "write failed", 28)]
        report.rest_arrived = True
        assert batches.fail(conn, report, 0)
        with conn.begin():
            got = dict(conn.exec_driver_sql("SELECT path, checksum FROM batch_files").all())
    assert got == {b"a": None, b"b": b"B" * 16, b"b2": b"B" * 16}


def test_a_failed_batchs_look_at_dest_keeps_a_hard_link_group_whole(tmp_path):
    """A batch that failed as a whole (exit 11), its look at DEST missing one name of
    a hard link group and a file rsync named: the group's other name is missing too
    (sent alone it would arrive unlinked), each row with rsync's reason and the host;
    only the entry that arrived keeps the checksum rsync printed for it."""
    engine = db.writer(str(tmp_path / "l.db"))
    migration.open_or_create(engine, "/src", "/dest", {})
    line = 'rsync: [receiver] write failed on "/dest/c": No space left on device (28)'
    with engine.connect() as conn:
        with conn.begin():
            batches.create(conn, [(p, 0, 1, 0, 1, 1) for p in (b"a", b"b", b"b2", b"c")],
                           4, 0, 4, 0, 0.0)
            conn.exec_driver_sql("INSERT INTO hardlinks(dev, ino, path, size, task_id) "
                                 "VALUES (1, 7, ?, 1, 1), (1, 7, ?, 1, 1)", (b"b", b"b2"))
        [claim] = batches.claim(conn, "w", 1)
        out = outcome.Outcome(1, claim.claim_no, 11, errors=[line],
                              file_errors=[outcome.file_error(line)],
                              sums={p: p * 16 for p in (b"a", b"b", b"c")},
                              not_at_dest={b"b2", b"c", b"implied-dir"})
        file_outcomes.record_batch(conn, out, "w", Policy(max_retries=0), "/src", "/dest")
        with conn.begin():
            got = dict(conn.exec_driver_sql("SELECT path, checksum FROM batch_files").all())
            missing = dict(conn.exec_driver_sql("SELECT path, reason FROM missing_entries").all())
    assert got == {b"a": b"a" * 16, b"b": None, b"b2": None, b"c": None}
    where = "(host w, rsync exit 11)"
    assert missing == {
        b"b": f"not at DEST when its batch failed {where}: No space left on device (28)",
        b"b2": f"not at DEST when its batch failed {where}: No space left on device (28)",
        b"c": f"write failed on: No space left on device (28) {where}"}


def test_an_item_is_cut_so_that_its_checksum_lines_always_fit_one_result():
    """Long odd names: the item's output at its most (every name escaped, printed
    twice) stays under ITEM_OUTPUT_BYTES, so a result is never dropped."""
    name = b"\xff" * 200
    jobs = [rsync.Job(i, 1, [name + b"%d" % k for k in range(500)], ["-a"], 0,
                      sums="sha1", regular=500) for i in range(40)]
    fitted, rest = slot._fit(jobs, [1] * len(jobs))     # only the output bounds it here
    assert rest and len(fitted) + len(rest) == 40
    assert sum(rsync.output_bound(j) for j in fitted) <= rsync.ITEM_OUTPUT_BYTES
    assert rsync.output_bound(jobs[0]) > 500 * 1000 * 2


def test_checksum_lines_round_trip_through_real_rsync_and_the_cap(tmp_path):
    """A copy's %C lines, as the worker's cap keeps them, read back to SRC's names
    (odd bytes included) and digests; a blank %C (a directory) and a dry run's zeros
    are none."""
    src = tmp_path / "src"
    src.mkdir()
    names = [b"plain", b"new\nline", b"\xff-not-utf8", b"back\\#134slash"]
    for n in names:
        with open(os.path.join(os.fsencode(src), n), "wb") as f:
            f.write(n * 5)
    listing = tmp_path / "list"
    listing.write_bytes(b"".join(n + b"\0" for n in names))
    script = (f"cap() {{ {rsync._CAP} \"$1\"; }}; rsync -a --checksum-choice=md5 "
              f"'{protocol.SUM_FORMAT}' --from0 --files-from={listing} {src}/ "
              f"{tmp_path / 'dest'}/ > {tmp_path / 'out'}; cap {tmp_path / 'out'}; "
              f"echo '{protocol.SUM}{'0' * 32} plain'")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True).stdout
    sums = protocol.sums(out.decode("utf-8", "surrogateescape").splitlines())
    assert sums == _tool_sums(["md5sum"], os.fsencode(src), names)
    shutil.rmtree(tmp_path / "dest")


def test_a_verify_job_reads_dest_alone_and_names_what_is_missing(tmp_path):
    """The verify job's shell (rsync.item_command) on a real DEST: the digests of the
    files there, none for a missing one (rsync's exit 23 for a name it cannot find
    reads as 24, controller/outcome.py: a verdict is still recorded)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "here").write_bytes(b"here")
    job = rsync.Job(3, 1, [b"gone", b"here"], [], 4, OutcomeKind.VERIFY, sums="md5",
                    regular=2)
    cmd = rsync.item_command([job], "/nonexistent-src", str(dest), "m", 1)
    out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True).stdout
    from fleetsync.controller import outcome
    [found] = outcome.parse_all(out)
    assert found.kind is OutcomeKind.VERIFY and found.rsync_exit_code == 24
    assert found.sums == _tool_sums(["md5sum"], os.fsencode(dest), [b"here"])


def test_a_verify_killed_9_resumes_and_keeps_each_files_verdict(tmp_path):
    """kill -9 of a paced verify (--verify-rate) once some batches have verdicts:
    `verify --resume` keeps them, checks the rest, and every file of every batch
    ends with its verdict (the batch's and its files' are written together)."""
    import signal

    from .support import eventually, popen
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    src.mkdir()
    for i in range(16):
        (src / f"f{i:02}").write_bytes(os.urandom(16 << 10))
    _run(src, dest, ledger, "--batch-files", "2")
    [(total,)] = query(ledger, "SELECT count(*) FROM batches WHERE state = 'succeeded'")
    # 32 KiB a batch, 64 KiB/s shared by the 4 slots: each check lasts ~2 s.
    p = popen("verify", "--ledger", str(ledger), "--verify-rate", "64KiB")

    def some_checked():
        done = query(ledger, "SELECT count(*) FROM verifications WHERE state = 'verified'")
        return done[0][0] >= 1
    eventually(some_checked, "a first verdict", proc=p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    [(kept,)] = query(ledger, "SELECT count(*) FROM verifications WHERE state = 'verified'")
    assert kept < total, "the verify ended before it was killed: nothing to resume"
    # A batch's verdict and its files' are one transaction.
    assert query(ledger, "SELECT count(*) FROM verifications v JOIN batch_files f "
                 "USING (task_id) WHERE v.state = 'verified' AND f.is_dir = 0 "
                 "AND f.verified IS NULL") == [(0,)]
    r = fleetsync("verify", "--ledger", str(ledger), "--resume")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert f"{total} batches verified, 0 differ" in out, out
    assert f"this verify checked {total - kept}, {kept} verdicts kept" in out, out
    assert query(ledger, "SELECT count(*) FROM batch_files WHERE verified = ?",
                 int(FileVerdict.SAME)) == [(16,)]


def test_a_batch_of_directories_alone_is_verified(tmp_path):
    """A batch with no regular file (here: an empty directory alone) has nothing to
    hash: verified, nothing named."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "empty").mkdir(parents=True)
    (src / "f").write_text("f")
    _run(src, dest, ledger, "--batch-files", "1")
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 0, r.stdout + r.stderr
    [(total,)] = query(ledger, "SELECT count(*) FROM batches")
    assert f"{total} batches verified, 0 differ" in r.stdout.decode()


def test_a_paced_verify_reads_its_list_in_parts_and_hashes_every_file(tmp_path):
    """--verify-rate's parts (rsync.pace_parts): about a second's worth each, every
    file in exactly one; the paced job's shell hashes them all, missing ones named by
    their absence, with the worst exit."""
    assert rsync.pace_parts([10, 10, 10, 50, 5], 20) == [(2, 20), (2, 60), (1, 5)]
    assert rsync.pace_parts([], 20) == []
    dest = tmp_path / "dest"
    dest.mkdir()
    names = [b"a", b"b", b"gone", b"c"]
    for n in names[:2] + names[3:]:
        (dest / n.decode()).write_bytes(n * 100)
    job = rsync.Job(3, 1, names, [], 400, OutcomeKind.VERIFY, sums="md5", regular=4,
                    pace=1 << 20, parts=rsync.pace_parts([100] * 4, 150))
    cmd = rsync.item_command([job], "/nonexistent-src", str(dest), "m", 1)
    out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True).stdout
    from fleetsync.controller import outcome
    [found] = outcome.parse_all(out)
    assert found.rsync_exit_code == 24, out
    assert found.sums == _tool_sums(["md5sum"], os.fsencode(dest), [b"a", b"b", b"c"])


def test_a_file_changed_and_copied_again_by_a_rescan_is_verified_in_its_latest_batch(
        tmp_path):
    """A file of SRC rewritten after its copy (the cutover's usual case) is queued
    again by `run --rescan`, whose batch records its new checksum: verify judges it by
    that batch alone, not by its first batch's checksum of the old contents (found by
    bench/chaos.py: every file a rescan copied again was named 'differs', exit 1)."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "d").mkdir(parents=True)
    for i in range(6):
        (src / "d" / f"f{i}").write_bytes(os.urandom(3000 + i))
    _run(src, dest, ledger, "--batch-files", "3")
    (src / "d" / "f1").write_bytes(os.urandom(5000))
    _run(src, dest, ledger, "--batch-files", "3", "--rescan")
    assert query(ledger, "SELECT count(*) FROM batch_files WHERE path = ?", b"d/f1") == [(2,)]
    r = fleetsync("verify", "--ledger", str(ledger))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert query(ledger, "SELECT count(*) FROM custody_problems") == [(0,)]
    # A file flipped at DEST is still named, in its latest batch.
    flipped = dest / "d" / "f1"
    st = os.stat(flipped)
    flipped.write_bytes(b"x" * 5000)
    os.utime(flipped, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 1 and "  differs: d/f1\n" in r.stdout.decode(), r.stdout
    [(latest,)] = query(ledger, "SELECT max(task_id) FROM batch_files WHERE path = ?", b"d/f1")
    assert query(ledger, "SELECT task_id FROM custody_problems") == [(latest,)]


def test_a_file_removed_from_src_and_deleted_from_dest_is_not_missing_to_verify(tmp_path):
    """A file copied, then removed from SRC; `run --rescan --delete` removes it from DEST
    (table deletions): DEST is exact, and verify should say so (exit 0)."""
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 + i))
    _run(src, dest, ledger, "--batch-files", "10")
    (src / "d" / "f1").unlink()
    _run(src, dest, ledger, "--batch-files", "10", "--rescan", "--delete")
    assert not (dest / "d" / "f1").exists()
    assert query(ledger, "SELECT path FROM deletions WHERE dry_run = 0") == [("d/f1",)]
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 0, r.stdout.decode()
    # The report says what became of it (not "arrived"); the others arrived.
    ok(fleetsync("report", "--ledger", str(ledger), "--format", "csv",
                 "-o", str(tmp_path / "r.csv")))
    with open(tmp_path / "r.csv", newline="") as f:
        outcomes = {row["path"]: row["outcome"] for row in csv.DictReader(f)}
    assert outcomes["d/f1"] == "deleted" and outcomes["d/f2"] == "arrived", outcomes
    # What --delete removed is passed over, nothing else: a file lost from DEST
    # without a deletion is still missing.
    (dest / "d" / "f2").unlink()
    r = fleetsync("verify", "--ledger", str(ledger))
    assert r.returncode == 1 and "d/f2" in r.stdout.decode() + r.stderr.decode(), r.stdout.decode()
    assert "d/f1" not in r.stdout.decode() + r.stderr.decode()


def test_verify_and_run_leave_no_directory_of_their_ansible_run(tmp_path):
    """Each ansible-playbook run has a directory /tmp/fleetsync:MID:TOKEN-..., removed by
    its thread once the playbook has exited; the command waits for that before it
    returns (found by bench/chaos.py: `fleetsync verify` left its directory every time)."""
    import tempfile
    src, dest, ledger = tmp_path / "src", tmp_path / "dest", tmp_path / "l.db"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 + i))
    _run(src, dest, ledger, "--batch-files", "5")
    [(mid,)] = query(ledger, "SELECT migration_id FROM migration")

    def left() -> list[str]:
        return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"fleetsync:{mid}:")]
    assert left() == []
    ok(fleetsync("verify", "--ledger", str(ledger)))
    assert left() == []
