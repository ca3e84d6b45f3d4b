"""Client, and the module-level functions over one lazily made default Client.

A `Client` may be shared by threads and survives ``fork()``: each (process,
thread) gets its own `client.driver.Driver` (its link, request ids and pymysql
codec: a codec holds decoding state), made on first use. What a pool needs for
rendering SQL (charset, SQL mode) is asked of the broker once per Client with
`Op.HELLO`. Each method runs one operation of `client.calls` or
`client.pins` through the calling thread's driver.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from client import calls
from client.driver import Driver
from client.packets import Codec
from client.pinned import Session, Stream, Transaction
from client.result import Result
from client.settings import BaseClient, Params
from client.wire.protocol import Op


class Client(BaseClient):
    """A handle on the broker for threads and processes (arguments: `BaseClient`)."""

    def _init_drivers(self) -> None:
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<Client endpoint={self.endpoint!r} pool={self.pool!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def driver(self) -> Driver:
        """Return the calling thread's driver, a new one in a new process."""
        driver = getattr(self._local, "driver", None)
        if driver is None or driver.pid != os.getpid():
            driver = self._local.driver = Driver(self)
        return driver

    # Statements -----------------------------------------------------------

    def query(
        self,
        sql: str,
        params: Params = None,
        *,
        timeout: float | None = None,
        replica: bool | None = None,
    ) -> Result:
        """Run one statement on any free connection of the pool; return its Result.

        With ``replica=True`` (default: the Client's ``replica``) a plain read
        may run on an eligible replica; ``Result.served_by`` tells which.
        """
        driver = self.driver()
        replica = self.wants_replica(replica)
        return driver.run(calls.query(driver.scope, sql, params, timeout, 0, replica))

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set, batched as pymysql does; rowcount totals."""
        driver = self.driver()
        return driver.run(calls.executemany(driver.scope, sql, seq_params, timeout))

    def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> Transaction:
        """Return a transaction pinned to one connection; use it with ``with``."""
        return Transaction(
            self, isolation=isolation, readonly=readonly, timeout=timeout
        )

    def session(self, *, timeout: float | None = None) -> Session:
        """Return a session pinned to one connection, without a transaction."""
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
        """Iterate over the rows of a large result in bounded memory.

        ``timeout`` bounds each round trip (the open, each chunk), not the whole
        stream. ``replica`` as for `query`; the stream's ``served_by`` says
        which server runs it once the first row is read.
        """
        return Stream(
            self,
            sql,
            params,
            chunk_rows=self.check_chunk_rows(chunk_rows),
            timeout=timeout,
            replica=self.wants_replica(replica),
        )

    def ping(self, *, timeout: float | None = None) -> float:
        """Return the round trip to the broker in seconds; raise BrokerUnavailable."""
        driver = self.driver()
        start = time.perf_counter()
        driver.run(calls.value(driver.scope, Op.PING, timeout))
        return time.perf_counter() - start

    def stats(self, *, timeout: float | None = None) -> dict:
        """Return the broker's statistics, the same data as ``broker status --json``."""
        driver = self.driver()
        return driver.run(calls.value(driver.scope, Op.STATS, timeout))

    def pool_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Return the pool's HELLO answer: charset, server version, limits."""
        driver = self.driver()
        return driver.run(calls.pool_info(driver.scope, timeout))

    def codec(self, *, timeout: float | None = None) -> Codec:
        """Return this thread's codec: pymysql's escaping and decoding for the pool."""
        driver = self.driver()
        return driver.run(calls.codec(driver.scope, timeout))

    def close(self) -> None:
        """Close this thread's socket; the Client stays usable and reopens on demand."""
        driver = getattr(self._local, "driver", None)
        if driver is not None and driver.pid == os.getpid():
            driver.reset()


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """Return the process's default Client (endpoint from $BROKER_ENDPOINT)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


def query(
    sql: str,
    params: Params = None,
    *,
    timeout: float | None = None,
    replica: bool | None = None,
) -> Result:
    """Run one statement through the default Client."""
    return default_client().query(sql, params, timeout=timeout, replica=replica)


def executemany(
    sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
) -> Result:
    """Run sql once per parameter set through the default Client."""
    return default_client().executemany(sql, seq_params, timeout=timeout)


def transaction(
    *,
    isolation: str | None = None,
    readonly: bool = False,
    timeout: float | None = None,
) -> Transaction:
    """Return a transaction on the default Client."""
    return default_client().transaction(
        isolation=isolation, readonly=readonly, timeout=timeout
    )


def session(*, timeout: float | None = None) -> Session:
    """Return a pinned session on the default Client."""
    return default_client().session(timeout=timeout)


def stream(
    sql: str,
    params: Params = None,
    *,
    chunk_rows: int = 1000,
    timeout: float | None = None,
    replica: bool | None = None,
) -> Stream:
    """Stream the rows of sql through the default Client."""
    return default_client().stream(
        sql, params, chunk_rows=chunk_rows, timeout=timeout, replica=replica
    )


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
