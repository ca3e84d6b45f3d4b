"""client.aio: the client API as awaitables, for asyncio applications.

::

    import client.aio

    r = await client.aio.query("SELECT id FROM users WHERE name = %s", ("ann",))
    async with client.aio.transaction() as tx:
        await tx.query("UPDATE acct SET bal = bal - %s WHERE id = %s", (5, 1))
    async for row in client.aio.stream("SELECT * FROM big", chunk_rows=5000):
        ...
    async with client.aio.Client(endpoint=..., timeout=5.0) as c:
        await c.query(...); await c.ping(); await c.stats()

Everything is the synchronous client's: the same settings (CurveZMQ keys
included), the same operations (`client.calls`, `client.pins`: a transaction
sends BEGIN with its first statement), the same `Result`, exception classes
and timeouts; only the driver differs (`client.aio_driver`: one link per
event loop shared by its tasks; cancelling a task cancels its statement).

A `Client` may serve several event loops (one per thread, or one
``asyncio.run`` after another): each loop gets its own driver, link and
codec. After ``fork()`` the child opens its own links and never touches the
parent's. A transaction, session or stream belongs to the process that opened
it; tasks of one loop may share it, and their statements then run one at a
time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from client import calls
from client.aio_driver import AsyncDriver
from client.calls import Operation
from client.handles import Handle, SessionHandle, StreamHandle, TransactionHandle
from client.links import INHERITED
from client.packets import Codec
from client.pins import MORE
from client.result import Result
from client.settings import BaseClient, Params
from client.wire.protocol import Op

__all__ = [
    "Client",
    "Session",
    "Stream",
    "Transaction",
    "default_client",
    "executemany",
    "query",
    "session",
    "stream",
    "transaction",
]


class Client(BaseClient):
    """An asyncio handle on the broker: `client.Client`'s methods, awaitable."""

    def _init_drivers(self) -> None:
        self._pid = os.getpid()
        self._drivers: dict[asyncio.AbstractEventLoop, AsyncDriver] = {}

    def __repr__(self) -> str:
        return f"<client.aio.Client endpoint={self.endpoint!r} pool={self.pool!r}>"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def driver(self) -> AsyncDriver:
        """Return the running event loop's driver, made on first use."""
        loop = asyncio.get_running_loop()
        if self._pid != os.getpid():
            # The parent's links, tasks and codecs stay the parent's.
            INHERITED.extend(self._drivers.values())
            self._drivers, self._pid, self.info = {}, os.getpid(), None
        driver = self._drivers.get(loop)
        if driver is None:
            self._drop(lambda old: old.is_closed())  # a finished asyncio.run's
            driver = self._drivers[loop] = AsyncDriver(self, loop)
        return driver

    def _drop(self, which: Callable[[asyncio.AbstractEventLoop], bool]) -> None:
        """Close the drivers of the loops which() picks (loops in other threads too)."""
        for loop in list(self._drivers):
            if which(loop):
                driver = self._drivers.pop(loop, None)  # another thread's may race
                if driver is not None:
                    driver.close()

    # Statements -------------------------------------------------------------------

    async def query(
        self,
        sql: str,
        params: Params = None,
        *,
        timeout: float | None = None,
        replica: bool | None = None,
    ) -> Result:
        """Run one statement on any free connection of the pool; return its Result.

        ``replica`` as in `client.Client.query`.
        """
        driver = self.driver()
        replica = self.wants_replica(replica)
        return await driver.run(
            calls.query(driver.scope, sql, params, timeout, 0, replica)
        )

    async def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set, batched as pymysql does; rowcount totals."""
        driver = self.driver()
        return await driver.run(
            calls.executemany(driver.scope, sql, seq_params, timeout)
        )

    def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> Transaction:
        """Return a transaction pinned to one connection; use it with ``async with``."""
        return Transaction(
            self, isolation=isolation, readonly=readonly, timeout=timeout
        )

    def session(self, *, timeout: float | None = None) -> Session:
        """Return a session pinned to one connection; use it with ``async with``."""
        return Session(self, timeout=timeout)

    def stream(
        self,
        sql: str,
        params: Params = None,
        *,
        chunk_rows: int = 1000,
        timeout: float | None = None,
        replica: bool | None = None,
    ) -> Stream:
        """Return an async iterator over a large result, in bounded memory.

        ``timeout`` bounds each round trip (the open, each chunk), not the whole
        stream. ``replica`` as in `client.Client.stream`.
        """
        return Stream(
            self,
            sql,
            params,
            chunk_rows=self.check_chunk_rows(chunk_rows),
            timeout=timeout,
            replica=self.wants_replica(replica),
        )

    async def ping(self, *, timeout: float | None = None) -> float:
        """Return the round trip to the broker in seconds; raise BrokerUnavailable."""
        driver = self.driver()
        start = time.perf_counter()
        await driver.run(calls.value(driver.scope, Op.PING, timeout))
        return time.perf_counter() - start

    async def stats(self, *, timeout: float | None = None) -> dict:
        """Return the broker's statistics, the same data as ``broker status --json``."""
        driver = self.driver()
        return await driver.run(calls.value(driver.scope, Op.STATS, timeout))

    async def pool_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Return the pool's HELLO answer: charset, server version, limits."""
        driver = self.driver()
        return await driver.run(calls.pool_info(driver.scope, timeout))

    async def codec(self, *, timeout: float | None = None) -> Codec:
        """Return this loop's codec: pymysql's escaping and decoding for the pool."""
        driver = self.driver()
        return await driver.run(calls.codec(driver.scope, timeout))

    async def close(self) -> None:
        """Close this event loop's connection; the Client reopens on demand.

        Connections left by event loops that have since closed (an earlier
        ``asyncio.run``) are closed too.
        """
        self.driver()  # forgets a parent's drivers, after fork
        here = asyncio.get_running_loop()
        self._drop(lambda loop: loop is here or loop.is_closed())


