"""The `fleetsync` command line: run, scan, verify, retry, bwlimit, backup, serve, status,
report.

The arguments are parsed here; controller/commands.py does what each command says.

Exit status: 0 every batch succeeded, 1 some batch failed for good, 2 a usage
or configuration error, said in one line on stderr; 3 stopped by its window, 4 the run
could not go on (a full ledger disk): fix the cause and run again to resume; `run`,
`verify` and `serve`: 130 when interrupted by SIGINT (Ctrl-C), 143 by SIGTERM.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from fleetsync.ledger.errors import FleetsyncError

from . import defaults
from .errors import UsageError
from .resources import DEFAULT_INVENTORY

LEDGER_HELP = "SQLite ledger of the migration (default: %(default)s)"
TOKEN_ENV = "FLEETSYNC_TOKEN"


def version() -> str:
    """The installed package's version (setup.cfg), as pip recorded it."""
    import importlib.metadata     # here: see _Version
    try:
        return importlib.metadata.version("fleetsync")
    except importlib.metadata.PackageNotFoundError:   # run from a tree never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata costs ~50 ms, which
    every `fleetsync run` would spend before its Ansible starts."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"fleetsync {version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, with each error in one line (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port): argparse would take 70000, and the
    socket layer then listens on 70000 % 65536."""
    if text.isdigit() and int(text) <= 65535:
        return int(text)
    raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")


def _seconds(text: str) -> float:
    """A timeout: a number of seconds above 0 (argparse's float takes 0, -5, nan
    and inf, and a host would then be lost at its first pause, or never)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value
    raise argparse.ArgumentTypeError(f"give a number of seconds above 0, not {text!r}")


def _count(text: str) -> int:
    """A number of things, 1 or more (argparse's int takes 0 and -3)."""
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"give a whole number, 1 or more, not {text!r}")


