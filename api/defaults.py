"""The API's defaults, with their reasons: read by the API's own server and by the
controller's command line (a light module: no web framework is imported with it)."""

HOST = "127.0.0.1"   # the API is read-only but not public: another --bind is the operator's choice
PORT = 8000          # the API document's port
# Threads share one GIL: in bench/api.py (16 clients, 2 cores) 4 threads served
# about twice the requests of 8, with a third of the p99; 2 were too few.
THREADS = 4
TOKEN_ENV = "FLEETSYNC_API_TOKEN"   # how a run hands its API process the token (not argv: ps shows it)
