"""The shell commands a worker host runs: a batch, a check, a part of the directory pass.

Their output is read by controller/outcome.py; the lines fleetsync adds to it
(begin, end, itemized, beat) are controller/protocol.py's.

The file list never meets a shell: it travels NUL-separated, gzip-compressed
and base64-encoded inside the command, is decoded into a temporary file on the
worker and handed to `rsync --from0 --files-from`. Only SRC and DEST appear in
the command as words, quoted. The list's length is checked before rsync runs,
so a damaged list can never pass for a short batch.

One loop item carries several batches (item_command): the host runs them in
`lanes` shell jobs side by side (its slots), each lane taking the next batch not
taken yet (an atomic mkdir), and prints every batch's framed output in order
when all are done. What one batch prints is capped on the host (the --stats
totals are kept, then the first OUTPUT_CAP characters of other lines, then how
many lines were cut), so that an item's result stays far below ansible-runner's
MAX_EVENT_RES (a larger result is replaced by {} and its exit code is lost).

rsync options (the defaults, changed with --rsync-option):
  --archive        permissions, times, owner, group, symlinks, devices, specials
  --numeric-ids    uid/gid as numbers: the data movers' name maps need not match
  --hard-links     keeps hard links that fall inside one batch (not across batches)
  --sparse         only for batches the walk saw a file with holes in (it doubles
                   rsync's CPU); holes stay holes, and in such a batch runs of zeros
                   in plain files become holes too
  --ignore-times   only for a rescan's batches: it queued those entries because
                   they changed, which size and mtime need not show
  --checksum       only for batches a verify found different
  ACLs (-A) and xattrs (-X) are off: a destination without them would fail every
  batch with exit 23; add them with --rsync-option=-AX where both sides have them.
  --timeout        rsync's own I/O timeout; `timeout -k` bounds the whole batch.
"""
from __future__ import annotations

import base64
import re
import shlex
import uuid
import zlib
from dataclasses import dataclass

from fleetsync.ledger.states import Compare, DeleteMode, OutcomeKind

from fleetsync.ledger import custody, sizes

from . import protocol

DEFAULT_RSYNC_OPTIONS = ["--archive", "--numeric-ids", "--hard-links"]
IO_TIMEOUT = 300          # rsync --timeout: seconds without any I/O
MIN_BATCH_SECONDS = 900   # `timeout` bound of a batch: at least this...
MIN_RATE = 1 << 20        # ...or its bytes at 1 MiB/s, whichever is longer
LIST_DAMAGED = 250        # our own exit code: the file list did not arrive whole
GUARD_FAILED = 251        # our own exit code: SRC looked empty, --delete refused

# How a batch's rsync decides that a file at DEST is up to date (states.Compare says why).
COMPARE_OPTIONS = {Compare.QUICK: [], Compare.CHECKSUM: ["--checksum"],
                   Compare.ALWAYS: ["--ignore-times"]}


def new_run_token() -> str:
    """A `fleetsync run`'s token: with the migration id, the marker of its processes."""
    return uuid.uuid4().hex[:12]


def marker(migration_id: str, run_token: str) -> str:
    """A string carried in every rsync's command line, to find leftovers of dead runs."""
    return f"fleetsync:{migration_id}:{run_token}"


