"""A plain WSGI app on the broker: ``gunicorn --preload examples.wsgi_app:app``.

The module-level `client` functions use one default Client per process. This
module uses it at import, in the master before gunicorn or uwsgi forks its
workers, and needs no post_fork hook: a child that finds the client made by
another pid opens its own ZeroMQ socket, and no MySQL connection exists in
any of them to be shared. The endpoint is ``$BROKER_ENDPOINT``.

``GET /hit`` writes a row with a fresh token in a transaction, reads it back
by its id, and answers JSON saying which process served it and whether the
row it read was its own.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import client

SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    token CHAR(32) NOT NULL,
    pid INT NOT NULL
)
"""

client.query(SCHEMA)  # at import: before the fork under --preload


def record_hit() -> dict[str, Any]:
    """Insert a row in a transaction and read it back: one request's work."""
    token = secrets.token_hex(16)
    with client.transaction() as tx:
        row_id = tx.query(
            "INSERT INTO hits (token, pid) VALUES (%s, %s)", (token, os.getpid())
        ).lastrowid
        got = tx.query("SELECT token FROM hits WHERE id = %s", (row_id,)).scalar()
    return {"pid": os.getpid(), "id": row_id, "token": token, "own_row": got == token}


def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """Answer ``/hit`` with `record_hit`'s JSON; anything else is 404."""
    if environ.get("PATH_INFO") != "/hit":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(record_hit()).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
