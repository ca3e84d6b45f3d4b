"""What the sync and asyncio pinned classes share: their state and its views.

`client.pinned` (threads) and `client.aio` (event loops) derive their
Transaction, Session and Stream from these, so both take the same arguments
and show the same attributes. What differs is only how an operation of the
state (`client.pins`) runs: through the calling thread's driver, or awaited
on the event loop's, one at a time. ``per_thread`` says whether the state is
bound to the opening thread as well as its process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client.pins import Pinned, SessionState, StreamState, TransactionState

if TYPE_CHECKING:
    from client.settings import Params


class Handle:
    """A pinned object's Client and state."""

    per_thread = True

    def __init__(self, client: Any, state: Pinned) -> None:
        self._client = client
        self._state = state

    @property
    def pin(self) -> int:
        """The broker's id of the pinned connection; 0 when not open."""
        return self._state.pin

    @property
    def owned(self) -> bool:
        """Whether the calling process (and thread, if per_thread) may use it."""
        return self._state.owned()


class TransactionHandle(Handle):
    """A transaction: nothing is sent until the first statement, with BEGIN."""

    _state: TransactionState

    def __init__(
        self,
        client: Any,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> None:
        state = TransactionState(isolation, readonly, timeout, self.per_thread)
        super().__init__(client, state)

    @property
    def isolation(self) -> str | None:
        """The isolation level, upper case; None: the server's."""
        return self._state.isolation

    @property
    def readonly(self) -> bool:
        """Whether the transaction starts READ ONLY."""
        return self._state.readonly


class SessionHandle(Handle):
    """A connection pinned without a transaction: session state lives here only."""

    _state: SessionState

    def __init__(self, client: Any, *, timeout: float | None = None) -> None:
        super().__init__(client, SessionState(timeout, self.per_thread))


class StreamHandle(Handle):
    """Rows of one statement pulled from the broker chunk by chunk.

    Args:
        pin: always 0 (kept for old callers): a stream pins its own connection.
        conv: decoders, encoders and use_unicode to decode with instead of
            pymysql's defaults (a DB-API connection's ``conv``).
    """

    _state: StreamState

    def __init__(
        self,
        client: Any,
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
            per_thread=self.per_thread,
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
