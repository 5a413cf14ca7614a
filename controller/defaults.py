"""Every default of fleetsync, in one place: the CLI, the dispatcher, the walk and
the docs read them from here.

Why these values:
- A batch of at most 500 entries or 100 MiB is about a second of rsync on a local
  disk: long next to Ansible's cost per batch, short enough that a lost batch
  costs little to copy again. 64 KiB of names keeps a batch's file list,
  compressed and encoded, well under the 128 KiB one command argument may take.
- 3 retries: a transient error (a network blip, a file changing under rsync)
  rarely survives three; a persistent one should not hold the run up longer.
- 120 s of silence loses a host holding a batch: a running item beats every 5 s
  at most (rsync.item_command), so only a host that is gone (frozen, killed, cut
  off) goes that long unheard; ssh keepalives notice a dead link sooner. A host
  whose beats cannot be heard (paramiko) is given its batch's bytes at 10 MiB/s
  (or at its rsync's cap, when lower) on top.
- The API binds 127.0.0.1: only the operator's explicit --bind opens it wider.
"""
from __future__ import annotations

import os

from fleetsync.api import defaults as api_defaults
from fleetsync.ledger import defaults as ledger_defaults

KiB, MiB = 1024, 1024 * 1024

BATCH_FILES = 500              # entries per batch at most
BATCH_BYTES = 100 * MiB        # bytes per batch at most
BATCH_BYTES_TEXT = "100MiB"    # the same, as --batch-bytes shows it
BATCH_NAME_BYTES = 64 * KiB    # bytes of names per batch at most

# Walker processes: the cores (a walk on a local disk is CPU-bound), at most 6:
# each producer with its threads costs ~18 MiB PSS (bench/README.md), so the
# whole walk stays under 150 MB; on a slow mount the threads, not P, do the work.
PRODUCERS = min(os.cpu_count() or 2, 6)
# Stat threads per producer, started only when SRC answers like a network mount
# (most stats slower than 0.2 ms): enough to keep a 1 ms mount busy, see
# bench/README.md (walk on a slow mount); a thread costs ~100 KiB.
WALK_THREADS = 16
# `fleetsync scan` looks at its producers this often (a dead one is replaced, as the
# dispatcher's loop does during a run), and at once when one ends.
WALK_POLL = 0.2
MAX_RETRIES = 3                # retries of a batch after a retryable rsync exit
# --max-delete: a delta pass on a live tree deletes what its users deleted since the
# last pass, well under a tenth of it; more is far more often a mistake (the wrong
# SRC, a half-restored snapshot) than routine (controller/delete_guard.py says more).
MAX_DELETE = "10%"
HEARTBEAT_TIMEOUT = 120.0      # seconds of silence that lose a host holding a batch
STALL_RATE = 10 * MiB          # ...plus its held batch's bytes at this rate (paramiko)
ITEMS_PER_RUN = 500            # loop items (~1.5 s of batches each) per host's playbook run
SLOTS = 2                      # batches a host copies at once (fleetsync_slots)
# A lost or unreachable host is tried again after BACKOFF_FIRST seconds, doubling
# up to BACKOFF_MAX: a host back from a reboot rejoins within minutes, a dead one
# costs one failed connection attempt every ten minutes.
BACKOFF_FIRST, BACKOFF_MAX = 15.0, 600.0
INVENTORY_EVERY = 2.0          # seconds between looks at the inventory (hosts join, leave)
HEARTBEAT_EVERY = 1.0          # seconds between heartbeat writes (the API's freshness)

LEDGER = "fleetsync.db"
API_HOST, API_PORT = api_defaults.HOST, api_defaults.PORT   # the API's own (api/defaults.py)

# Excluded from a new migration unless --no-default-excludes, as fpsync does (its
# fpart -x options): the snapshot directories of NetApp (.snapshot, .snapshot.N) and
# ZFS (.zfs), and of IBM Spectrum Scale / some NAS (.ckpt). Copying them copies every
# snapshot of the tree again. Name patterns (no slash): at any depth, any type.
DEFAULT_EXCLUDES = ("- .snapshot*", "- .zfs", "- .ckpt")

# The checksum a new ledger records of each file: the ledger's own default (a ledger
# older than custody takes it too), said here for the command line.
CHECKSUM_CHOICE = ledger_defaults.CHECKSUM_CHOICE
# A verify's summary names this many files that are not intact (the view
# custody_problems names them all): enough to act on, bounded however many differ.
NAMED_PROBLEMS = 20
# `fleetsync report --format html` (controller/report_html.py): the failures it lists
# and the rows of its table, at most. A browser shows 10,000 rows of a table at once
# (about 3 MB of HTML); the CSV, complete, is the record of every entry.
REPORT_FAILURES = 10_000
REPORT_TABLE_ROWS = 10_000
# A dispatch run started at the launch of `fleetsync run` (hostrun.FleetRun.ahead)
# does not know its hosts yet: its forks are capped this high instead, one per host.
FORKS_AHEAD = 1000
# How long a dropped run started ahead is given to end (it is signalled first).
DROP_WAIT = 5.0
# How long reading the inventory may take (ansible-inventory, or the run started ahead),
# and how often the wait for the latter looks.
INVENTORY_WAIT = 120.0
HOSTS_POLL = 0.005
