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

from fleetsync.ledger import sizes

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


# Verification: rsync compares whole-file checksums and only lists (one line per
# entry that differs, --dry-run) what a copy would change.
VERIFY_OPTIONS = ["--checksum", "--dry-run", protocol.ITEMIZE]


OUTPUT_CAP = 4000      # characters of one batch's rsync lines (beyond its --stats totals)
# Keep what rsync printed for one batch: its --stats byte totals, then other lines up
# to OUTPUT_CAP characters, then a line saying how many were cut. The other --stats
# lines (a dozen per batch, read by nobody) are dropped: every byte of an item's
# output is carried, copied and parsed several times on the controller. LC_ALL=C:
# names need not be UTF-8.
_STATS_NOISE = ("^(Number of |Total file size|Total transferred file size|Literal data|"
                "Matched data|File list |sent [0-9,.]+ bytes|total size is |$)")
_CAP = (f"LC_ALL=C awk -v max={OUTPUT_CAP} '/^Total bytes (sent|received): / {{print; next}} "
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
    rsync = _rsync([*job.options, "--stats"], src, dest, mark,
                   ["--from0", f"--files-from={lst}"])
    return (f"{n}) {protocol.begin(job.task_id, job.claim, job.kind)}; "
            f"echo {b64} | base64 -d | gzip -dc > {lst}; "
            f'if ! [ "$(wc -c < {lst})" -eq {length} ]; then '
            f"echo 'fleetsync: the file list arrived damaged'; rc={LIST_DAMAGED}; "
            f"else timeout -k 30 {seconds} {rsync} > {out} 2>&1; "
            f"rc=$?; cap {out}; fi; rm -f {lst} {out}; "
            f"{protocol.end(job.task_id, job.claim)};;")


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