# Pinned work ------------------------------------------------------------------------


class _Statements(Handle):
    """Statements on the pin, and the state's operations run one at a time."""

    per_thread = False
    _client: Client
    _lock: asyncio.Lock | None = None

    async def _run(self, make: Callable[..., Operation[Any]], *args: Any) -> Any:
        """Run the operation make(scope, *args) of the state, one at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            driver = self._client.driver()
            return await driver.run(make(driver.scope, *args))

    async def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement on the pinned connection."""
        return await self._run(self._state.query, sql, params, timeout)

    async def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set on the pinned connection."""
        return await self._run(self._state.executemany, sql, seq_params, timeout)

    def _send_only(self, op: Op, pin: int) -> None:
        try:
            driver = self._client.driver()
        except RuntimeError:
            return  # no loop here: the broker frees the pin by its idle timeout
        driver.send_only(op, pin)


class Transaction(_Statements, TransactionHandle):
    """One transaction on one MySQL connection: commit on clean exit, else roll back.

    Nothing is sent until the first statement, which travels with BEGIN.
    """

    async def __aenter__(self) -> Transaction:
        self._state.check_owner()
        return self

    async def __aexit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> None:
        await self._run(self._state.leave, exc_type is not None)

    async def begin(self) -> None:
        """Pin a connection and begin now rather than with the first statement."""
        await self._run(self._state.begin)

    async def commit(self, *, timeout: float | None = None) -> None:
        """Commit, and free the connection."""
        await self._run(self._state.end, Op.COMMIT, timeout)

    async def rollback(self, *, timeout: float | None = None) -> None:
        """Roll back, and free the connection."""
        await self._run(self._state.end, Op.ROLLBACK, timeout)


class Session(_Statements, SessionHandle):
    """A connection pinned without a transaction: session state lives here only."""

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type | None, *exc: object) -> None:
        await self._run(self._state.leave, exc_type is not None)

    async def open(self) -> None:
        """Pin a connection (``async with`` does it)."""
        await self._run(self._state.open)

    async def close(self, *, timeout: float | None = None) -> None:
        """End the session; the broker resets the connection before reuse."""
        await self._run(self._state.close, timeout)


class Stream(_Statements, StreamHandle):
    """Rows of one statement pulled from the broker chunk by chunk: ``async for``.

    Leaving the loop early should close the stream (``await stream.aclose()``
    or ``async with``); otherwise garbage collection sends the close without
    waiting, or the broker frees the connection after its idle timeout.
    """

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> tuple:
        row = self._state.row()
        if row is MORE:
            row = await self._run(self._state.next_row)
        if row is None:
            raise StopAsyncIteration
        return row

    async def aclose(self) -> None:
        """Stop the stream and free its connection now."""
        await self._run(self._state.close)

    def __del__(self) -> None:
        pin = self._state.abandon()
        if pin:
            self._send_only(Op.STREAM_CLOSE, pin)


# Module-level functions over one default Client --------------------------------------

_default: Client | None = None


def default_client() -> Client:
    """Return the process's default asyncio Client (endpoint from $BROKER_ENDPOINT)."""
    global _default
    if _default is None:
        _default = Client()
    return _default


async def query(
    sql: str,
    params: Params = None,
    *,
    timeout: float | None = None,
    replica: bool | None = None,
) -> Result:
    """Run one statement through the default Client."""
    return await default_client().query(sql, params, timeout=timeout, replica=replica)


async def executemany(
    sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
) -> Result:
    """Run sql once per parameter set through the default Client."""
    return await default_client().executemany(sql, seq_params, timeout=timeout)


def transaction(
    *,
    isolation: str | None = None,
    readonly: bool = False,
    timeout: float | None = None,
) -> Transaction:
    """Return a transaction on the default Client, for ``async with``."""
    return default_client().transaction(
        isolation=isolation, readonly=readonly, timeout=timeout
    )


def session(*, timeout: float | None = None) -> Session:
    """Return a pinned session on the default Client, for ``async with``."""
    return default_client().session(timeout=timeout)


def stream(
    sql: str,
    params: Params = None,
    *,
    chunk_rows: int = 1000,
    timeout: float | None = None,
    replica: bool | None = None,
) -> Stream:
    """Stream the rows of sql through the default Client: ``async for``."""
    return default_client().stream(
        sql, params, chunk_rows=chunk_rows, timeout=timeout, replica=replica
    )
