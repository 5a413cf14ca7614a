"""The defaults the ledger itself needs (the API's pages, when a run counts as live),
with their reasons. The command line's and the dispatcher's are in
controller/defaults.py, which may read these; the ledger reads nothing above it."""

# /results serves the newest this many attempts: the API document's retained_limit
# (100,000 rows of a few hundred bytes: a page of them stays cheap to read).
RETAINED_LIMIT = 100_000
RESULTS_PAGE = 100         # default page size of /results when a request names a page
LOGS_LIMIT = 100           # default number of warnings (and of errors) in /logs
ENTRIES_PAGE = 1000        # default page of entries in /batches/<task_id>
# A run is live while its controller's heartbeat (written every second) is younger
# than this: a loaded controller may miss a few, a dead one is seen within seconds.
LIVE_AFTER_HEARTBEAT = 15.0
# `fleetsync scan` (ledger/census.py) names this many examples of each kind (largest
# directories, odd names, unreadable and excluded entries): enough to act on, and a
# JSON answer of bounded size whatever the tree.
CENSUS_EXAMPLES = 20
# What one entry of SRC costs the ledger once it is copied (its batch_files row and
# indexes, its share of batches, attempts and the log): ~1.3 GiB at 10M entries of
# ordinary path lengths. The ledger's own figure (its size over its entries) is used
# when larger: long names cost more.
LEDGER_BYTES_PER_ENTRY = 140
# The checksum a new ledger records of every file (ledger/custody.py): rsync's own
# transfer checksum, so recording it while copying reads nothing more; `xxhsum -H2`
# checks it. A ledger keeps the algorithm it was created with.
CHECKSUM_CHOICE = "xxh128"
# `fleetsync report` plots the throughput over the migration's span in this many
# equal spans of time: fine enough to show a stall, a plot of bounded size.
REPORT_BUCKETS = 60
