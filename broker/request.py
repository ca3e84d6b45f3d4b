"""One client request and one pin: what the broker holds while serving them.

A `Request` lives from its arrival to its one reply. A `Pin` holds a worker
for one client's transaction, session or stream between its requests.
`check_body` vets the untrusted part of a request before anything acts on it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from broker.ipc import Peer
from client.pinned import ISOLATION_LEVELS
from client.wire.protocol import Op, seconds_left

if TYPE_CHECKING:
    from broker.pool import Pool
    from broker.worker import Worker

PeerId = bytes | Peer  # a ROUTER routing id, or a native ipc connection


class Request:
    """One client request, from its arrival to its one reply."""

    __slots__ = (
        "body",
        "bystander",
        "cancelled",
        "client",
        "deadline",
        "index",
        "op",
        "owner",
        "peer",
        "pin",
        "pipeable",
        "pool",
        "received",
        "replies",
        "req_id",
        "served_by",
        "steps",
        "timeout",
    )

    def __init__(
        self, peer: PeerId, req_id: int, op: int, pool: Pool | None, pin: int, body: Any
    ) -> None:
        self.peer = peer
        self.req_id = req_id
        self.op = op
        self.pool = pool
        self.pin = pin
        self.body = body
        self.client: Any = None  # the key counted in Server._inflight, until answered
        self.owner: Any = None  # who may use a pin this request opens (see Pin)
        self.cancelled = (
            ""  # why a write was cancelled; its reply waits for the outcome
        )
        self.pipeable: bool | None = None  # a plain read that may share a connection
        self.bystander = False  # pipelined while a KILL QUERY was on its way
        self.received = time.monotonic()
        self.deadline = 0.0
        self.timeout = 0.0
        self.index = 0
        self.replies: list[bytes] = []
        self.steps: list[bytes] = []
        self.served_by: str | None = None  # a replica op's server, told in the reply


def start_by(req: Request, deadline: list[float] | None, same_host: bool) -> bool:
    """Bound req's deadline by the one its client sent; False when already past.

    The client's own deadline runs from when it sent the request, ours from
    when we read it: a request that sat unread in a stopped broker's socket
    must not start later than its caller was prepared to wait for it.
    """
    if deadline is None:
        return True  # protocol version 1: the deadline starts here
    left = seconds_left(deadline, same_host)
    req.deadline = min(req.deadline, req.received + left)
    return left > 0


class Pin:
    """A worker held for one client's transaction, session or stream."""

    __slots__ = (
        "done",
        "id",
        "kind",
        "last_active",
        "opened",
        "owner",
        "pending",
        "pool",
        "request",
        "who",
        "worker",
    )

    def __init__(
        self, pin_id: int, kind: str, worker: Worker, who: Any, owner: Any
    ) -> None:
        self.id = pin_id
        # The client process (host, pid) or CurveZMQ key that opened it; only
        # it may use the pin. None (plain tcp) leaves the unguessable id alone.
        self.owner = owner
        self.kind = kind  # "transaction", "session" or "stream"
        self.worker = worker
        self.pool: Pool = worker.pool
        self.who = who if isinstance(who, dict) else {}
        self.opened = self.last_active = time.monotonic()
        self.request: Request | None = None  # a stream's chunk request in flight
        self.pending: Request | None = None  # arrived while a cancel was finishing
        self.done = False  # a stream whose last chunk has gone out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Return this pin as `broker status` shows it: who holds what, how long."""
        return {
            "id": f"{self.id:016x}"[:6],  # for people; not enough to use the pin
            "kind": self.kind,
            "pool": self.pool.name,
            "age_s": round(now - self.opened, 1),
            "idle_s": round(now - self.last_active, 1),
            "connection": self.worker.thread_id,
            "who": self.who,
        }


def begin_statements(body: dict) -> list[bytes]:
    """Return the statements that open a transaction as a BEGIN request asks."""
    steps = []
    if body.get("isolation"):
        steps.append(b"SET TRANSACTION ISOLATION LEVEL " + body["isolation"].encode())
    steps.append(
        b"START TRANSACTION READ ONLY" if body.get("readonly") else b"START TRANSACTION"
    )
    return steps


_UNPINNED = frozenset(
    {
        Op.HELLO,
        Op.BEGIN,
        Op.SESSION_OPEN,
        Op.STREAM_OPEN,
        Op.QUERY_REPLICA,
        Op.STREAM_OPEN_REPLICA,
    }
)


def check_body(op: int, pin: int, body: Any) -> str | None:
    """Return what is wrong with a request's body, or None; the body is untrusted."""
    if op == Op.QUERY and type(body) is bytes and body:
        return None  # the common case, first
    if op == Op.QUERY or (
        op == Op.QUERY_REPLICA and not (type(body) is bytes and body)
    ):
        return "query body must be non-empty SQL bytes"
    if op == Op.EXECUTEMANY and (
        type(body) is not list
        or not body
        or not all(type(s) is bytes and s for s in body)
    ):
        return "executemany body must be a non-empty list of SQL bytes"
    if op == Op.BEGIN and (
        type(body) is not dict
        or body.get("isolation") not in (None, *ISOLATION_LEVELS)
        or not (body.get("sql") is None or (type(body["sql"]) is bytes and body["sql"]))
    ):
        levels = ", ".join(sorted(ISOLATION_LEVELS))
        return f"begin body must be a map with isolation one of {levels}"
    if op == Op.SESSION_OPEN and type(body) is not dict:
        return "session body must be a map"
    if op in (Op.STREAM_OPEN, Op.STREAM_OPEN_REPLICA) and not (
        type(body) is list
        and len(body) == 3
        and type(body[0]) is bytes
        and body[0]
        and type(body[1]) is int
        and 1 <= body[1] <= 1_000_000
    ):
        return "stream body must be [SQL bytes, chunk_rows 1..1000000, who]"
    if pin and op in _UNPINNED:
        return f"op {Op(op).name} cannot carry a pin"
    if not pin and op in (
        Op.COMMIT,
        Op.ROLLBACK,
        Op.SESSION_CLOSE,
        Op.STREAM_NEXT,
        Op.STREAM_CLOSE,
    ):
        return f"op {Op(op).name} needs a pin"
    return None
