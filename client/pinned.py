"""Transaction, Session and Stream: work pinned to one broker connection.

Each is bound to the process and thread that opened it: the pin id means
"this connection, mid-transaction" to the broker, and a second thread or a
forked child using it would interleave statements into someone else's
transaction. Using one from elsewhere raises InterfaceError and sends nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pymysql

from client import errors
from client.packets import weak_refill
from client.result import Result
from client.wire.protocol import SERVED_BY_PRIMARY, Op, Status

if TYPE_CHECKING:
    from client.api import Client, Params

ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)


def check_isolation(isolation: str | None) -> str | None:
    """Return the isolation level in upper case, or raise ProgrammingError."""
    if isolation is not None and isolation.upper() not in ISOLATION_LEVELS:
        raise errors.ProgrammingError(
            0, f"isolation must be one of {sorted(ISOLATION_LEVELS)}, got {isolation!r}"
        )
    return isolation.upper() if isolation else None


class _Pinned:
    """What transactions, sessions and streams share: owner checks and calls."""

    _kind = "pinned object"

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._pid = os.getpid()
        self._thread = threading.get_ident()
        self.pin = 0

    def _check_owner(self) -> None:
        if self._pid != os.getpid() or self._thread != threading.get_ident():
            raise errors.InterfaceError(
                errors.ER_WRONG_OWNER,
                f"this {self._kind} belongs to pid {self._pid} thread {self._thread}; "
                "open your own in this process and thread",
            )

    def _timeout_for(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement on the pinned connection."""
        self._check_owner()
        if not self.pin:
            raise errors.InterfaceError(
                errors.ER_BAD_PIN, f"this {self._kind} is not open"
            )
        timeout = self._timeout_for(timeout)
        codec = self._client._codec(timeout)
        body = codec.render(sql, params)
        return codec.decode(
            self._client._call(Op.QUERY, timeout, self.pin, body, Status.PACKETS)
        )

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set on the pinned connection."""
        self._check_owner()
        if not self.pin:
            raise errors.InterfaceError(
                errors.ER_BAD_PIN, f"this {self._kind} is not open"
            )
        return self._client._executemany(
            sql, seq_params, self._timeout_for(timeout), self.pin
        )


class Transaction(_Pinned):
    """One transaction on one MySQL connection: commit on clean exit, else roll back."""

    _kind = "transaction"

    def __init__(
        self,
        client: Client,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(client, timeout)
        self.isolation = check_isolation(isolation)
        self.readonly = bool(readonly)
        self._finished = False

    def __enter__(self) -> Transaction:
        # Nothing is sent yet: the first statement travels with BEGIN, saving a
        # round trip, and a block that runs no statement costs none.
        self._check_owner()
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> None:
        if not self.pin:
            self._finished = True
            return
        if exc_type is None:
            self.commit()
            return
        try:
            self.rollback()
        except errors.Error:
            # The broker rolls back a transaction whose client goes silent, so a
            # failed rollback must not hide the exception that caused it.
            self.pin = 0

    def begin(self) -> None:
        """Pin a connection and start the transaction (done by ``with`` for you)."""
        self._check_owner()
        if self.pin or self._finished:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "transaction already begun")
        self.pin = self._client._call(
            Op.BEGIN, self._timeout, 0, self._options(), Status.VALUE
        )

    def _options(self) -> dict[str, Any]:
        return {
            "isolation": self.isolation,
            "readonly": self.readonly,
            "who": self._client.who(),
        }

    def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement in the transaction (the first one begins it)."""
        if self.pin or self._finished:
            return super().query(sql, params, timeout=timeout)
        self._check_owner()
        timeout = self._timeout_for(timeout)
        codec = self._client._codec(timeout)
        body = {**self._options(), "sql": codec.render(sql, params)}
        self.pin, packets = self._client._call(Op.BEGIN, timeout, 0, body, Status.VALUE)
        return codec.decode(packets)

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set in the transaction."""
        if not self.pin and not self._finished:
            self.begin()
        return super().executemany(sql, seq_params, timeout=timeout)

    def commit(self, *, timeout: float | None = None) -> None:
        """Commit, and free the connection."""
        self._end(Op.COMMIT, timeout)

    def rollback(self, *, timeout: float | None = None) -> None:
        """Roll back, and free the connection."""
        self._end(Op.ROLLBACK, timeout)

    def _end(self, op: Op, timeout: float | None) -> None:
        self._check_owner()
        if not self.pin and not self._finished:
            self._finished = True  # never begun: nothing to commit or roll back
            return
        if not self.pin:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "transaction is not open")
        timeout = self._timeout_for(timeout)
        pin, self.pin, self._finished = self.pin, 0, True
        codec = self._client._codec(timeout)
        codec.decode(self._client._call(op, timeout, pin, None, Status.PACKETS))


class Session(_Pinned):
    """A connection pinned without a transaction: session state lives here only."""

    _kind = "session"

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pin:
            try:
                self.close()
            except errors.Error:
                # Leaving on an exception: the broker frees a silent session.
                if exc[0] is None:
                    raise

    def open(self) -> None:
        """Pin a connection (done by ``with`` for you)."""
        self._check_owner()
        if self.pin:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "session already open")
        body = {"who": self._client.who()}
        self.pin = self._client._call(
            Op.SESSION_OPEN, self._timeout, 0, body, Status.VALUE
        )

    def close(self, *, timeout: float | None = None) -> None:
        """End the session; the broker resets the connection before reuse."""
        self._check_owner()
        if not self.pin:
            return
        pin, self.pin = self.pin, 0
        self._client._call(
            Op.SESSION_CLOSE, self._timeout_for(timeout), pin, None, Status.VALUE
        )


class Stream(_Pinned):
    """Rows of one statement pulled from the broker chunk by chunk.

    Leaving the loop early closes the stream: ``close()``, the ``with`` block,
    or dropping the last reference (breaking out of a ``for`` loop), whose
    ``__del__`` sends the close without waiting for a reply. Nothing of the
    stream's refers back to it, so that happens at once, not at the next run
    of the cyclic garbage collector.
    """

    _kind = "stream"

    def __init__(
        self,
        client: Client,
        sql: str,
        params: Params,
        *,
        chunk_rows: int,
        timeout: float | None,
        pin: int,
        replica: bool = False,
    ) -> None:
        super().__init__(client, timeout)
        self._sql, self._params, self._chunk_rows = sql, params, chunk_rows
        self._replica = replica
        self.served_by: str | None = None  # "primary" or "replica HOST:PORT", once open
        self._result: Any = None
        self._done = False  # the broker sent the last chunk and freed the connection
        self._finished = False  # no more rows for the caller

    def __iter__(self) -> Stream:
        return self

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> tuple:
        if self._finished:
            raise StopIteration
        self._check_owner()
        if self._result is None:
            self._open()
        try:
            row = self._result._read_rowdata_packet_unbuffered()
        except errors.Error:  # ours, from a refill: already a client error
            self._finish()
            raise
        except pymysql.MySQLError as err:  # an error packet in mid-stream
            self._finish()
            raise errors.from_pymysql(err) from err
        except Exception:
            self._finish()
            raise
        if row is None:
            self._finish()
            raise StopIteration
        return row

    def _open(self) -> None:
        client = self._client
        codec = client._codec(self._timeout)
        body = [codec.render(self._sql, self._params), self._chunk_rows, client.who()]
        if self._replica:
            self.served_by, _, reply = client._call(
                Op.STREAM_OPEN_REPLICA, self._timeout, 0, body, Status.SERVED
            )
        else:
            self.served_by = SERVED_BY_PRIMARY
            reply = client._call(Op.STREAM_OPEN, self._timeout, 0, body, Status.CHUNK)
        packets = self._chunk(reply)
        stream_codec = client._new_codec(self._timeout, refill=weak_refill(self._more))
        self._prepare_codec(stream_codec)
        try:
            self._result = stream_codec.open_stream(packets)
        except errors.Error:
            self._finish()
            raise
        if not self._result.unbuffered_active:
            self._finish()

    def _prepare_codec(self, codec: Any) -> None:
        """Adjust the stream's own codec before it decodes (DB-API's conv)."""

    def _chunk(self, reply: list) -> bytes:
        pin, done, packets = reply
        self.pin, self._done = (0 if done else pin), bool(done)
        return packets

    def _more(self) -> bytes:
        if self._done:
            raise errors.InternalError(0, "stream ended before its last row")
        reply = self._client._call(
            Op.STREAM_NEXT, self._timeout, self.pin, None, Status.CHUNK
        )
        return self._chunk(reply)

    def _finish(self) -> None:
        self._finished = True
        if self._result is not None:
            # Stop pymysql's finaliser from draining the rest through refill().
            self._result.unbuffered_active = False

    def close(self) -> None:
        """Stop the stream and free its connection now."""
        self._check_owner()
        self._finish()
        if self.pin:
            pin, self.pin = self.pin, 0
            self._client._call(Op.STREAM_CLOSE, self._timeout, pin, None, Status.VALUE)

    def __del__(self) -> None:
        if (
            self.pin
            and self._pid == os.getpid()
            and self._thread == threading.get_ident()
        ):
            self._finish()
            self._client._send_only(Op.STREAM_CLOSE, self.pin)
            self.pin = 0