def batch_seconds(estimated_bytes: int, capped: int | None = None) -> int:
    """The `timeout` bound of a batch. An rsync capped by --bwlimit below MIN_RATE
    is given its bytes at half its cap: a healthy copy at a low cap is never cut."""
    rate = MIN_RATE if not capped else min(MIN_RATE, max(1, capped // 2))
    return max(MIN_BATCH_SECONDS, estimated_bytes // rate)


def capped_rate(options: list[str]) -> int | None:
    """The bytes per second rsync's last --bwlimit in options allows (rsync takes the
    last one given; a bare number is KiB/s), None when none caps it."""
    for opt in reversed(options):
        if opt.startswith("--bwlimit="):
            value = opt.split("=", 1)[1]
            try:
                return sizes.parse(value + "k" if re.fullmatch(r"[\d.]+", value) else value)
            except sizes.SizeError:    # rsync refuses it (or 0: no cap)
                return None
    return None


def _trailing(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _rsync(options: list[str], src: str, dest: str, mark: str,
           unquoted: list[str] = ()) -> str:
    """The rsync command line: options quoted for the shell, the I/O timeout, the
    run's marker (to find leftovers), SRC/ and DEST/. `unquoted`: words that refer
    to shell variables of the command around it."""
    return " ".join(["rsync", *map(shlex.quote, options), f"--timeout={IO_TIMEOUT}",
                     *unquoted, f"--log-file-format={mark}", "--",
                     shlex.quote(_trailing(src)), shlex.quote(_trailing(dest))])


def encode_list(paths: list[bytes]) -> tuple[str, int]:
    """The NUL-separated list, gzip-compressed and base64-encoded, and its length."""
    raw = b"".join(p + b"\0" for p in paths)
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)   # 31: the gzip container
    packed = gz.compress(raw) + gz.flush()
    return base64.b64encode(packed).decode("ascii"), len(raw)


def batch_command(task_id: int, claim: int, paths: list[bytes], src: str, dest: str,
                  options: list[str], mark: str, estimated_bytes: int,
                  kind: OutcomeKind = OutcomeKind.COPY, guard: str | None = None) -> str:
    """The command for one batch: decode the list, check it, run rsync, report.
    guard: a shell test that must hold for rsync to run (else exit GUARD_FAILED)."""
    # SRC itself (".") cannot ride in a --files-from list: rsync would take the
    # whole top level with it. The directory pass sends it with root_command.
    b64, length = encode_list([p for p in paths if p != b"."])
    rsync = _rsync([*options, "--stats"], src, dest, mark,
                   ["--from0", '--files-from="$f"'])
    body = (f'if ! [ "$(wc -c < "$f")" -eq {length} ]; then '
            f"echo 'fleetsync: the file list arrived damaged'; rc={LIST_DAMAGED}; "
            + (f"elif ! {guard}; then echo 'fleetsync: SRC looks empty or unmounted here: "
               f"nothing deleted'; rc={GUARD_FAILED}; " if guard else "")
            + f"else timeout -k 30 {batch_seconds(estimated_bytes)} {rsync} 2>&1; "
            "rc=$?; fi")
    return "; ".join([
        protocol.begin(task_id, claim, kind),
        'f=$(mktemp "${TMPDIR:-/tmp}/fleetsync.XXXXXX") || exit 1',
        f'echo {b64} | base64 -d | gzip -dc > "$f"',
        body,
        'rm -f "$f"',
        protocol.end(task_id, claim),
    ])


def _delete_command(dirs: list[bytes], src: str, dest: str, options: list[str], mark: str,
                    kind: OutcomeKind, extra: list[str]) -> str:
    # "D/." makes rsync compare D's entries, only inside the listed directories;
    # --existing creates nothing. A CLEAN pass adds --ignore-existing: it copies
    # nothing, only --delete acts. A DELETE pass also replaces an entry whose type
    # changed in SRC (a directory that became a file: the copy's rsync cannot
    # remove a non-empty directory), and its dry run lists the replaced subtree as
    # `*deleting` lines, so the --max-delete bound counts it.
    listed = [b"./." if p == b"." else p + b"/." for p in dirs]
    keep = ["--ignore-existing"] if kind is OutcomeKind.CLEAN else []
    return batch_command(
        0, 0, listed, src, dest,
        [*options, "--dirs", "--delete", "--existing", *keep,
         protocol.ITEMIZE, *extra], mark, 0, kind,
        guard=f'[ -n "$(ls -A {shlex.quote(src)} 2>/dev/null | head -c 1)" ]')


def dirs_command(paths: list[bytes], src: str, dest: str, options: list[str], mark: str,
                 delete: DeleteMode = DeleteMode.OFF, dirty: set[bytes] = frozenset(),
                 filters: list[str] = (), delete_excluded: bool = False) -> str:
    """One part of the directory pass. First, with --delete, remove from these
    directories of DEST what is no longer in SRC, except what the filter rules
    exclude (rsync's own --filter rules protect those names, unless
    delete_excluded: --delete-excluded); without it, remove only the
    temporary files (.NAME.XXXXXX) that a killed rsync left in the dirty ones.
    Then send the directories alone (no recursion) to set their modes and times,
    which the files landing inside them and the deletions disturbed; SRC itself
    last, when it is in the part."""
    parts, delete = [], DeleteMode(delete)
    if delete is not DeleteMode.OFF:
        parts.append(_delete_command(
            paths, src, dest, options, mark, OutcomeKind.DELETE,
            [*(f"--filter={r}" for r in filters),
             *(["--delete-excluded"] if delete_excluded else []),
             *(["--dry-run"] if delete is DeleteMode.DRY_RUN else [])]))
    elif dirty.intersection(paths):
        # Protect every name but rsync's temporary ones (a name in SRC is never extraneous).
        parts.append(_delete_command([p for p in paths if p in dirty], src, dest, options,
                                     mark, OutcomeKind.CLEAN, ["--filter=P! .*.??????"]))
    parts.append(batch_command(0, 0, paths, src, dest, [*options, "--dirs"], mark, 0, OutcomeKind.DIRS))
    if b"." in paths:
        parts.append(root_command(src, dest, options, mark))
    return "; ".join(parts)


def root_command(src: str, dest: str, options: list[str], mark: str) -> str:
    """SRC's own mode and times onto DEST: the top directory with every entry excluded."""
    rsync = _rsync([*options, "--dirs", "--exclude=*"], src, dest, mark)
    return "; ".join([
        protocol.begin(0, 0, OutcomeKind.DIRS),
        f"timeout -k 30 {MIN_BATCH_SECONDS} {rsync} 2>&1; rc=$?",
        protocol.end(0, 0),
    ])


def sum_options(algorithm: str) -> list[str]:
    """What a copy's rsync adds to record SRC's checksums: the algorithm of its
    transfer checksums, and a line per entry it sends, with %C (protocol.SUM_FORMAT)."""
    return [f"--checksum-choice={algorithm}", protocol.SUM_FORMAT]


def _sum_pass(algorithm: str, root: str, lst: str) -> str:
    """A checksum pass: rsync reads the listed files under root and prints their
    checksums (-c against an empty directory, never created: a dry run in which the
    sender alone reads, once). The same lines as a copy's %C, and every name of a
    hard link gets one."""
    return (f"rsync -a -c -n --checksum-choice={algorithm} {shlex.quote(protocol.SUM_FORMAT)} "
            f"--timeout={IO_TIMEOUT} --from0 --files-from={lst} -- "
            f'{shlex.quote(_trailing(root))} "$d/e/"')


OUTPUT_CAP = 4000      # characters of one batch's rsync lines (beyond its --stats totals)
# Keep what rsync printed for one batch: its --stats byte totals, then other lines up
# to OUTPUT_CAP characters, then a line saying how many were cut. The other --stats
# lines (a dozen per batch, read by nobody) are dropped: every byte of an item's
# output is carried, copied and parsed several times on the controller. LC_ALL=C:
# names need not be UTF-8.
_STATS_NOISE = ("^(Number of |Total file size|Total transferred file size|Literal data|"
                "Matched data|File list |sent [0-9,.]+ bytes|total size is |$)")
# A checksum line (protocol.SUM_FORMAT) is kept whole, without its %i, when it has
# a checksum (others: dropped); its bytes are bounded by the item's size
# (controller/slot.py: _fit), not by the cap.
_CAP = (f"LC_ALL=C awk -v max={OUTPUT_CAP} '/^{protocol.SUM}/ {{s = substr($0, 17); "
        f"if (s ~ /^[0-9a-f]+ /) print \"{protocol.SUM}\" s; next}} "
        "/^Total bytes (sent|received): / {print; next} "
        f"/{_STATS_NOISE}/ {{next}} "
        "n + length($0) < max {print; n += length($0) + 1; next} {cut++} "
        "END {if (cut) print \"fleetsync: \" cut \" more lines of rsync output not shown\"}'")


@dataclass
class Job:
    """One batch (or check) of an item: what its rsync needs."""
    task_id: int
    claim: int
    paths: list[bytes]
    options: list[str]        # this batch's rsync options (bwlimit, checksum, sparse...)
    estimated_bytes: int
    kind: OutcomeKind = OutcomeKind.COPY
    sums: str | None = None   # the checksum algorithm to record (None: record none)
    regular: int = 0          # its regular files: a copy owes this many checksums
    pace: int | None = None   # a verify's reads of DEST, in bytes per second at most
    parts: list = None        # ...read in these parts (pace_parts)

    def listed(self) -> tuple[str, int]:
        """The encoded list and its length (computed once: it also sizes the item)."""
        if not hasattr(self, "_listed"):
            # SRC itself (".") cannot ride in a --files-from list (see batch_command).
            self._listed = encode_list([p for p in self.paths if p != b"."])
        return self._listed


def _job_case(n: int, job: Job, src: str, dest: str, mark: str) -> str:
    """Branch n of the item's `j` function: one batch, its output framed."""
    b64, length = job.listed()
    lst, out = f'"$d/l{n}"', f'"$d/r{n}"'
    seconds = batch_seconds(job.estimated_bytes, capped_rate(job.options))
    return (f"{n}) {protocol.begin(job.task_id, job.claim, job.kind)}; "
            f"echo {b64} | base64 -d | gzip -dc > {lst}; "
            f'if ! [ "$(wc -c < {lst})" -eq {length} ]; then '
            f"echo 'fleetsync: the file list arrived damaged'; rc={LIST_DAMAGED}; "
            f"else {_job_body(job, src, dest, mark, lst, out, seconds)}; "
            f"cap {out}; fi; rm -f {lst} {out} {out}s {out}c; "
            f"{protocol.end(job.task_id, job.claim)};;")


def job_bytes(job: Job, src: str, dest: str, mark: str) -> int:
    """What a job adds to its item's command: its branch of `j`, its list included.
    The whole command is one argument of `sh -c`, which Linux bounds at 128 KiB
    (MAX_ARG_STRLEN: E2BIG, "Argument list too long"): a batch of one file costs
    more in commands than in its list."""
    return len(_job_case(MAX_JOBS, job, src, dest, mark).encode()) + 1


MAX_JOBS = 99    # the widest branch number job_bytes counts (slot.MAX_ITEM_BATCHES is less)


def _verify_body(job: Job, dest: str, lst: str, out: str, seconds: int) -> str:
    """DEST's checksums, computed as the copy computed SRC's (one parser, any name
    rsync can name, a remote DEST too), into out. Paced (job.pace): the list is read
    in parts of about a second's worth at the pace (job.parts: (files, bytes) each),
    each followed by a sleep that brings it up to its bytes at the pace, so that DEST
    is never read faster than the pace for longer than one part. rc: the worst exit
    (one other than 0, 23 or 24 wins: the check could not run)."""
    sums = _sum_pass(job.sums, dest, f"{lst}p" if job.pace else lst)
    if not job.pace:
        return f"timeout -k 30 {seconds} {sums} > {out} 2>&1; rc=$?"
    parts = " ".join(f"{n}:{b}" for n, b in job.parts)
    return (f": > {out}; rc=0; s=1; for c in {parts}; do n=${{c%%:*}}; b=${{c#*:}}; "
            f"s0=$(date +%s.%N); tail -z -n +$s {lst} | head -z -n $n > {lst}p; "
            f"timeout -k 30 {seconds} {sums} >> {out} 2>&1; r=$?; "
            "case $r in 0) ;; 23|24) [ $rc -eq 0 ] && rc=$r;; *) rc=$r;; esac; "
            f"s=$((s + n)); sleep $(awk -v s0=$s0 -v now=$(date +%s.%N) -v b=$b "
            f"'BEGIN {{w = b / {job.pace} - (now - s0); print (w > 0 ? w : 0)}}'); done; "
            f"rm -f {lst}p")


def pace_parts(sizes: list[int], pace: int) -> list[tuple[int, int]]:
    """A paced verify's list in parts of about a second's worth at the pace (at
    least one file each), in order: (files, bytes) of each."""
    parts, n, b = [], 0, 0
    for size in sizes:
        n, b = n + 1, b + size
        if b >= pace:
            parts.append((n, b))
            n, b = 0, 0
    if n:
        parts.append((n, b))
    return parts


# A line of a copy's output that accounts for a regular file's checksum: one with
# %C, or a hard link's second name (it takes its group's).
_SUMMED = f"^{protocol.SUM}(hf|.f......... [0-9a-f])"


def _job_body(job: Job, src: str, dest: str, mark: str, lst: str, out: str,
              seconds: int) -> str:
    """The shell that runs one job's rsync into out, leaving its exit code in rc."""
    if job.kind is OutcomeKind.VERIFY:
        return _verify_body(job, dest, lst, out, seconds)
    options = [*job.options, *(sum_options(job.sums) if job.sums else []), "--stats"]
    rsync = _rsync(options, src, dest, mark, ["--from0", f"--files-from={lst}"])
    body = f"timeout -k 30 {seconds} {rsync} > {out} 2>&1; rc=$?"
    owed = ":"
    if job.sums and job.regular:
        # The files rsync did not send (already at DEST) got no %C: a checksum pass
        # of SRC gives them theirs, only when some are owed.
        owed = (f"if [ \"$(LC_ALL=C grep -c -E '{_SUMMED}' {out})\" "
                f"-lt {job.regular} ]; then timeout -k 30 {seconds} "
                f"{_sum_pass(job.sums, src, lst)} > {out}s 2>&1; "
                f"LC_ALL=C grep -a '^{protocol.SUM}' {out}s >> {out}; fi")
    # A batch that failed as a whole: which of its entries are at DEST whole is
    # asked of DEST (_dest_check); those that are get their checksums too.
    # Not when the item was fenced (its host declared lost: the batch waits again).
    return (f"{body}; case $rc in 0|23|24) {owed};; *) if ! [ -e \"$d/x\" ]; then "
            f"{_dest_check(job, src, dest, mark, lst, out, seconds)}; "
            f"[ $c -eq 0 ] && {{ {owed}; }}; fi;; esac")


def _dest_check(job: Job, src: str, dest: str, mark: str, lst: str, out: str,
                seconds: int) -> str:
    """The look at DEST after a batch failed (exit other than 0, 23, 24: rsync gave
    up on the batch, e.g. 11 on a full DEST): a dry run of the batch's own rsync
    (its options, so its own comparison: size and mtime by default, checksums where
    the batch compares them), which names every listed entry it would still send or
    create, and only those (protocol.NOT_THERE); rsync's listing of the failed copy
    is no proof, it names a file (and prints its %C) before the write fails. One
    pass over the list, stats of both sides and no data read (bench/dest_check.py);
    a remote DEST is asked through rsync's own connection. Its error lines are
    dropped (the copy's tell why), its exit code closes it: only rc 0 is believed."""
    check = _rsync([*job.options, "--dry-run", protocol.CHECK_FORMAT], src, dest, mark,
                   ["--from0", f"--files-from={lst}"])
    return (f"timeout -k 30 {seconds} {check} > {out}c 2>/dev/null; c=$?; "
            f"LC_ALL=C grep -a -E '{protocol.NOT_THERE}' {out}c; "
            f"{protocol.checked(job.task_id)}")


# An item's output travels in one Ansible result, whose text ansible-runner drops
# (res {}: its exit code lost) past MAX_EVENT_RES characters; the result holds the
# output twice (stdout, stdout_lines). controller/environment.py raises that limit
# to 16 M, and an item is cut (controller/slot.py) so that its output, at most,
# stays under ITEM_OUTPUT_BYTES: every checksum line reaches the controller.
ITEM_OUTPUT_BYTES = 2 << 20
_PLAIN = bytes(range(0x20, 0x7f)).replace(b"\\", b"")   # rsync prints them as they are


def output_bound(job: Job) -> int:
    """The most a job prints: OUTPUT_CAP and its --stats totals, a checksum line
    per regular file, twice for a copy (its %C, then a checksum pass), and for a copy
    a line per entry of its look at DEST, each name at its longest as rsync prints it
    (an odd byte as the 5 characters of \\#ooo)."""
    bound = OUTPUT_CAP + 200
    if job.kind is OutcomeKind.COPY:     # a failed copy's look at DEST: a line per entry
        bound += _names(job, len(protocol.MISSING) + 14) + 100
    if not job.sums:
        return bound
    per = len(protocol.SUM) + 2 * custody.ALGORITHMS[job.sums] + 2
    return bound + _names(job, per) * (1 if job.kind is OutcomeKind.VERIFY else 2)


def _names(job: Job, per: int) -> int:
    """The job's names as rsync prints them at their longest, with `per` more each."""
    return sum(len(p) + 4 * len(p.translate(None, _PLAIN)) + per for p in job.paths)


def item_dir_prefix(migration_id: str, run_token: str) -> str:
    """The name of an item's directory (under the host's TMPDIR) up to mktemp's XXXXXX."""
    return f"fleetsync.{migration_id}.{run_token}."


BEAT_SECONDS = 5.0    # a running item prints an empty line this often (item_command)


def item_command(jobs: list[Job], src: str, dest: str, mark: str, lanes: int,
                 tmp_prefix: str = "fleetsync.", beat: float = BEAT_SECONDS) -> str:
    """One loop item: these batches, `lanes` at a time on the host, in order of their
    index; one framed outcome per batch, printed in that order when all are done.
    Everything it writes lives in one mktemp -d directory (0700), removed on exit,
    on a signal, and by the next run's preflight when the host died meanwhile.

    While it runs, it prints an empty line every `beat` seconds: the bytes reach
    the Ansible worker that reads the item's output on the controller, which counts
    them (controller/hostrun.py), so a host is heard from during an item however long
    its rsyncs take. When a beat cannot be written (the controller's end is gone: the
    host was declared lost, its connection dropped), or the item is signalled, it
    fences itself: its lanes take no more batches and its rsyncs get SIGTERM, so a
    batch that waits again elsewhere does not go on here too."""
    n = len(jobs)
    lanes = max(1, min(lanes, n))
    cases = " ".join(_job_case(i + 1, j, src, dest, mark) for i, j in enumerate(jobs))
    lane = (f'lane() {{ n=1; while [ $n -le {n} ] && ! [ -e "$d/x" ]; do '
            'if mkdir "$d/c$n" 2>/dev/null; then j $n > "$d/o$n" 2>&1; fi; n=$((n+1)); done; }')
    # $d/l is in the command line of every rsync (and its `timeout`) of this item only.
    fence = 'fence() { : > "$d/x"; pkill -TERM -f -- "$d/l" 2>/dev/null; }'
    beating = (f"beat() {{ trap '' PIPE; while sleep {beat:g} </dev/null >/dev/null 2>&1; do "
               f"{protocol.BEAT} 2>/dev/null || {{ fence; break; }}; done; }}")
    # Lanes run in the background and the shell waits for them: a trapped signal
    # interrupts `wait` at once (not after a foreground lane), and the beat, which is
    # stopped and reaped before any outcome is printed, never splits a line.
    start = " ".join(f"lane & l{i}=$!;" for i in range(lanes))
    return "; ".join([
        'b=; d=$(mktemp -d "${TMPDIR:-/tmp}/' + tmp_prefix + 'XXXXXX") || exit 1',
        fence,
        """trap '[ -n "$b" ] && kill $b 2>/dev/null; rm -rf "$d"' EXIT""",
        "trap 'fence; exit 129' HUP; trap 'fence; exit 130' INT; trap 'fence; exit 141' PIPE; "
        "trap 'fence; exit 143' TERM",
        f"cap() {{ {_CAP} \"$1\"; }}",
        f"j() {{ case $1 in {cases} esac; }}",
        lane,
        beating,
        "beat & b=$!",
        start + " wait " + " ".join(f"$l{i}" for i in range(lanes)),
        'kill $b 2>/dev/null; wait $b 2>/dev/null; b=',
        f'n=1; while [ $n -le {n} ]; do cat "$d/o$n"; n=$((n+1)); done',
    ])
