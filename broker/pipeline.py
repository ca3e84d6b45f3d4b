"""Pipelining: plain reads sent behind a running read on the same connection.

MySQL answers commands in the order it reads them, so with ``pipeline_depth
> 1`` a read that finds no idle connection may be written behind a fresh
read on a busy one instead of waiting in the queue; `Backend` cuts the
responses apart in order. Only a plain read qualifies (`pipeable`): its
result does not depend on what ran before it on the connection, it leaves
nothing behind for what runs after, and repeating it is harmless (a read hit
by a KILL QUERY meant for the one ahead of it runs again; see
`Dispatch._query_done`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from broker.backend import Backend
from broker.cancel import fail_unsent
from client.wire import statement
from client.wire.mysql import COM_QUERY
from client.wire.protocol import Op

if TYPE_CHECKING:
    from broker.pool import Pool
    from broker.request import Request

# Pipeline a read only behind one sent this recently: one that has run longer
# may be slow, and whatever waits behind it on its connection waits as long.
PIPELINE_WINDOW = 0.002
MAX_PIPED_BYTES = 65536  # longer statements gain nothing from sharing a trip


def pipeable(req: Request) -> bool:
    """Whether a request is a plain read that may wait behind another read."""
    body = req.body
    return (
        req.op == Op.QUERY
        and len(body) < MAX_PIPED_BYTES
        and statement.is_read(body)
        and statement.leaves_session_clean(body)
    )


def target(pool: Pool) -> Backend | None:
    """Return the busy connection with the fewest reads behind a fresh read."""
    room = pool.config.pipeline_depth - 1
    fresh = time.monotonic() - PIPELINE_WINDOW
    best = None
    for backend in pool.backends:
        if (
            backend.pipe_ok
            and backend.request is not None
            and not backend.cancelling
            and backend.head_since >= fresh
            and len(backend.piped) < room
            and (best is None or len(backend.piped) < len(best.piped))
        ):
            best = backend
    return best


def pipe(backend: Backend, req: Request) -> None:
    """Send req's read behind the command backend runs."""
    backend.pipe(COM_QUERY + req.body, req)
    backend.pool.metrics.pipelined += 1


def fill(backend: Backend) -> None:
    """Send the plain reads at the head of the queue behind the one just sent."""
    pool = backend.pool
    queue = pool.queue
    room = pool.config.pipeline_depth - 1
    while queue and queue[0].pipeable and len(backend.piped) < room:
        req = pool.dequeue()
        if time.monotonic() < req.deadline:
            pipe(backend, req)
        else:
            fail_unsent(req)
