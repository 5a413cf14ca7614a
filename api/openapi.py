"""/openapi.json: an OpenAPI 3 description written from the route table itself."""
from __future__ import annotations

import re

from fleetsync.ledger.queries import RETAINED_LIMIT
from fleetsync.ledger.schema import AttemptStatus, BatchState
from fleetsync.ledger.states import FileVerdict, LogLevel, RunState, WorkerState

INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}


def _obj(props: dict, extra: bool = True) -> dict:
    # Every listed key is always present; new keys may be added later (never renamed).
    return {"type": "object", "required": list(props), "properties": props,
            "additionalProperties": extra}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


_RESULT = _obj({
    "worker_id": _nullable(STR), "task_id": INT,
    "status": {"type": "string", "enum": [s.value for s in AttemptStatus]},
    "retry_count": INT, "rsync_exit_code": _nullable(INT),
    "stats": _obj({
        "bytes_sent": _nullable(INT), "bytes_received": _nullable(INT),
        "start_ts": _nullable(NUM), "end_ts": _nullable(NUM),
        "file_count": INT, "directory_count": INT, "estimated_bytes": INT}),
    "errors": {"type": "array", "items": STR},
    "received_ts": NUM,
    "attempt_id": INT,
})

SCHEMAS = {
    "Status": _obj({k: INT for k in ("total_batches", "completed_batches", "failed_batches",
                                     "queue_depth", "producers_done")}),
    "Progress": _obj({k: INT for k in ("total", "completed", "failed", "pending")}),
    "Throughput": _obj({
        "batches_per_sec": NUM, "elapsed_sec": NUM, "batches_completed": INT,
        "batches_failed": INT, "files_processed": INT, "bytes_processed": INT,
        "gb_processed": NUM, "bytes_per_sec": NUM, "gb_per_sec": NUM, "files_per_sec": NUM}),
    "Run": _obj({
        "state": {"type": "string", "enum": [s.value for s in RunState]},
        "last_heard": _nullable({**STR, "description": "the controller's last heartbeat, "
                                                       "master local time"}),
        "last_heard_ts": _nullable(NUM),
        "now": {**STR, "description": "master local time of this answer"},
        **{k: INT for k in ("batches_total", "batches_done", "batches_failed",
                            "batches_running", "batches_waiting", "bytes_total", "bytes_done",
                            "bytes_failed", "bytes_running", "bytes_in_flight")},
        "percent": NUM,
        "bytes_per_sec": _nullable({**NUM, "description": "the rate now; null when no run "
                                                          "goes on or it is not known yet"}),
        "eta_sec": _nullable(NUM)}),
    "Window": _obj({
        "bwlimit": {**STR, "description": "the fleet's cap or timetable, as given "
                                          "(--bwlimit, `fleetsync bwlimit`)"},
        "cap_bytes_per_sec": _nullable({**INT, "description": "the cap in force now; "
                                                              "null: none"}),
        "cap": STR,
        "next_change_ts": _nullable({**NUM, "description": "when the timetable next "
                                                           "changes the cap; null: never"}),
        "next_change": _nullable({**STR, "description": "the same, master local time"}),
        "next_cap_bytes_per_sec": _nullable(INT),
        "next_cap": _nullable(STR),
        "now": {**STR, "description": "master local time of this answer"}}),
    "Workers": _obj({"heartbeats": {
        "type": "object", "additionalProperties": {
            "type": "string", "pattern": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"}},
        "workers": {"type": "object", "additionalProperties": _obj({
            "host": STR, "state": {"type": "string", "enum": [s.value for s in WorkerState]},
            "next_try": _nullable({**STR, "description": "a lost worker's next try, "
                                                          "master local time"})})}}),
    "Logs": _obj({"warnings": {"type": "array", "items": STR},
                  "errors": {"type": "array", "items": STR},
                  "lines": {"type": "array", "items": _obj({
                      "time": {**STR, "description": "master local time"}, "ts": NUM,
                      "level": {"type": "string",
                                "enum": [LogLevel.WARNING.value, LogLevel.ERROR.value]},
                      "message": STR})}}),
    "Result": _RESULT,
    "Results": _obj({"results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
                     "retained_limit": {"type": "integer", "enum": [RETAINED_LIMIT]},
                     "retained_count": INT}),
    "Batch": _obj({
        "batch": _obj({
            "task_id": INT, "state": {"type": "string", "enum": [s.value for s in BatchState]},
            "file_count": INT, "directory_count": INT, "estimated_bytes": INT,
            "retry_count": INT, "claim": INT, "worker_id": _nullable(STR),
            "producer_id": _nullable(INT), "last_exit_code": _nullable(INT),
            "created_ts": NUM, "claimed_ts": _nullable(NUM), "finished_ts": _nullable(NUM)}),
        "entries": {"type": "array", "items": _obj({
            "path": {**STR, "description": "UTF-8, with \\xNN escapes for other bytes"},
            "path_hex": {**STR, "description": "the exact path bytes, hex"},
            "is_dir": {"type": "boolean"}, "size": INT,
            "checksum": {**_nullable(STR), "description": "SRC's checksum recorded while "
                         "copying, ALGO:HEX (rsync's name: xxh128, md5, sha1)"},
            "verified": {**_nullable({"type": "string", "enum": [
                *(v.name.lower() for v in FileVerdict), None]}),
                "description": "what the last verify found at DEST (null: not checked)"}})},
        "entries_total": INT,
        "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}}}),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Error": _obj({"error": _obj({"status": INT, "message": STR}, extra=False)}, extra=False),
}

def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def _parameter(param, where: str) -> dict:
    return {"name": param.name, "in": where, "required": where == "path",
            "description": param.description, "schema": param.schema()}


def describe(routes) -> dict:
    """The OpenAPI document of a route table."""
    paths = {}
    for r in routes:
        path = re.sub(r"<(\w+)>", r"{\1}", r.path)
        if r.response:
            ok = {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.response}"}}}
        elif r.media_type.startswith("text/"):
            ok = {r.media_type.split(";")[0]: {"schema": STR}}
        else:
            ok = {"application/json": {"schema": {"type": "object"}}}
        responses = {"200": {"description": "OK", "content": ok},
                     "405": _error("Only GET and HEAD are allowed")}
        if r.ledger:        # the dashboard page and this document never read it
            responses["503"] = _error("The ledger cannot be read now")
        if r.params or r.path_params:
            responses["400"] = _error("A query or path parameter is invalid")
        if r.path_params:
            responses["404"] = _error("No such object")
        if not r.public:
            responses["401"] = _error("The token is missing or wrong (when one is set)")
        op = {"summary": r.summary, "operationId": path.strip("/").replace("/", "_")
              .replace("{", "").replace("}", "").replace(".", "_") or "dashboard",
              "parameters": [_parameter(p, "path") for p in r.path_params]
              + [_parameter(p, "query") for p in r.params],
              "responses": responses}
        if r.public:
            op["security"] = []
        paths[path] = {"get": op}
    return {
        "openapi": "3.0.3",
        "info": {"title": "fleetsync status API", "version": "1",
                 "description": "Read-only view of a fleetsync ledger. Only GET and HEAD."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        # The token is optional: it is required only when the server was given one.
        "security": [{}, {"bearer": []}],
    }
