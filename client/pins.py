"""The state of transactions, sessions and streams, and their operations, sans I/O.

A pinned object is a pin id (0 until the broker gives one, and again once it
ends) bound to the process, and for the sync client the thread, that opened
it: the pin means "this connection, mid-transaction" to the broker, and a
forked child or another thread using it would interleave statements into
someone else's transaction. Using one from elsewhere raises InterfaceError
and sends nothing. The operations are generators as in `client.calls`; the
classes of `client.pinned` and `client.aio` drive them.

A transaction sends nothing until its first statement, which travels inside
``Op.BEGIN``: a round trip saved, and a block that runs nothing costs none.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pymysql

from client import errors
from client.calls import Call, Operation, Scope, expect
from client.calls import executemany as _executemany
from client.calls import query as _query
from client.packets import weak_refill
from client.result import Result
from client.wire import mysql
from client.wire.protocol import ISOLATION_LEVELS, SERVED_BY_PRIMARY, Op, Status

if TYPE_CHECKING:
    from client.settings import Params

MORE: Any = object()  # Stream.row(): the chunks at hand are used up, fetch more


def check_isolation(isolation: str | None) -> str | None:
    """Return the isolation level in upper case, or raise ProgrammingError."""
    if isolation is not None and isolation.upper() not in ISOLATION_LEVELS:
        raise errors.ProgrammingError(
            0, f"isolation must be one of {sorted(ISOLATION_LEVELS)}, got {isolation!r}"
        )
    return isolation.upper() if isolation else None


class Pinned:
    """What transactions, sessions and streams share: the pin, owner, timeout.

    Args:
        timeout: default seconds of this object's calls; None: the Client's.
        per_thread: bound to the opening thread as well as its process.
    """

    kind = "pinned object"

    def __init__(self, timeout: float | None, per_thread: bool) -> None:
        self.pin = 0
        self.timeout = timeout
        self.pid = os.getpid()
        self.thread = threading.get_ident() if per_thread else None

    def owned(self) -> bool:
        """Whether the calling process (and thread) may use this object."""
        return self.pid == os.getpid() and (
            self.thread is None or self.thread == threading.get_ident()
        )

    def check_owner(self) -> None:
        """Raise InterfaceError unless the calling process (and thread) owns it."""
        if not self.owned():
            where = "process" if self.thread is None else "process and thread"
            thread = "" if self.thread is None else f" thread {self.thread}"
            raise errors.InterfaceError(
                errors.ER_WRONG_OWNER,
                f"this {self.kind} belongs to pid {self.pid}{thread}; "
                f"open your own in this {where}",
            )

    def check_open(self) -> None:
        """Raise InterfaceError unless owned here and open."""
        self.check_owner()
        if not self.pin:
            raise errors.InterfaceError(
                errors.ER_BAD_PIN, f"this {self.kind} is not open"
            )

    def timeout_for(self, timeout: float | None) -> float | None:
        """Return timeout, else this object's default."""
        return self.timeout if timeout is None else timeout

    def abandon(self) -> int:
        """Give up the pin without a reply (a finaliser); return it, 0 if none here."""
        if not self.pin or not self.owned():
            return 0
        pin, self.pin = self.pin, 0
        return pin

    def query(
        self, scope: Scope, sql: str, params: Params, timeout: float | None
    ) -> Operation[Result]:
        """Run one statement on the pinned connection."""
        self.check_open()
        return (
            yield from _query(scope, sql, params, self.timeout_for(timeout), self.pin)
        )

    def executemany(
        self,
        scope: Scope,
        sql: str,
        seq_params: Iterable[Params],
        timeout: float | None,
    ) -> Operation[Result]:
        """Run sql once per parameter set on the pinned connection."""
        self.check_open()
        return (
            yield from _executemany(
                scope, sql, seq_params, self.timeout_for(timeout), self.pin
            )
        )

    def close_pin(self, scope: Scope, op: Op, timeout: float | None) -> Operation[None]:
        """End the pin with op, answered by a plain value; the pin is 0 from here."""
        pin, self.pin = self.pin, 0
        reply = yield Call(op, pin, None, scope.client.wait(self.timeout_for(timeout)))
        expect(reply, Status.VALUE, op)


