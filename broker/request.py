"""One client request and one pin: what the broker holds while serving them.

A `Request` lives from its arrival to its one reply, which it sends itself
(`answer`, `reply`, `fail`) through the `Sink` that decoded it: code below
the frontend answers a request without knowing the frontend. A `Pin` holds a
backend for one client's transaction, session or stream between its
requests; `Pins` is the table of open pins. `check_body` vets the untrusted
part of a request before anything acts on it.
"""

from __future__ import annotations

import collections
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

from broker.ipc import Peer
from broker.pinlimit import PinLimits
from client import errors
from client.wire.protocol import ISOLATION_LEVELS, Op, Status, seconds_left

if TYPE_CHECKING:
    from broker.backend import Backend
    from broker.pool import Pool

PeerId = bytes | Peer  # a ROUTER routing id, or a native ipc connection
ENDED_PINS_KEPT = 4096  # remember why recent pins ended, to say so to late users


class Sink(Protocol):
    """Where a request's one reply goes: the frontend that decoded it."""

    def answer(self, req: Request, status: int, body: Any) -> None:
        """Send req's reply."""

    def pool_info(self, pool: Pool) -> dict[str, Any]:
        """Return what a HELLO reply says of pool's server and the broker."""


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
        "sink",
        "steps",
        "timeout",
    )

    def __init__(
        self,
        peer: PeerId,
        req_id: int,
        op: int,
        pool: Pool | None,
        pin: int,
        body: Any,
        sink: Sink,
    ) -> None:
        self.sink = sink
        self.peer = peer
        self.req_id = req_id
        self.op = op
        self.pool = pool
        self.pin = pin
        self.body = body
        self.client: Any = None  # the key counted in Frontend._inflight, until answered
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

    def answer(self, status: int, body: Any) -> None:
        """Send the one reply, uncounted (pins, ping, hello)."""
        self.sink.answer(self, status, body)

    def reply(self, status: int, body: Any) -> None:
        """Send the one reply with a result; count it served in its pool."""
        if self.served_by is not None:  # a replica op: say which server ran it
            status, body = Status.SERVED, [self.served_by, status, body]
        self.sink.answer(self, status, body)
        pool = self.pool
        if pool is not None:
            pool.metrics.latencies.append(time.monotonic() - self.received)
            pool.metrics.served += 1

    def fail(self, err: errors.Error) -> None:
        """Send the one reply as an error; count it failed in its pool."""
        self.sink.answer(self, Status.ERROR, errors.to_wire(err))
        if self.pool is not None:
            self.pool.metrics.failed += 1


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
    """A backend held for one client's transaction, session or stream."""

    __slots__ = (
        "backend",
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
    )

    def __init__(
        self, pin_id: int, kind: str, backend: Backend, who: Any, owner: Any
    ) -> None:
        self.id = pin_id
        # The client process (host, pid) or CurveZMQ key that opened it; only
        # it may use the pin. None (plain tcp) leaves the unguessable id alone.
        self.owner = owner
        self.kind = kind  # "transaction", "session" or "stream"
        self.backend = backend
        self.pool: Pool = backend.pool
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
            "connection": self.backend.thread_id,
            "who": self.who,
        }


class Pins:
    """The open pins by id, why recent ones ended, and the per-client caps."""

    def __init__(self) -> None:
        self.open: dict[int, Pin] = {}
        self.limits = PinLimits()  # max_pins_per_client
        self._ended: collections.OrderedDict[int, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.open)

    def add(self, backend: Backend, kind: str, req: Request, who: Any) -> Pin:
        """Open a pin on backend for the request that asked for it."""
        pin_id = secrets.randbits(63) or 1  # a capability: unguessable
        pin = Pin(pin_id, kind, backend, who, req.owner)
        self.open[pin_id] = pin
        self.limits.pinned(req, pin)
        return pin

    def find(self, req: Request) -> Pin | str:
        """Return the pin req names, if its sender owns it, or why there is none."""
        pin = self.open.get(req.pin)
        if pin is not None and pin.owner in (None, req.owner):
            return pin
        return self._ended.get(req.pin, "unknown pin")

    def end(self, pin: Pin, reason: str) -> None:
        """Close pin's entry: later requests naming it hear reason."""
        self.open.pop(pin.id, None)
        self.limits.ended(pin)
        self._ended[pin.id] = reason
        if len(self._ended) > ENDED_PINS_KEPT:
            self._ended.popitem(last=False)
        if pin.pending is not None:
            pin.pending.fail(
                errors.OperationalError(
                    errors.ER_BAD_PIN, f"this {pin.kind} ended: {reason}"
                )
            )
            pin.pending = None


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
