"""Transaction, Session and Stream of the sync client: work pinned to one connection.

Thin shells: the state and every operation are `client.pins`'s, run through
the calling thread's driver; arguments and attributes are `client.handles`'s.
Each is bound to the process and thread that opened it; using one from
elsewhere raises InterfaceError and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from client.handles import Handle, SessionHandle, StreamHandle, TransactionHandle
from client.pins import MORE
from client.result import Result
from client.wire.protocol import Op

if TYPE_CHECKING:
    from client.api import Client
    from client.calls import Operation
    from client.settings import Params

__all__ = ["Session", "Stream", "Transaction"]


class _Statements(Handle):
    """Statements on the pin, and running the state's operations."""

    _client: Client

    def _run(self, make: Callable[..., Operation[Any]], *args: Any) -> Any:
        """Run the operation make(scope, *args) through the calling thread's driver."""
        driver = self._client.driver()
        return driver.run(make(driver.scope, *args))

    def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement on the pinned connection."""
        return self._run(self._state.query, sql, params, timeout)

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set on the pinned connection."""
        return self._run(self._state.executemany, sql, seq_params, timeout)


class Transaction(_Statements, TransactionHandle):
    """One transaction on one MySQL connection: commit on clean exit, else roll back.

    Nothing is sent until the first statement, which travels with BEGIN.
    """

    def __enter__(self) -> Transaction:
        self._state.check_owner()
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> None:
        self._run(self._state.leave, exc_type is not None)

    def begin(self) -> None:
        """Pin a connection and begin now rather than with the first statement."""
        self._run(self._state.begin)

    def commit(self, *, timeout: float | None = None) -> None:
        """Commit, and free the connection."""
        self._run(self._state.end, Op.COMMIT, timeout)

    def rollback(self, *, timeout: float | None = None) -> None:
        """Roll back, and free the connection."""
        self._run(self._state.end, Op.ROLLBACK, timeout)

    def discard(self) -> None:
        """Roll back without waiting for the reply: for finalisers; best effort.

        Does nothing unless open in the calling process and thread.
        """
        pin = self._state.abandon()
        if pin:
            self._client.driver().send_only(Op.ROLLBACK, pin)


class Session(_Statements, SessionHandle):
    """A connection pinned without a transaction: session state lives here only."""

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._run(self._state.leave, exc_type is not None)

    def open(self) -> None:
        """Pin a connection (done by ``with`` for you)."""
        self._run(self._state.open)

    def close(self, *, timeout: float | None = None) -> None:
        """End the session; the broker resets the connection before reuse."""
        self._run(self._state.close, timeout)


class Stream(_Statements, StreamHandle):
    """Rows of one statement pulled from the broker chunk by chunk.

    Leaving the loop early closes the stream: ``close()``, the ``with`` block,
    or dropping the last reference (breaking out of a ``for`` loop), whose
    ``__del__`` sends the close without waiting for a reply. Nothing of the
    stream's refers back to it, so that happens at once, not at the next run
    of the cyclic garbage collector.
    """

    def __iter__(self) -> Stream:
        return self

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> tuple:
        row = self._state.row()
        if row is MORE:
            row = self._run(self._state.next_row)
        if row is None:
            raise StopIteration
        return row

    def open(self) -> None:
        """Send the statement and read up to its first row (iterating does it)."""
        self._run(self._state.open)

    def close(self) -> None:
        """Stop the stream and free its connection now."""
        self._run(self._state.close)

    def __del__(self) -> None:
        pin = self._state.abandon()
        if pin:
            self._client.driver().send_only(Op.STREAM_CLOSE, pin)
