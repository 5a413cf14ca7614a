"""The one shape of every error the API returns, and the one helper that builds it.

    {"error": {"status": 404, "message": "no batch with task_id 7"}}
"""
from __future__ import annotations

import json

import bottle

JSON_TYPE = "application/json"


def error_body(status: int, message: str) -> dict:
    return {"error": {"status": status, "message": message}}


def bad_request(message: str) -> bottle.HTTPError:
    return bottle.HTTPError(400, message)


def not_found(message: str) -> bottle.HTTPError:
    return bottle.HTTPError(404, message)


def unauthorized() -> bottle.HTTPError:
    return bottle.HTTPError(401, "a valid 'Authorization: Bearer <token>' header is required",
                            **{"WWW-Authenticate": 'Bearer realm="fleetsync"'})


def unavailable(message: str) -> bottle.HTTPError:
    return bottle.HTTPError(503, message)


def handle(err: bottle.HTTPError) -> str:
    """Bottle's error handler for every status: Bottle's own 404 and 405 come here too."""
    status = err.status_code
    if status >= 500 and status != 503:
        # The traceback went to the server log; the client learns nothing of the internals.
        message = "internal error"
    else:
        message = err.body if isinstance(err.body, str) and err.body else err.status_line
    if status == 405:
        bottle.response.set_header("Allow", "GET, HEAD")   # Bottle names GET alone
    bottle.response.content_type = JSON_TYPE
    return json.dumps(error_body(status, message))