class TransactionState(Pinned):
    """One transaction: begun with its first statement, ended by commit or rollback."""

    kind = "transaction"

    def __init__(
        self,
        isolation: str | None,
        readonly: bool,
        timeout: float | None,
        per_thread: bool,
    ) -> None:
        super().__init__(timeout, per_thread)
        self.isolation = check_isolation(isolation)
        self.readonly = bool(readonly)
        self.finished = False

    def options(self, scope: Scope) -> dict[str, Any]:
        """Return the body of BEGIN, without its statement."""
        return {
            "isolation": self.isolation,
            "readonly": self.readonly,
            "who": scope.client.who(),
        }

    def begin(self, scope: Scope) -> Operation[None]:
        """Pin a connection and start the transaction, without a statement."""
        self.check_owner()
        if self.pin or self.finished:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "transaction already begun")
        call = Call(
            Op.BEGIN,
            0,
            self.options(scope),
            scope.client.wait(self.timeout),
            Op.ROLLBACK,
        )
        self.pin = expect((yield call), Status.VALUE, Op.BEGIN)

    def query(
        self, scope: Scope, sql: str, params: Params, timeout: float | None
    ) -> Operation[Result]:
        """Run one statement in the transaction; the first one travels with BEGIN."""
        if self.pin or self.finished:
            return (yield from super().query(scope, sql, params, timeout))
        self.check_owner()
        timeout = self.timeout_for(timeout)
        codec = scope.codec
        if codec is None:
            codec = yield from scope.hello(timeout)
        body = {**self.options(scope), "sql": codec.render(sql, params)}
        call = Call(Op.BEGIN, 0, body, scope.client.wait(timeout), Op.ROLLBACK)
        self.pin, packets = expect((yield call), Status.VALUE, Op.BEGIN)
        return codec.decode(packets)

    def executemany(
        self,
        scope: Scope,
        sql: str,
        seq_params: Iterable[Params],
        timeout: float | None,
    ) -> Operation[Result]:
        """Run sql once per parameter set in the transaction (beginning it first)."""
        if not self.pin and not self.finished:
            yield from self.begin(scope)
        return (yield from super().executemany(scope, sql, seq_params, timeout))

    def end(self, scope: Scope, op: Op, timeout: float | None) -> Operation[None]:
        """Commit or roll back (op), and free the connection."""
        self.check_owner()
        if not self.pin and not self.finished:
            self.finished = True  # never begun: nothing to commit or roll back
            return
        if not self.pin:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "transaction is not open")
        timeout = self.timeout_for(timeout)
        pin, self.pin, self.finished = self.pin, 0, True
        codec = scope.codec
        if codec is None:
            codec = yield from scope.hello(timeout)
        reply = yield Call(op, pin, None, scope.client.wait(timeout))
        codec.decode(expect(reply, Status.PACKETS, op))

    def leave(self, scope: Scope, failed: bool) -> Operation[None]:
        """End a ``with`` block: commit, or on an exception roll back."""
        if not self.pin:
            self.finished = True
            return
        if not failed:
            yield from self.end(scope, Op.COMMIT, None)
            return
        try:
            yield from self.end(scope, Op.ROLLBACK, None)
        except errors.Error:
            # The broker rolls back a transaction whose client goes silent, so a
            # failed rollback must not hide the exception that caused it.
            self.pin = 0


class SessionState(Pinned):
    """A connection pinned without a transaction: session state lives here only."""

    kind = "session"

    def open(self, scope: Scope) -> Operation[None]:
        """Pin a connection."""
        self.check_owner()
        if self.pin:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "session already open")
        body = {"who": scope.client.who()}
        call = Call(
            Op.SESSION_OPEN,
            0,
            body,
            scope.client.wait(self.timeout),
            Op.SESSION_CLOSE,
        )
        self.pin = expect((yield call), Status.VALUE, Op.SESSION_OPEN)

    def close(self, scope: Scope, timeout: float | None) -> Operation[None]:
        """End the session; the broker resets the connection before reuse."""
        self.check_owner()
        if self.pin:
            yield from self.close_pin(scope, Op.SESSION_CLOSE, timeout)

    def leave(self, scope: Scope, failed: bool) -> Operation[None]:
        """End a ``with`` block: close, quietly when leaving on an exception."""
        if not self.pin:
            return
        try:
            yield from self.close(scope, None)
        except errors.Error:
            # Leaving on an exception: the broker frees a silent session.
            if not failed:
                raise


class NeedMore(Exception):
    """The stream's packets ran out: fetch the next chunk, then read again."""