class _Rule(argparse.Action):
    """--exclude, --include, --filter, --exclude-from: one list, in command-line order
    (the first rule that matches decides, as in rsync)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.filter_rules = [*(getattr(namespace, "filter_rules", None) or []),
                                  (self.const, values)]


def _filter_args(p: argparse.ArgumentParser, copy: bool = True) -> None:
    """The filter rules of the walk (README: Filters); copy: the options of a copy
    (run) too, which a scan has no use for."""
    p.set_defaults(filter_rules=[])
    p.add_argument("--exclude", action=_Rule, const="exclude", metavar="PATTERN",
                   help="leave out what matches PATTERN, with rsync's meaning (repeatable; "
                        "with --include and --filter one ordered list, the first match decides)")
    p.add_argument("--include", action=_Rule, const="include", metavar="PATTERN",
                   help="keep what matches PATTERN, though a later rule excludes it")
    p.add_argument("--filter", action=_Rule, const="filter", metavar="RULE",
                   help="a rule in rsync's syntax: '- PATTERN' or '+ PATTERN'")
    p.add_argument("--exclude-from", action=_Rule, const="exclude_from", metavar="FILE",
                   help="exclude patterns from FILE, one a line (as rsync reads it: '+ ' "
                        "includes, '#' and ';' lines are comments)")
    p.add_argument("--no-default-excludes", action="store_true",
                   help="copy snapshot directories too (a new ledger excludes .snapshot*, "
                        ".zfs and .ckpt, as fpsync does)")
    if not copy:
        return
    p.add_argument("--change-filters", action="store_true",
                   help="resume with rules other than the ledger's: a rescan applies them "
                        "(what they now exclude stays at DEST unless --delete-excluded)")
    p.add_argument("--delete-excluded", action="store_true",
                   help="with --delete: remove from DEST what the rules exclude too (else "
                        "an excluded name is never deleted)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fleetsync", description=(
        "Migrate a huge file tree with rsync across the hosts of an Ansible inventory, "
        "with a SQLite ledger of every batch and a live JSON API."), epilog=(
        "Exit status: 0 done, 1 some batch failed for good (scan: some entry could not be "
        "read), 2 a usage or configuration error (one line on stderr), 3 stopped by its "
        "window (--stop-at, --max-duration, --max-transfer; run again to resume), 4 the run "
        "could not go on (its ledger's disk is full, said in one line): fix the cause and "
        "run again to resume; run, scan, verify and serve: 130 when interrupted by SIGINT "
        "(Ctrl-C), 143 by SIGTERM."))
    p.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # One builder a command, in the order `fleetsync --help` lists them.
    for add in (_run_command, _scan_command, _verify_command, _retry_command, _bwlimit_command,
                _backup_command, _serve_command, _status_command, _report_command):
        add(sub)
    return p


def _ledger_arg(p: argparse.ArgumentParser) -> None:
    """--ledger, which every command takes (added in place, so --help keeps its order)."""
    p.add_argument("--ledger", default=defaults.LEDGER, metavar="PATH", help=LEDGER_HELP)


def _run_command(sub) -> None:
    run = _command(sub, "run", help="walk SRC, copy it to DEST on the inventory's hosts "
                         "(resumes when the ledger exists)")
    run.add_argument("--src", required=True, help="source directory (walked on this machine)")
    run.add_argument("--dest", required=True,
                     help="destination: a path on the workers, or an rsync remote (host:/path)")
    run.add_argument("--inventory", default=DEFAULT_INVENTORY, metavar="INV",
                     help="Ansible inventory of the workers (default: this machine alone)")
    _ledger_arg(run)
    _api_args(run)
    run.add_argument("--no-api", action="store_true", help="do not serve the API during the run")
    _walk_args(run)
    run.add_argument("--max-retries", type=int, default=defaults.MAX_RETRIES, metavar="R",
                     help="retries of a batch after a retryable rsync exit (default: %(default)s)")
    _worker_args(run)

    run.add_argument("--bwlimit", metavar="RATE|TIMETABLE",
                     help="bandwidth cap for the whole fleet per second, e.g. 500MiB, shared by "
                          "the rsyncs running, or a timetable in rclone's form, e.g. "
                          "'08:00,512k 19:00,10M 23:00,off' or 'Mon-08:00,100MiB Sat-00:00,off' "
                          "(kept in the ledger; change it live with `fleetsync bwlimit`)")
    _window_args(run)
    _delete_args(run)
    run.add_argument("--rescan", action="store_true",
                     help="the cutover pass: walk SRC again and queue only what differs "
                          "from the last walk (name, type, mode, inode, size, mtime, ctime); "
                          "with --delete, deletions reach DEST too")
    _filter_args(run)
    run.add_argument("--files-from", metavar="FILE",
                     help="queue only the entries FILE lists (one path a line, relative to "
                          "SRC or absolute under it; '-': standard input), stat-ing them "
                          "instead of walking SRC: a listed directory is its own entry, not "
                          "its subtree (README: Change lists)")
    run.add_argument("--from0", action="store_true",
                     help="--files-from's paths are separated by NULs, not newlines "
                          "(find -print0; a name may then hold a newline)")
    run.add_argument("--checksum-choice", metavar="ALGO",
                     help="the checksum of every file recorded while copying, as rsync names "
                          "it: xxh128 (rsync's own, checked with `xxhsum -H2`), md5 or sha1 "
                          f"(default for a new ledger: {defaults.CHECKSUM_CHOICE}; a ledger "
                          "keeps its own)")
    run.add_argument("--verify", action="store_true",
                     help="after the copy, verify every file: hash DEST on the workers and "
                          "compare with the checksums recorded from SRC (as `fleetsync verify`)")
    _verify_rate_arg(run)


def _walk_args(p: argparse.ArgumentParser) -> None:
    """How the walk cuts batches and how many walk: a scan's batches are the run's."""
    p.add_argument("--batch-files", type=int, default=defaults.BATCH_FILES, metavar="N",
                   help="entries per batch at most (default: %(default)s)")
    p.add_argument("--batch-bytes", default=defaults.BATCH_BYTES_TEXT, metavar="SIZE",
                   help="bytes per batch at most, e.g. 100MiB, 1G (default: %(default)s)")
    p.add_argument("--producers", type=int, default=defaults.PRODUCERS, metavar="P",
                   help="walker processes (default: the cores, at most 6: %(default)s)")

def _delete_args(run: argparse.ArgumentParser) -> None:
    """The deletion pass of `run` and its guard."""
    delete = run.add_mutually_exclusive_group()
    delete.add_argument("--delete", action="store_true",
                        help="end with a pass that removes from DEST what is no longer in SRC "
                             "(refused when SRC looks empty)")
    delete.add_argument("--delete-dry-run", action="store_true",
                        help="list what --delete would remove (table `deletions`), remove nothing")
    # --delete's guard (controller/delete_guard.py says why the default is 10%).
    run.add_argument("--max-delete", metavar="N|P%",
                     help="--delete removes at most N entries, or P%% of DEST's entries "
                          "(P up to 100; default: 10%%; 0: none); over it the pass is "
                          "refused, nothing deleted")
    run.add_argument("--allow-delete", action="append", default=[], metavar="NAME",
                     help="a top-level entry of SRC that --delete may remove from DEST "
                          "although the ledger copied it before (repeatable)")


def _scan_command(sub) -> None:
    scan = _command(sub, "scan", help="walk SRC alone into a ledger (nothing copied) and "
                          "print what it holds; a later run with a --dest copies from that "
                          "walk")
    scan.add_argument("--src", required=True, help="source directory (walked on this machine)")
    _ledger_arg(scan)
    scan.add_argument("--json", action="store_true",
                      help="print the census as one JSON object on stdout")
    _walk_args(scan)
    _filter_args(scan, copy=False)


def _verify_rate_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-rate", metavar="RATE",
                   help="a verify reads DEST at most this fast, for the whole fleet, e.g. "
                        "200MiB (per second; shared by the slots; default: unbounded)")


def _verify_command(sub) -> None:
    ver = _command(sub, "verify", help="verify by file: hash DEST's files on the workers and "
                         "compare with the checksums recorded from SRC while copying; name "
                         "each file that differs, is missing or has no recorded checksum")
    _ledger_arg(ver)
    ver.add_argument("--inventory", metavar="INV",
                     help="Ansible inventory of the workers that check (default: the one the "
                          "migration last ran with)")
    which = ver.add_mutually_exclusive_group()
    which.add_argument("--resume", action="store_true",
                       help="go on with a verify that was stopped (Ctrl-C, a crash): keep its "
                            "verdicts, check only what it left and batches copied since "
                            "(without it, verify checks every succeeded batch afresh)")
    which.add_argument("--again", action="store_true",
                       help="check every succeeded batch afresh: what verify does without "
                            "--resume (kept for scripts written when it did not)")
    ver.add_argument("--requeue", action="store_true",
                     help="put batches that differ back in the queue for `fleetsync run` "
                          "(their next copy compares checksums and records the missing ones)")
    _verify_rate_arg(ver)
    _worker_args(ver)


def _retry_command(sub) -> None:
    retry = _command(sub, "retry", help="put failed (or chosen) batches of a migration back "
                           "in the queue; `fleetsync run` then copies them")
    _ledger_arg(retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every batch that failed")
    which.add_argument("--task", type=int, action="append", metavar="N",
                       help="this batch (repeatable), failed or succeeded")


def _bwlimit_command(sub) -> None:
    bw = _command(sub, "bwlimit", help="change the fleet's bandwidth cap or timetable, also "
                       "during a run (the next item of each host uses it)")
    _ledger_arg(bw)
    bw.add_argument("rate", help="per second for the whole fleet, e.g. 200MiB, 'off', or a "
                                 "timetable: '08:00,512k 19:00,off' (quote it)")


def _backup_command(sub) -> None:
    backup = _command(sub, "backup", help="copy the ledger to OUT with SQLite's online backup "
                      "(safe during a run); the copy is one self-contained file")
    _ledger_arg(backup)
    backup.add_argument("out", metavar="OUT", help="the copy to write (a new file)")


def _serve_command(sub) -> None:
    serve = _command(sub, "serve", help="serve the API of a ledger (running, finished or crashed)")
    _ledger_arg(serve)
    _api_args(serve)


def _status_command(sub) -> None:
    status = _command(sub, "status", help="print the migration's progress line "
                            "(batches, files, bytes, rate, ETA)")
    _ledger_arg(status)
    status.add_argument("--json", action="store_true",
                        help="print /status, /progress and /throughput as JSON")


def _report_command(sub) -> None:
    report = _command(sub, "report", help="write what became of every entry of SRC (arrived, "
                           "not arrived and why, vanished, excluded), with its checksum and "
                           "verdict, as CSV, JSON or one self-contained HTML page")
    _ledger_arg(report)
    report.add_argument("--format", choices=("csv", "json", "html"), default="csv",
                        help="csv: a row per entry; json: a header, the rows, a summary; "
                             "html: summary, plots, failures and the first rows (default: "
                             "%(default)s)")
    report.add_argument("-o", "--output", metavar="FILE",
                        help="write the report to FILE (default: standard output), and its "
                             "SHA-256 to FILE.sha256 in `sha256sum -c` form")
    report.add_argument("--csv", metavar="FILE",
                        help="with --format html: write the CSV to FILE too, from the same "
                             "moment of the ledger (and FILE.sha256); the page shows its SHA-256")


def _window_args(p: argparse.ArgumentParser) -> None:
    """A run's window (controller/window.py): when it stops claiming, and how it stops."""
    p.add_argument("--stop-at", metavar="HH:MM",
                   help="claim no new batch from this local time on (the next such time); "
                        "the run then exits 3, run it again to resume")
    p.add_argument("--max-duration", metavar="DURATION",
                   help="claim no new batch once this run has run this long, e.g. 6h, 90m, 30s")
    p.add_argument("--max-transfer", metavar="SIZE",
                   help="claim no new batch once rsync sent this much in this run, e.g. 2T")
    p.add_argument("--cutoff", choices=("soft", "hard"), default="soft",
                   help="when the window closes: soft lets the batches running finish; hard "
                        "stops them at once, back to the queue (default: %(default)s)")


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A command whose --help starts with the line `fleetsync --help` lists for it."""
    return sub.add_parser(name, help=help, description=help)


def _worker_args(p: argparse.ArgumentParser) -> None:
    """Options of the rsyncs the workers run, for a copy (run) and a check (verify)."""
    p.add_argument("--rsync-option", action="append", default=[], metavar="OPT",
                   help="extra rsync option, repeatable, e.g. --rsync-option=-AX")
    p.add_argument("--heartbeat-timeout", type=_seconds, default=defaults.HEARTBEAT_TIMEOUT,
                   metavar="SEC", help="a host not heard from this long while holding a batch "
                   "is lost (its running items beat every few seconds; default: %(default)s)")
    p.add_argument("--items-per-run", type=_count, default=defaults.ITEMS_PER_RUN, metavar="N",
                   help="loop items a host's ansible-playbook run does before the next run "
                        "starts, each about 1.5 s of its batches (default: %(default)s)")
    p.add_argument("--limit", metavar="PATTERN",
                   help="only the inventory's hosts that match this Ansible host pattern, as "
                        "ansible-playbook --limit (e.g. 'movers:!mover03'), hosts added "
                        "during the run included (the playbook passes its own --limit)")
    p.add_argument("--slots", type=_count, metavar="N",
                   help="batches every host runs at once, whatever the inventory's "
                        "fleetsync_slots says (as -e fleetsync_slots=N does in Ansible)")


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default=defaults.API_HOST, metavar="ADDR",
                   help="API address (default: %(default)s; another address needs care: --token)")
    p.add_argument("--port", type=_port, default=defaults.API_PORT, metavar="PORT",
                   help="API port, 0..65535; 0 takes any free port and prints it "
                        "(default: %(default)s)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="PATH",
                       help="file holding the bearer token the API requires (its first line); "
                            f"default: ${TOKEN_ENV}, else no token")
    token.add_argument("--token", metavar="T",
                       help="the bearer token itself; every user of this machine sees it in "
                            "`ps`: prefer --token-file or $" + TOKEN_ENV)
    token.add_argument("--no-token", action="store_true",
                       help="serve an address other than loopback without a token (anyone who "
                            "reaches the port reads every path name in the ledger); without it "
                            "such an address needs a token")


def _token(args: argparse.Namespace) -> str | None:
    """The API's token: --token (said to be visible), --token-file, $FLEETSYNC_TOKEN;
    None with --no-token (whatever the environment holds)."""
    if args.no_token:
        return None
    if args.token is not None:
        if not args.token:
            # `--token "$TOKEN"` with TOKEN unset: an open API the operator did not mean.
            raise UsageError("--token is empty (is the variable you passed set?)")
        print("fleetsync: warning: --token is visible to every user of this machine in `ps`; "
              f"use --token-file PATH or ${TOKEN_ENV}", file=sys.stderr)
        return args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeError) as e:
            raise UsageError(f"--token-file {args.token_file}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _check_open(args: argparse.Namespace, api) -> None:
    """An API on an address others can reach (api: its bound Listener) serves every
    path name of the ledger: refused without a token, unless --no-token says it is
    meant."""
    if args.token is None and not args.no_token and api.open:
        raise UsageError(f"--bind {args.bind} is reachable from other machines and the API "
                         "has no token: give --token-file PATH (or $" + TOKEN_ENV + "), or "
                         "--no-token to serve every path name of the ledger to anyone")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api = ahead = None
    try:
        if args.command in ("run", "serve"):
            args.token = _token(args)
            if not getattr(args, "no_api", False):
                from .listener import Listener
                # Bound first: a bad port or address is one line before anything is created.
                api = Listener(args.bind, args.port)
                _check_open(args, api)
        if args.command == "run":
            # The dispatch's Ansible first: it reads the inventory (the slowest check)
            # in the background while the imports and the checks go on.
            ahead = _ahead(args)
            from . import inventory
            from .hostrun import HostsRead
            # Read once, by the run started ahead; else by ansible-inventory.
            loading = (HostsRead(ahead, args.inventory) if ahead is not None
                       else inventory.Loading(args.inventory, limit=args.limit))
            from . import commands
            return commands.run(args, loading, api, ahead)
        from . import commands
        if args.command == "serve":
            return commands.serve(args, api)
        return getattr(commands, args.command)(args)
    except FleetsyncError as e:     # bad input, an unusable ledger or inventory, a run that cannot go on
        print(f"fleetsync: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    finally:
        if ahead is not None:
            ahead.drop()       # not adopted (the run was refused): it ends, nothing left
        if api is not None:
            api.stop()


def _ahead(args: argparse.Namespace):
    """The dispatch's Ansible (hostrun.FleetRun.ahead), started at launch on the
    operator's inventory, betting on the ledger's migration id (or a new ledger's);
    None when the inventory is not there (the run refuses it)."""
    if not os.path.exists(args.inventory):
        return None
    from fleetsync.ledger import identity

    from .hostrun import FleetRun
    migration_id = identity.migration_id(args.ledger) or identity.new_migration_id()
    return FleetRun.ahead(args.inventory, args.limit, migration_id)


def entry() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


if __name__ == "__main__":
    entry()
