"""Transaction, Session and Stream of the sync client: work pinned to one connection.

Thin shells: the state and every operation are `client.pins`'s, run through
the calling thread's driver. Each is bound to the process and thread that
opened it; using one from elsewhere raises InterfaceError and sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from client.pins import (
    ISOLATION_LEVELS,
    MORE,
    Pinned,
    SessionState,
    StreamState,
    TransactionState,
)
from client.result import Result
from client.wire.protocol import Op

if TYPE_CHECKING:
    from client.api import Client
    from client.settings import Params

__all__ = ["ISOLATION_LEVELS", "Session", "Stream", "Transaction"]


class _Shell:
    """What the three share: their Client, their state, statements on the pin."""

    def __init__(self, client: Client, state: Pinned) -> None:
        self._client = client
        self._state = state

    @property
    def pin(self) -> int:
        """The broker's id of the pinned connection; 0 when not open."""
        return self._state.pin

    @property
    def owned(self) -> bool:
        """Whether the calling process and thread are the ones that opened it."""
        return self._state.owned()

    def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement on the pinned connection."""
        driver = self._client.driver()
        return driver.run(self._state.query(driver.scope, sql, params, timeout))

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set on the pinned connection."""
        driver = self._client.driver()
        return driver.run(
            self._state.executemany(driver.scope, sql, seq_params, timeout)
        )


class Transaction(_Shell):
    """One transaction on one MySQL connection: commit on clean exit, else roll back.

    Nothing is sent until the first statement, which travels with BEGIN.
    """

    _state: TransactionState

    def __init__(
        self,
        client: Client,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            client, TransactionState(isolation, readonly, timeout, per_thread=True)
        )

    @property
    def isolation(self) -> str | None:
        """The isolation level, upper case; None: the server's."""
        return self._state.isolation

    @property
    def readonly(self) -> bool:
        """Whether the transaction starts READ ONLY."""
        return self._state.readonly

    def __enter__(self) -> Transaction:
        self._state.check_owner()
        return self

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> None:
        driver = self._client.driver()
        driver.run(self._state.leave(driver.scope, exc_type is not None))

    def begin(self) -> None:
        """Pin a connection and begin now rather than with the first statement."""
        driver = self._client.driver()
        driver.run(self._state.begin(driver.scope))

    def commit(self, *, timeout: float | None = None) -> None:
        """Commit, and free the connection."""
        driver = self._client.driver()
        driver.run(self._state.end(driver.scope, Op.COMMIT, timeout))

    def rollback(self, *, timeout: float | None = None) -> None:
        """Roll back, and free the connection."""
        driver = self._client.driver()
        driver.run(self._state.end(driver.scope, Op.ROLLBACK, timeout))

    def discard(self) -> None:
        """Roll back without waiting for the reply: for finalisers; best effort.

        Does nothing unless open in the calling process and thread.
        """
        pin = self._state.abandon()
        if pin:
            self._client.driver().send_only(Op.ROLLBACK, pin)


class Session(_Shell):
    """A connection pinned without a transaction: session state lives here only."""

    def __init__(self, client: Client, *, timeout: float | None = None) -> None:
        super().__init__(client, SessionState(timeout, per_thread=True))

    _state: SessionState

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        driver = self._client.driver()
        driver.run(self._state.leave(driver.scope, exc_type is not None))

    def open(self) -> None:
        """Pin a connection (done by ``with`` for you)."""
        driver = self._client.driver()
        driver.run(self._state.open(driver.scope))

    def close(self, *, timeout: float | None = None) -> None:
        """End the session; the broker resets the connection before reuse."""
        driver = self._client.driver()
        driver.run(self._state.close(driver.scope, timeout))


class Stream(_Shell):
    """Rows of one statement pulled from the broker chunk by chunk.

    Leaving the loop early closes the stream: ``close()``, the ``with`` block,
    or dropping the last reference (breaking out of a ``for`` loop), whose
    ``__del__`` sends the close without waiting for a reply. Nothing of the
    stream's refers back to it, so that happens at once, not at the next run
    of the cyclic garbage collector.

    Args:
        pin: always 0 (kept for old callers): a stream pins its own connection.
        conv: decoders, encoders and use_unicode to decode with instead of
            pymysql's defaults (a DB-API connection's ``conv``).
    """

    _state: StreamState

    def __init__(
        self,
        client: Client,
        sql: str,
        params: Params,
        *,
        chunk_rows: int,
        timeout: float | None,
        pin: int = 0,
        replica: bool = False,
        conv: tuple[dict, dict, bool] | None = None,
    ) -> None:
        state = StreamState(
            sql,
            params,
            chunk_rows=chunk_rows,
            timeout=timeout,
            replica=replica,
            per_thread=True,
            conv=conv,
        )
        super().__init__(client, state)

    @property
    def served_by(self) -> str | None:
        """``"primary"`` or ``"replica HOST:PORT"``, once open."""
        return self._state.served_by

    @property
    def result(self) -> Any:
        """The unbuffered pymysql result (description, affected_rows), once open."""
        return self._state.result

    @property
    def description(self) -> tuple | None:
        """PEP 249 7-tuples of the result's columns, once open."""
        result = self._state.result
        return result.description if result is not None else None

    def __iter__(self) -> Stream:
        return self

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> tuple:
        row = self._state.row()
        if row is MORE:
            driver = self._client.driver()
            row = driver.run(self._state.next_row(driver.scope))
        if row is None:
            raise StopIteration
        return row

    def open(self) -> None:
        """Send the statement and read up to its first row (iterating does it)."""
        driver = self._client.driver()
        driver.run(self._state.open(driver.scope))

    def close(self) -> None:
        """Stop the stream and free its connection now."""
        driver = self._client.driver()
        driver.run(self._state.close(driver.scope))

    def __del__(self) -> None:
        pin = self._state.abandon()
        if pin:
            self._client.driver().send_only(Op.STREAM_CLOSE, pin)
