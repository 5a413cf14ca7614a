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
# The checksum algorithm of a ledger whose options name none (issue 23): rsync's own
# transfer checksum, what custody records by default.
CHECKSUM_CHOICE = "xxh128"
# `fleetsync report` plots the throughput over the migration's span in this many
# equal spans of time: fine enough to show a stall, a plot of bounded size.
REPORT_BUCKETS = 60
