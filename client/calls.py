"""Every client operation once, sans I/O: generators that yield the calls they need.

An operation is a generator (psycopg 3's ``generators.py`` is the model). It
yields a `Call`, one request to the broker, is sent the reply as ``(status,
body)`` or has the failure thrown in, and returns its result. A driver runs
it: `client.driver.Driver` in the calling thread, `client.aio_driver` on an
event loop. Neither the operations nor `Scope` touch a socket, so the sync and
async clients run the same code and tests drive it with scripted replies.
(`Scope.failed` reads the clock: whether a retry still fits the deadline.)

The pinned objects' operations (transaction, session, stream) are in
`client.pins`; the rules for a request that got no reply in `client.outcome`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from client import errors, outcome
from client.packets import Codec
from client.result import Result
from client.wire import protocol, zmtp
from client.wire.protocol import Op, Status

if TYPE_CHECKING:
    from client.settings import BaseClient, Params

T = TypeVar("T")

GRACE = 2.0  # extra wait past the deadline for the broker's QueryTimeout reply
CONNECT_RETRY = 0.05  # seconds between attempts while the broker's socket is absent

Reply = tuple[int, Any]
Operation = Generator["Call", Reply, T]

_PACKETS = Status.PACKETS


class Call:
    """One request an operation needs sent: op, pin, body and seconds to wait.

    ``frees`` is, for an op that opens a pin, the op that closes it: a reply
    that arrives after its caller gave up (a cancelled task) must not leave
    the pin held.
    """

    __slots__ = ("body", "frees", "op", "pin", "timeout")

    def __init__(
        self, op: int, pin: int, body: Any, timeout: float, frees: int | None = None
    ) -> None:
        self.op = op
        self.pin = pin
        self.body = body
        self.timeout = timeout
        self.frees = frees

    def __repr__(self) -> str:
        return f"<Call {Op(self.op).name} pin={self.pin} timeout={self.timeout}>"


def expect(reply: Reply, status: int, op: int) -> Any:
    """Return the body of a reply of the expected status, or raise what it carries."""
    got, body = reply
    if got == status:
        return body
    if got == Status.ERROR:
        raise errors.from_wire(body)
    raise errors.InterfaceError(
        errors.ER_BAD_REQUEST, f"unexpected reply status {got!r} to op {op}"
    )


def late_pin(reply: Reply) -> int:
    """Return the pin a reply opened (one nobody waits for any more), or 0."""
    status, body = reply
    if status == Status.SERVED:  # a replica's reply wraps the usual one
        status, body = body[1], body[2]
    if status == Status.VALUE:
        pin = body[0] if isinstance(body, list) else body  # BEGIN with sql: a pair
        return pin if isinstance(pin, int) else 0
    if status == Status.CHUNK and not body[1]:
        return body[0]
    return 0


class Scope:
    """What the operations of one thread (or one event loop) share.

    The Client's settings and pool info, and a codec: pymysql's decoding keeps
    state, so threads and event loops never share one. Both drivers build
    their request frames and judge their failures here.
    """

    __slots__ = ("client", "codec")

    def __init__(self, client: BaseClient) -> None:
        self.client = client
        self.codec: Codec | None = None

    def hello(self, timeout: float | None) -> Operation[Codec]:
        """Return this scope's codec, asking the broker for the pool's info once."""
        client = self.client
        if client.info is None:
            reply = yield Call(Op.HELLO, 0, client.who(), client.wait(timeout))
            client.info = expect(reply, Status.VALUE, Op.HELLO)
        codec = self.codec
        if codec is None:  # tasks that waited for the same HELLO make one codec
            codec = self.codec = self.new_codec()  # ~20 ms: pymysql's set-up
        return codec

    def new_codec(self, refill: Callable[[], bytes] | None = None) -> Codec:
        """Return a codec of its own (a stream's), once the pool's info is known."""
        info = self.client.info
        if info is None:
            raise errors.InterfaceError(0, "the pool's info is not known yet")
        return Codec(
            info[protocol.INFO_CHARSET], info[protocol.INFO_SERVER_STATUS], refill
        )

    def forget(self) -> None:
        """Drop the pool's info and codec: a restarted broker may serve another."""
        self.client.info = None
        self.codec = None

    def request(self, req_id: int, call: Call) -> bytes:
        """Return the frame of call, or raise InterfaceError if it is over the limit."""
        client = self.client
        frame = protocol.encode_request(
            req_id, call.op, client.pool, call.timeout, call.pin, call.body
        )
        info = client.info
        if info is not None and len(frame) > info[protocol.INFO_MAX_MESSAGE_BYTES]:
            raise errors.InterfaceError(
                errors.ER_TOO_LARGE,
                f"request of {len(frame)} bytes exceeds the broker's "
                f"max_message_bytes ({info[protocol.INFO_MAX_MESSAGE_BYTES]})",
            )
        return frame

    @staticmethod
    def cancel_request(req_id: int, target: int) -> bytes:
        """Return the frame asking the broker to stop request target."""
        return protocol.encode_request(req_id, Op.CANCEL, "", GRACE, 0, target)

    def failed(
        self,
        err: BaseException,
        call: Call,
        start: float,
        sent_by: float,
        *,
        sent: bool,
        unread: bool,
    ) -> errors.Error | None:
        """Return the error for an attempt that failed with err; None: send again.

        A request that provably never reached a broker (not sent whole, or
        left unread by one that closed: a restart) is sent again while its
        deadline (sent_by, monotonic) allows, reads and writes alike. A
        timeout is final. start is when the call began, for the message.
        """
        now = time.monotonic()
        endpoint = self.client.endpoint
        if isinstance(err, PermissionError):
            error: errors.Error = errors.BrokerUnavailable(
                errors.ER_BROKER_UNAVAILABLE,
                f"cannot reach the broker: no permission on {self.client.ipc_path} "
                "(is this user in its group?)",
            )
        elif isinstance(err, zmtp.Refused):  # final: the broker said why
            error = errors.BrokerUnavailable(
                errors.ER_BROKER_UNAVAILABLE,
                f"the broker at {endpoint} refused the connection: {err}",
            )
        else:
            timed_out = isinstance(err, TimeoutError)
            if not timed_out and (unread or not sent) and now + CONNECT_RETRY < sent_by:
                return None
            error = outcome.no_reply(
                endpoint,
                call.op,
                call.body,
                now - start,
                sent=sent,
                unread=unread,
                why="" if timed_out else str(err) or type(err).__name__,
            )
        self.forget()
        return error


# Operations ------------------------------------------------------------------------


def query(
    scope: Scope,
    sql: str,
    params: Params,
    timeout: float | None,
    pin: int = 0,
    replica: bool = False,
) -> Operation[Result]:
    """Run one statement; with replica, a plain read may run on a replica."""
    codec = scope.codec
    if codec is None:
        codec = yield from scope.hello(timeout)
    body = codec.render(sql, params)
    wait = scope.client.wait(timeout)
    if replica:
        reply = yield Call(Op.QUERY_REPLICA, pin, body, wait)
        served_by, _, packets = expect(reply, Status.SERVED, Op.QUERY_REPLICA)
        result = codec.decode(packets)
        result.served_by = served_by
        return result
    status, packets = yield Call(Op.QUERY, pin, body, wait)
    if status != _PACKETS:
        packets = expect((status, packets), _PACKETS, Op.QUERY)
    return codec.decode(packets)


def executemany(
    scope: Scope,
    sql: str,
    seq_params: Iterable[Params],
    timeout: float | None,
    pin: int = 0,
) -> Operation[Result]:
    """Run sql once per parameter set, batched as pymysql does; rowcount totals."""
    codec = scope.codec
    if codec is None:
        codec = yield from scope.hello(timeout)
    statements = codec.render_many(sql, seq_params)
    if not statements:
        return Result([], (), 0, None)
    call = Call(Op.EXECUTEMANY, pin, statements, scope.client.wait(timeout))
    replies = expect((yield call), Status.BATCH, Op.EXECUTEMANY)
    # The broker answers every statement or errs, so there is one at least.
    return Result.combine([codec.decode(packets) for packets in replies])


def value(
    scope: Scope, op: Op, timeout: float | None, pin: int = 0, body: Any = None
) -> Operation[Any]:
    """Send op (ping, stats, a pin's end); return its reply's plain value."""
    reply = yield Call(op, pin, body, scope.client.wait(timeout))
    return expect(reply, Status.VALUE, op)


def pool_info(scope: Scope, timeout: float | None) -> Operation[dict[str, Any]]:
    """Return the pool's HELLO answer: charset, server version, message limit."""
    if scope.codec is None or scope.client.info is None:
        yield from scope.hello(timeout)
    return scope.client.info  # type: ignore[return-value]


def codec(scope: Scope, timeout: float | None) -> Operation[Codec]:
    """Return the scope's codec, asking the pool's info first if need be."""
    found = scope.codec
    if found is None:
        found = yield from scope.hello(timeout)
    return found