class StreamState(Pinned):
    """Rows of one statement pulled from the broker chunk by chunk.

    pymysql's unbuffered reader decodes the rows; when the chunks at hand run
    out it raises `NeedMore` before consuming anything, the driver fetches the
    next chunk (`more`) and the read starts again. A chunk ends on a packet
    boundary, and one whose last packet continues is completed first, so a
    read never stops in mid-row.
    """

    kind = "stream"

    def __init__(
        self,
        sql: str,
        params: Params,
        *,
        chunk_rows: int,
        timeout: float | None,
        replica: bool,
        per_thread: bool,
        conv: tuple[dict, dict, bool] | None = None,
    ) -> None:
        super().__init__(timeout, per_thread)
        self.sql, self.params, self.chunk_rows = sql, params, chunk_rows
        self.replica = replica
        self.conv = conv  # DB-API connection's (decoders, encoders, use_unicode)
        self.served_by: str | None = None  # "primary" or "replica HOST:PORT", once open
        self.result: Any = None  # pymysql's unbuffered result, once open
        self._next: bytes | None = None  # a fetched chunk for the reader to take
        self.done = False  # the broker sent the last chunk and freed the connection
        self.finished = False  # no more rows for the caller

    def open(self, scope: Scope) -> Operation[None]:
        """Send the statement and read up to its first row."""
        self.check_owner()
        codec = scope.codec
        if codec is None:
            codec = yield from scope.hello(self.timeout)
        body = [
            codec.render(self.sql, self.params),
            self.chunk_rows,
            scope.client.who(),
        ]
        wait = scope.client.wait(self.timeout)
        if self.replica:
            call = Call(Op.STREAM_OPEN_REPLICA, 0, body, wait, Op.STREAM_CLOSE)
            reply = expect((yield call), Status.SERVED, call.op)
            self.served_by, _, reply = reply
        else:
            call = Call(Op.STREAM_OPEN, 0, body, wait, Op.STREAM_CLOSE)
            reply = expect((yield call), Status.CHUNK, call.op)
            self.served_by = SERVED_BY_PRIMARY
        packets = yield from self._whole(scope, self._chunk(reply))
        stream_codec = scope.new_codec(weak_refill(self._refill))
        if self.conv is not None:
            stream_codec.decoders, stream_codec.encoders, stream_codec.use_unicode = (
                self.conv
            )
        try:
            self.result = stream_codec.open_stream(packets)
        except errors.Error:
            self.finish()
            raise
        if not self.result.unbuffered_active:
            self.finish()

    def row(self) -> Any:
        """Return the next row from the chunks at hand; None after the last; MORE."""
        if self.finished:
            return None
        self.check_owner()
        if self.result is None:
            return MORE
        try:
            row = self.result.next_row()
        except NeedMore:
            return MORE
        except errors.Error:  # ours (a truncated reply): already a client error
            self.finish()
            raise
        except pymysql.MySQLError as err:  # an error packet in mid-stream
            self.finish()
            raise errors.from_pymysql(err) from err
        except BaseException:
            self.finish()
            raise
        if row is None:
            self.finish()
        return row

    def next_row(self, scope: Scope) -> Operation[Any]:
        """Return the next row, opening the stream or fetching chunks as needed."""
        self.check_owner()
        if self.result is None and not self.finished:
            yield from self.open(scope)
        while (row := self.row()) is MORE:
            self._next = yield from self._whole(scope, (yield from self._fetch(scope)))
        return row

    def close(self, scope: Scope) -> Operation[None]:
        """Stop the stream and free its connection now."""
        self.check_owner()
        self.finish()
        if self.pin:
            yield from self.close_pin(scope, Op.STREAM_CLOSE, None)

    def finish(self) -> None:
        """Mark the stream read to its end: no more rows for the caller."""
        self.finished = True
        if self.result is not None:
            # Stop pymysql's finaliser from draining the rest through _refill().
            self.result.unbuffered_active = False

    def abandon(self) -> int:
        """Finish, and give up the pin without a reply (a finaliser); return it."""
        pin = super().abandon()
        if pin:
            self.finish()
        return pin

    def _chunk(self, reply: list) -> bytes:
        pin, done, packets = reply
        self.pin, self.done = (0 if done else pin), bool(done)
        return packets

    def _whole(self, scope: Scope, packets: bytes) -> Operation[bytes]:
        while not self.done and mysql.ends_continued(packets):
            packets += yield from self._fetch(scope)
        return packets

    def _fetch(self, scope: Scope) -> Operation[bytes]:
        if self.done:
            raise errors.InternalError(0, "stream ended before its last row")
        wait = scope.client.wait(self.timeout)
        reply = yield Call(Op.STREAM_NEXT, self.pin, None, wait)
        return self._chunk(expect(reply, Status.CHUNK, Op.STREAM_NEXT))

    def _refill(self) -> bytes:
        data, self._next = self._next, None
        if data is None:
            raise NeedMore
        return data
