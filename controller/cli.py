"""The `fleetsync` command line: run, verify, retry, bwlimit, serve, status.

The arguments are parsed here; controller/commands.py does what each command says.

Exit status: 0 every batch succeeded, 1 some batch failed for good, 2 a usage
or configuration error, said in one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from . import defaults, sizes
from .errors import UsageError
from .resources import DEFAULT_INVENTORY

LEDGER_HELP = "SQLite ledger of the migration (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetsync", description=(
        "Migrate a huge file tree with rsync across the hosts of an Ansible inventory, "
        "with a SQLite ledger of every batch and a live JSON API."))
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="walk SRC, copy it to DEST on the inventory's hosts "
                         "(resumes when the ledger exists)")
    run.add_argument("--src", required=True, help="source directory (walked on this machine)")
    run.add_argument("--dest", required=True,
                     help="destination: a path on the workers, or an rsync remote (host:/path)")
    run.add_argument("--inventory", default=DEFAULT_INVENTORY,
                     help="Ansible inventory of the workers (default: this machine alone)")
    run.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    _api_args(run)
    run.add_argument("--no-api", action="store_true", help="do not serve the API during the run")
    run.add_argument("--batch-files", type=int, default=defaults.BATCH_FILES, metavar="N",
                     help="entries per batch at most (default: %(default)s)")
    run.add_argument("--batch-bytes", default=defaults.BATCH_BYTES_TEXT, metavar="SIZE",
                     help="bytes per batch at most, e.g. 100MiB, 1G (default: %(default)s)")
    run.add_argument("--producers", type=int, default=defaults.PRODUCERS, metavar="P",
                     help="walker processes (default: the cores, at most 6: %(default)s)")
    run.add_argument("--max-retries", type=int, default=defaults.MAX_RETRIES, metavar="R",
                     help="retries of a batch after a retryable rsync exit (default: %(default)s)")
    _worker_args(run)

    run.add_argument("--bwlimit", metavar="RATE",
                     help="bandwidth cap for the whole fleet per second, e.g. 500MiB, shared by "
                          "the rsyncs running (change it live with `fleetsync bwlimit`)")

    delete = run.add_mutually_exclusive_group()
    delete.add_argument("--delete", action="store_true",
                        help="end with a pass that removes from DEST what is no longer in SRC "
                             "(refused when SRC looks empty)")
    delete.add_argument("--delete-dry-run", action="store_true",
                        help="list what --delete would remove (table `deletions`), remove nothing")
    run.add_argument("--rescan", action="store_true",
                     help="the cutover pass: walk SRC again and queue only what differs "
                          "from the last walk (name, type, mode, inode, size, mtime, ctime); "
                          "with --delete, deletions reach DEST too")
    run.add_argument("--verify", action="store_true",
                     help="after the copy, check every batch with rsync --checksum --dry-run")

    ver = sub.add_parser("verify", help="check succeeded batches on the workers with rsync's "
                         "checksums (dry run); record per batch: verified, or what differs")
    ver.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    ver.add_argument("--inventory", default=DEFAULT_INVENTORY,
                     help="Ansible inventory of the workers that check (default: this machine)")
    ver.add_argument("--again", action="store_true", help="check batches verified before, too")
    ver.add_argument("--requeue", action="store_true",
                     help="put batches that differ back in the queue for `fleetsync run`")
    _worker_args(ver)

    retry = sub.add_parser("retry", help="put failed (or chosen) batches of a migration back "
                           "in the queue; `fleetsync run` then copies them")
    retry.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every batch that failed")
    which.add_argument("--task", type=int, action="append", metavar="N",
                       help="this batch (repeatable), failed or succeeded")

    bw = sub.add_parser("bwlimit", help="change the fleet's bandwidth cap, also during a run")
    bw.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    bw.add_argument("rate", help="per second for the whole fleet, e.g. 200MiB, or 'off'")

    serve = sub.add_parser("serve", help="serve the API of a ledger (running, finished or crashed)")
    serve.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    _api_args(serve)

    status = sub.add_parser("status", help="print the migration's progress line "
                            "(batches, files, bytes, rate, ETA)")
    status.add_argument("--ledger", default=defaults.LEDGER, help=LEDGER_HELP)
    status.add_argument("--json", action="store_true",
                        help="print /status, /progress and /throughput as JSON")
    return p


def _worker_args(p: argparse.ArgumentParser) -> None:
    """Options of the rsyncs the workers run, for a copy (run) and a check (verify)."""
    p.add_argument("--rsync-option", action="append", default=[], metavar="OPT",
                   help="extra rsync option, repeatable, e.g. --rsync-option=-AX")
    p.add_argument("--heartbeat-timeout", type=float, default=defaults.HEARTBEAT_TIMEOUT,
                   metavar="SEC", help="a host silent this long while holding a batch is lost "
                   "(plus the batch's bytes at 10 MiB/s; default: %(default)s)")
    p.add_argument("--items-per-run", type=int, default=defaults.ITEMS_PER_RUN, metavar="N",
                   help="batches per slot per ansible-playbook run (default: %(default)s)")


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default=defaults.API_HOST,
                   help="API address (default: %(default)s; another address needs care: --token)")
    p.add_argument("--port", type=int, default=defaults.API_PORT,
                   help="API port (default: %(default)s)")
    p.add_argument("--token", default=os.environ.get("FLEETSYNC_TOKEN"),
                   help="bearer token the API requires (default: $FLEETSYNC_TOKEN)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fleetsync.ledger.db import LedgerError
    from .dispatch import DispatchError
    from .inventory import InventoryError
    try:
        if args.command == "run":
            from . import inventory
            # The slowest check first, in the background, while the imports go on.
            loading = inventory.Loading(args.inventory)
            from . import commands
            return commands.run(args, loading)
        from . import commands
        return getattr(commands, args.command)(args)
    except (UsageError, LedgerError, InventoryError, DispatchError, sizes.SizeError) as e:
        print(f"fleetsync: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


if __name__ == "__main__":
    entry()
