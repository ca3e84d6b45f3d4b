"""Client, and the module-level functions over one lazily made default Client.

A `Client` may be shared by threads and survives ``fork()``: each (process,
thread) gets its own `Transport` and its own pymysql `Codec` (a codec holds
decoding state), made on first use. What a pool needs for rendering SQL
(charset, SQL mode) is asked of the broker once per Client with `Op.HELLO`.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from client import errors
from client.packets import Codec
from client.pinned import Session, Stream, Transaction
from client.result import Result
from client.transport import Transport
from client.wire import protocol
from client.wire.protocol import Op, Status

DEFAULT_TIMEOUT = 30.0

Params = Sequence[Any] | dict[str, Any] | None


def _env_endpoint() -> str:
    return os.environ.get("BROKER_ENDPOINT") or protocol.DEFAULT_ENDPOINT


def _curve_keys(server_key: str | None, client_key: str | None) -> tuple | None:
    """Return (server public, client public, client secret) for CurveZMQ, or None."""
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise errors.InterfaceError(0, "CurveZMQ needs both server_key and client_key")
    from zmq.auth import load_certificate

    try:
        if os.path.exists(server_key):
            server_public = load_certificate(server_key)[0]
        else:
            server_public = server_key.encode()
        public, secret = load_certificate(client_key)
    except (OSError, ValueError) as err:
        raise errors.InterfaceError(0, f"cannot load CurveZMQ keys: {err}") from err
    if secret is None:
        raise errors.InterfaceError(
            0, f"{client_key} holds no secret key (.key_secret)"
        )
    return server_public, public, secret


class Client:
    """A handle on the broker; holds ZeroMQ sockets, never a database socket.

    Args:
        endpoint: the broker's address; default ``$BROKER_ENDPOINT``, else
            `client.wire.protocol.DEFAULT_ENDPOINT`.
        timeout: default seconds each call waits; every call takes ``timeout=``.
        pool: the broker pool this client's statements run on.
        name: an optional label shown by ``broker status`` beside pid and host.
        server_key: for tcp with CurveZMQ, the broker's public key (z85) or the
            path of its ``.key`` file; default ``$BROKER_SERVER_KEY``.
        client_key: the path of this client's ``.key_secret`` file from
            ``broker keygen``; default ``$BROKER_CLIENT_KEY``.
        replica: the default of ``replica=`` for `query` and `stream`: whether
            an eligible replica may serve them (the primary serves otherwise).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool: str = protocol.DEFAULT_POOL,
        *,
        name: str | None = None,
        server_key: str | None = None,
        client_key: str | None = None,
        replica: bool = False,
    ) -> None:
        if not timeout > 0:
            raise errors.InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        self.endpoint = endpoint or _env_endpoint()
        self._curve = _curve_keys(
            server_key or os.environ.get("BROKER_SERVER_KEY"),
            client_key or os.environ.get("BROKER_CLIENT_KEY"),
        )
        self.timeout = float(timeout)
        self.pool = pool
        self.name = name
        self.replica = bool(replica)
        self._local = threading.local()
        self._info: dict[str, Any] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Client endpoint={self.endpoint!r} pool={self.pool!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        codec = self._codec(timeout)
        body = codec.render(sql, params)
        if replica or (replica is None and self.replica):
            served_by, _, packets = self._call(
                Op.QUERY_REPLICA, timeout, 0, body, Status.SERVED
            )
            result = codec.decode(packets)
            result.served_by = served_by
            return result
        return codec.decode(self._call(Op.QUERY, timeout, 0, body, Status.PACKETS))

    def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set, batched as pymysql does; rowcount totals."""
        return self._executemany(sql, seq_params, timeout, 0)

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
        if type(chunk_rows) is not int or chunk_rows < 1:
            raise errors.InterfaceError(
                0, f"chunk_rows must be an int >= 1, got {chunk_rows!r}"
            )
        return Stream(
            self,
            sql,
            params,
            chunk_rows=chunk_rows,
            timeout=timeout,
            pin=0,
            replica=self.replica if replica is None else bool(replica),
        )

    def ping(self, *, timeout: float | None = None) -> float:
        """Return the round trip to the broker in seconds; raise BrokerUnavailable."""
        start = time.perf_counter()
        self._call(Op.PING, timeout, 0, None, Status.VALUE)
        return time.perf_counter() - start

    def stats(self, *, timeout: float | None = None) -> dict:
        """Return the broker's statistics, the same data as ``broker status --json``."""
        return self._call(Op.STATS, timeout, 0, None, Status.VALUE)

    def close(self) -> None:
        """Close this thread's socket; the Client stays usable and reopens on demand."""
        transport = getattr(self._local, "transport", None)
        if transport is not None and transport.pid == os.getpid():
            transport.reset()

    # Plumbing shared with pinned objects ------------------------------------

    def who(self) -> dict[str, Any]:
        """Return who this process is, for `broker status`."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "program": os.path.basename(sys.argv[0])
            if sys.argv and sys.argv[0]
            else "python",
            "name": self.name,
            "thread": threading.current_thread().name,
        }

    def _transport(self) -> Transport:
        local = self._local
        transport = getattr(local, "transport", None)
        if transport is None or transport.pid != os.getpid():
            transport = local.transport = Transport(self.endpoint, self._curve)
            local.codec = None
        return transport

    def _pool_info(self, timeout: float | None) -> dict[str, Any]:
        info = self._info
        if info is None:
            info = self._info = self._call(
                Op.HELLO, timeout, 0, self.who(), Status.VALUE
            )
        return info

    def _codec(self, timeout: float | None) -> Codec:
        """Return this thread's codec for the pool (HELLO once per Client)."""
        self._transport()  # a new process or thread starts without a codec
        codec = self._local.codec
        if codec is None:
            codec = self._local.codec = self._new_codec(timeout)
        return codec

    def _new_codec(self, timeout: float | None, refill: Any = None) -> Codec:
        info = self._pool_info(timeout)
        return Codec(
            info[protocol.INFO_CHARSET], info[protocol.INFO_SERVER_STATUS], refill
        )

    def _send_only(self, op: int, pin: int) -> None:
        """Send a request without waiting: for cleanup from a finaliser."""
        self._transport().send_only(op, self.pool, pin)

    def _call(
        self, op: int, timeout: float | None, pin: int, body: Any, expect: int
    ) -> Any:
        """Send one request; return its reply's body or raise the error it carries."""
        wait = self.timeout if timeout is None else float(timeout)
        if not wait > 0:
            raise errors.InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        transport = self._transport()
        info = self._info
        limit = info[protocol.INFO_MAX_MESSAGE_BYTES] if info else None
        try:
            status, reply = transport.call(op, self.pool, wait, pin, body, limit)
        except errors.BrokerUnavailable:
            self._info = None  # a restarted broker may serve a different config
            self._local.codec = None
            raise
        if status == expect:
            return reply
        if status == Status.ERROR:
            raise errors.from_wire(reply)
        raise errors.InterfaceError(
            errors.ER_BAD_REQUEST, f"unexpected reply status {status!r} to op {op}"
        )

    def _executemany(
        self, sql: str, seq_params: Iterable[Params], timeout: float | None, pin: int
    ) -> Result:
        codec = self._codec(timeout)
        statements = codec.render_many(sql, seq_params)
        if not statements:
            return Result([], (), 0, None)
        replies = self._call(Op.EXECUTEMANY, timeout, pin, statements, Status.BATCH)
        # The broker answers every statement or errs, so there is one at least.
        return Result.combine([codec.decode(packets) for packets in replies])


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
