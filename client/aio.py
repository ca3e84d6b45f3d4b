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

Results, errors and timeouts are the synchronous client's: the same `Result`,
the same exception classes, the broker's deadline from ``timeout=`` and
`BrokerUnavailable` (`ReplyLost` for a write the broker may have run) when no
reply comes within it plus `GRACE`. Cancelling
the task that awaits a statement cancels the statement: the client sends
``Op.CANCEL`` with its request id on the same connection, the broker stops
it (``KILL QUERY`` when it runs) and frees the MySQL connection, and the task
sees `asyncio.CancelledError`. A late reply to a cancelled request is
dropped by its id; one that opened a transaction, session or stream has that
pin closed at once.

One connection per `Client` and event loop carries every task's requests at
once: requests are tagged with ids and each reply resolves the future of its
id, so 200 concurrent tasks share one socket and the broker's pool decides how
many run at a time. ipc:// endpoints are a unix socket on the event loop's own
selector speaking ZMTP (`client.wire.zmtp`), as the synchronous `client.transport`
does, which skips libzmq's I/O thread on the local hot path; tcp:// endpoints
use a ``zmq.asyncio`` DEALER socket. Replies are decoded by pymysql's code
(`client.packets.Codec`) synchronously as they are taken, which is safe in the
loop's one thread.

A `Client` may serve several event loops (one per thread, or one
``asyncio.run`` after another): each loop gets its own connection and codec.
After ``fork()`` the child opens its own connections and never touches the
parent's. A transaction, session or stream belongs to the process that opened
it; tasks of one loop may share it, and their statements then run one at a
time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pymysql
import zmq
import zmq.asyncio

from client import errors, outcome
from client.api import DEFAULT_TIMEOUT, Params
from client.packets import Codec, weak_refill
from client.pinned import check_isolation
from client.result import Result
from client.transport import CONNECT_RETRY, GRACE, RECONNECT_IVL_MS
from client.wire import mysql, protocol, zmtp
from client.wire.protocol import Op, Status

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

RECV_BYTES = 65536
MAX_REPLY_BYTES = 2**40  # replies are trusted; the limit only guards against garbage
_HOST = socket.gethostname()
_INHERITED: list[Any] = []  # links made by a parent process: never touched, never freed
_zmq_context: zmq.asyncio.Context | None = None
_zmq_context_pid = 0


class _LinkLost(Exception):
    """The connection to the broker failed; every request on it is unanswered."""


def _zmq_ctx() -> zmq.asyncio.Context:
    """Return this process's zmq.asyncio context, making a new one after fork."""
    global _zmq_context, _zmq_context_pid
    if _zmq_context_pid != os.getpid():
        if _zmq_context is not None:
            _INHERITED.append(_zmq_context)
        _zmq_context = zmq.asyncio.Context(io_threads=1)
        _zmq_context_pid = os.getpid()
    return _zmq_context  # type: ignore[return-value]


def _who(name: str | None) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": _HOST,
        "program": os.path.basename(sys.argv[0])
        if sys.argv and sys.argv[0]
        else "python",
        "name": name,
        "thread": threading.current_thread().name,
    }


# Links -----------------------------------------------------------------------------


class _Link:
    """What both links share: the futures of requests waiting for replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False

    def _deliver(self, frame: bytes) -> None:
        req_id, status, body = protocol.decode_reply(frame)
        future = self.pending.pop(req_id, None)
        # No future: a reply to a request abandoned by timeout or cancellation.
        if future is not None and not future.done():
            future.set_result((status, body))

    def _fail_pending(self, err: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_LinkLost(str(err) or type(err).__name__))

    async def send(self, frame: bytes) -> None:
        """Send one request frame."""
        raise NotImplementedError

    def send_nowait(self, frame: bytes) -> None:
        """Send a frame without waiting, or drop it: for cancel and cleanup."""
        raise NotImplementedError

    def unread(self, end: int) -> bool:
        """Whether the broker provably never read the frame that ended at end."""
        return False  # libzmq took the frame: nothing more can be known

    @property
    def written(self) -> int:
        """Bytes queued on this link so far: where the last frame ends."""
        return 0

    def close(self, err: BaseException | None = None) -> None:
        """Drop the connection; requests waiting on it fail with err."""
        raise NotImplementedError

    def _close_socket(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        # Only reachable once the loop let go of the link (closed, or no reader
        # registered), so closing the socket cannot confuse a live selector.
        if not self.closed and self.pid == os.getpid():
            self.closed = True
            self._close_socket()


class _UnixLink(_Link):
    """ZMTP on a unix socket, read and written by the event loop's selector."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        super().__init__(loop)
        self.sock = sock
        self.fd = sock.fileno()
        self._reader = zmtp.FrameReader(MAX_REPLY_BYTES)
        self._out = bytearray()
        self._handed = 0  # bytes the kernel took; the rest wait in _out
        self._reset = False  # closed by ECONNRESET: the broker left our bytes unread
        self._stage = 0  # 0: greeting expected, 1: READY expected, 2: replies
        self.ready: asyncio.Future = loop.create_future()
        loop.add_reader(self.fd, self._on_readable)
        me = {b"X-Pid": str(self.pid).encode(), b"X-Host": _HOST.encode()}
        self._write(zmtp.greeting() + zmtp.ready(b"DEALER", me))

    @classmethod
    async def open(cls, path: str, deadline: float) -> _UnixLink:
        """Connect and finish the ZMTP handshake before deadline (monotonic)."""
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() + CONNECT_RETRY > deadline:
                    raise TimeoutError from None
                await asyncio.sleep(CONNECT_RETRY)
            except BaseException:
                sock.close()
                raise
        link = cls(loop, sock)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                await link.ready
        except BaseException:
            link.close()
            raise
        return link

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lost(err)
            return
        if not data:
            self._lost(ConnectionResetError("the broker closed the connection"))
            return
        reader = self._reader
        reader.feed(data)
        try:
            if self._stage == 0:
                if not reader.greeting():
                    return
                self._stage = 1
            while (frame := reader.next()) is not None:
                flags, body = frame
                if flags & zmtp.COMMAND:
                    if zmtp.parse_command(body)[0] == b"READY" and self._stage == 1:
                        self._stage = 2
                        self.ready.set_result(None)
                elif self._stage != 2:
                    raise zmtp.ZmtpError("message before READY")
                else:
                    self._deliver(body)
        except (zmtp.ZmtpError, protocol.ProtocolError) as err:
            self._lost(err)

    def _write(self, data: bytes) -> None:
        if self.closed:
            raise _LinkLost("the connection to the broker is closed")
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self._lost(err)
            raise _LinkLost(str(err)) from err
        self._handed += sent
        if sent < len(data):
            self._out += data[sent:]
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lost(err)
            return
        del self._out[:sent]
        self._handed += sent
        if not self._out:
            self.loop.remove_writer(self.fd)

    async def send(self, frame: bytes) -> None:
        """Queue one frame on the socket (the loop writes what the kernel refuses)."""
        self._write(zmtp.encode_frame(frame))

    def send_nowait(self, frame: bytes) -> None:
        """Queue a frame, or drop it when the connection is gone."""
        try:
            self._write(zmtp.encode_frame(frame))
        except _LinkLost:
            pass  # no connection: the broker already freed what it held for us

    @property
    def written(self) -> int:
        """Bytes queued on this link so far: where the last frame ends."""
        return self._handed + len(self._out)

    def unread(self, end: int) -> bool:
        """Whether the broker provably never read the frame that ended at end.

        True while the frame's tail is still in our buffer; and when it was the
        last thing the kernel took and the broker left it unread (see
        `client.outcome`). Frames of other tasks behind it hide the proof.
        """
        if end > self._handed:
            return True
        if end != self._handed:
            return False
        return self._reset or (not self.closed and outcome.unread_bytes(self.sock) > 0)

    def _lost(self, err: BaseException) -> None:
        if not self.closed:
            self._reset = outcome.reset_by_peer(err)
            self.close(err)

    def close(self, err: BaseException | None = None) -> None:
        """Close the socket; waiting requests fail with err."""
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
        self._close_socket()
        err = err or ConnectionResetError("the connection was closed")
        self._fail_pending(err)
        if not self.ready.done():
            self.ready.set_exception(_LinkLost(str(err)))
            self.ready.exception()  # retrieved: nobody may be waiting for it

    def _close_socket(self) -> None:
        self.sock.close()


class _ZmqLink(_Link):
    """A zmq.asyncio DEALER socket and the task that reads its replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: str) -> None:
        super().__init__(loop)
        sock = _zmq_ctx().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for an absent broker
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.connect(endpoint)
        self.sock = sock
        self._task = loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self._deliver(await self.sock.recv())
        except (zmq.ZMQError, protocol.ProtocolError) as err:
            self.close(err)

    async def send(self, frame: bytes) -> None:
        """Send one frame (waits while no broker is connected)."""
        try:
            await self.sock.send(frame)
        except zmq.ZMQError as err:
            raise _LinkLost(str(err)) from err

    def send_nowait(self, frame: bytes) -> None:
        """Send a frame if the socket takes it at once, else drop it."""
        if self.closed:
            return
        future = self.sock.send(frame, zmq.NOBLOCK)
        # Retrieve a failure (zmq.Again: no broker) so asyncio does not log it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self, err: BaseException | None = None) -> None:
        """Stop reading and close the socket; waiting requests fail with err."""
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            self._task.cancel()  # (a closed loop already cancelled it)
        self._close_socket()
        self._fail_pending(err or ConnectionResetError("the connection was closed"))

    def _close_socket(self) -> None:
        self.sock.close(linger=0)


# Client -----------------------------------------------------------------------------


class Client:
    """An asyncio handle on the broker: the methods of `client.Client`, awaitable.

    Args:
        endpoint: the broker's address; default ``$BROKER_ENDPOINT``, else
            `client.wire.protocol.DEFAULT_ENDPOINT`.
        timeout: default seconds each call waits; every call takes ``timeout=``.
        pool: the broker pool this client's statements run on.
        name: an optional label shown by ``broker status`` beside pid and host.
        replica: the default of ``replica=`` for `query` and `stream`.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool: str = protocol.DEFAULT_POOL,
        *,
        name: str | None = None,
        replica: bool = False,
    ) -> None:
        if not timeout > 0:
            raise errors.InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        self.endpoint = (
            endpoint or os.environ.get("BROKER_ENDPOINT") or protocol.DEFAULT_ENDPOINT
        )
        self.timeout = float(timeout)
        self.pool = pool
        self.name = name
        self.replica = bool(replica)
        self._ipc_path = (
            self.endpoint[len("ipc://") :]
            if self.endpoint.startswith("ipc://")
            else None
        )
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self._links: dict[asyncio.AbstractEventLoop, _Link] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
        self._info: dict[str, Any] | None = None
        self._hello: asyncio.Task | None = None
        self._codecs: dict[asyncio.AbstractEventLoop, Codec] = {}

    def __repr__(self) -> str:
        return f"<client.aio.Client endpoint={self.endpoint!r} pool={self.pool!r}>"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        if replica or (replica is None and self.replica):
            codec = await self._codec_for(timeout)
            served_by, _, packets = await self._call(
                Op.QUERY_REPLICA,
                timeout,
                0,
                codec.render(sql, params),
                Status.SERVED,
            )
            result = codec.decode(packets)
            result.served_by = served_by
            return result
        return await self._query(sql, params, timeout, 0)

    async def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set, batched as pymysql does; rowcount totals."""
        return await self._executemany(sql, seq_params, timeout, 0)

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
            replica=self.replica if replica is None else bool(replica),
        )

    async def ping(self, *, timeout: float | None = None) -> float:
        """Return the round trip to the broker in seconds; raise BrokerUnavailable."""
        start = time.perf_counter()
        await self._call(Op.PING, timeout, 0, None, Status.VALUE)
        return time.perf_counter() - start

    async def stats(self, *, timeout: float | None = None) -> dict:
        """Return the broker's statistics, the same data as ``broker status --json``."""
        return await self._call(Op.STATS, timeout, 0, None, Status.VALUE)

    async def close(self) -> None:
        """Close this event loop's connection; the Client reopens on demand.

        Connections left by event loops that have since closed (an earlier
        ``asyncio.run``) are closed too.
        """
        self._fork_check()
        here = asyncio.get_running_loop()
        for loop in [lp for lp in self._links if lp is here or lp.is_closed()]:
            self._links.pop(loop).close()

    # Plumbing ---------------------------------------------------------------------

    def who(self) -> dict[str, Any]:
        """Return who this process is, for ``broker status``."""
        return _who(self.name)

    def _fork_check(self) -> None:
        if self._pid != os.getpid():
            # The parent's links, tasks and codec stay the parent's.
            _INHERITED.extend(self._links.values())
            self._links, self._opening = {}, {}
            self._hello, self._info, self._codecs = None, None, {}
            self._ids = itertools.count(1)
            self._pid = os.getpid()

    async def _link(self, deadline: float) -> _Link:
        """Return this loop's connection, opening it (once, for all tasks) if needed."""
        self._fork_check()
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is not None and not link.closed:
            return link
        opening = self._opening.get(loop)
        if opening is None:
            for old in [lp for lp in self._links if lp.is_closed()]:
                self._links.pop(old).close()  # a finished asyncio.run's connection
            opening = loop.create_task(self._open_link(loop, deadline))
            self._opening[loop] = opening
            opening.add_done_callback(lambda _: self._opening.pop(loop, None))
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            return await asyncio.shield(opening)

    async def _open_link(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Link:
        if self._ipc_path is not None:
            link: _Link = await _UnixLink.open(self._ipc_path, deadline)
        else:
            link = _ZmqLink(loop, self.endpoint)
        self._links[loop] = link
        return link

    def _unavailable(
        self, op: int, body: Any, start: float, *, sent: bool, unread: bool, why: str
    ) -> errors.Error:
        """Return the error for a request that got no reply (see client.outcome)."""
        self._info = self._hello = None  # a restarted broker may serve another config
        self._codecs = {}
        return outcome.no_reply(
            self.endpoint,
            op,
            body,
            time.monotonic() - start,
            sent=sent,
            unread=unread,
            why=why,
        )

    async def _call(
        self,
        op: int,
        timeout: float | None,
        pin: int,
        body: Any,
        expect: int,
        late: Callable[[int, Any], None] | None = None,
    ) -> Any:
        """Send one request; return its reply's body or raise the error it carries.

        Args:
            op: the request's `Op`.
            timeout: seconds for the broker's deadline; None: the Client's.
            pin: the transaction, session or stream it belongs to, or 0.
            body: the op's body.
            expect: the reply `Status` of success.
            late: for ops that open a pin: called with (status, body) of a reply
                that arrives after the caller was cancelled, to free the pin.
        """
        wait = self.timeout if timeout is None else float(timeout)
        if not wait > 0:
            raise errors.InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        start = time.monotonic()
        sent_by, deadline = start + wait, start + wait + GRACE
        frame_id = next(self._ids)
        frame = protocol.encode_request(frame_id, op, self.pool, wait, pin, body)
        info = self._info
        limit = info[protocol.INFO_MAX_MESSAGE_BYTES] if info else None
        if limit is not None and len(frame) > limit:
            raise errors.InterfaceError(
                errors.ER_TOO_LARGE,
                f"request of {len(frame)} bytes exceeds the broker's "
                f"max_message_bytes ({limit})",
            )
        while True:  # again only for a request that provably never reached a broker
            try:
                link = await self._link(sent_by)
            except (TimeoutError, _LinkLost, OSError, zmtp.ZmtpError) as err:
                raise self._unavailable(
                    op, body, start, sent=False, unread=False, why=str(err)
                ) from None
            future = link.loop.create_future()
            link.pending[frame_id] = future
            sent, end = False, 0
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await link.send(frame)
                    sent, end = True, link.written
                    status, reply = await future
                break
            except (TimeoutError, _LinkLost) as err:
                unread = sent and link.unread(end)
                lost = isinstance(err, _LinkLost)
                if lost and (unread or not sent) and time.monotonic() < sent_by:
                    await asyncio.sleep(CONNECT_RETRY)  # a restart: try its successor
                    continue
                raise self._unavailable(
                    op, body, start, sent=sent, unread=unread, why=str(err)
                ) from None
            except asyncio.CancelledError:
                if sent:
                    self._cancelled(link, frame_id, future, late)
                raise
            finally:
                if link.pending.get(frame_id) is future:
                    del link.pending[frame_id]
        if status == expect:
            return reply
        if status == Status.ERROR:
            raise errors.from_wire(reply)
        raise errors.InterfaceError(
            errors.ER_BAD_REQUEST, f"unexpected reply status {status!r} to op {op}"
        )

    def _cancelled(
        self,
        link: _Link,
        frame_id: int,
        future: asyncio.Future,
        late: Callable[[int, Any], None] | None,
    ) -> None:
        """Ask the broker to stop a request whose caller was cancelled."""
        if future.done() and not future.cancelled():
            # The reply came just before the cancellation: nothing runs any more.
            if late is not None and future.exception() is None:
                late(*future.result())
            return
        cancel = protocol.encode_request(
            next(self._ids), Op.CANCEL, "", GRACE, 0, frame_id
        )
        link.send_nowait(cancel)
        if late is not None and not link.closed:
            # Keep listening for the reply: it may carry a pin to free.
            link.pending[frame_id] = replacement = link.loop.create_future()

            def done(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    late(*f.result())

            replacement.add_done_callback(done)
        future.cancel()

    def _send_only(self, op: int, pin: int) -> None:
        """Send a request without waiting, from cleanup code: best effort."""
        if self._pid != os.getpid():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop here: the broker frees the pin by its idle timeout
        link = self._links.get(loop)
        if link is not None and not link.closed:
            link.send_nowait(
                protocol.encode_request(
                    next(self._ids), op, self.pool, GRACE, pin, None
                )
            )

    async def _pool_info(self, timeout: float | None) -> dict[str, Any]:
        """Return the pool's HELLO answer, asked once however many tasks want it."""
        self._fork_check()
        if self._info is not None:
            return self._info
        loop = asyncio.get_running_loop()
        hello = self._hello
        if hello is None or hello.get_loop() is not loop or hello.done():
            hello = self._hello = loop.create_task(
                self._call(Op.HELLO, timeout, 0, self.who(), Status.VALUE)
            )
        try:
            info = await asyncio.shield(hello)
        finally:
            if hello.done() and self._hello is hello:
                self._hello = None
        self._info = info
        return info

    async def _codec_for(self, timeout: float | None) -> Codec:
        """Return this loop's codec (loops in other threads must not share one)."""
        info = await self._pool_info(timeout)
        loop = asyncio.get_running_loop()
        codec = self._codecs.get(loop)
        if codec is None:
            for old in [lp for lp in self._codecs if lp.is_closed()]:
                del self._codecs[old]
            codec = self._codecs[loop] = Codec(
                info[protocol.INFO_CHARSET], info[protocol.INFO_SERVER_STATUS]
            )
        return codec

    async def _query(
        self, sql: str, params: Params, timeout: float | None, pin: int
    ) -> Result:
        codec = await self._codec_for(timeout)
        packets = await self._call(
            Op.QUERY, timeout, pin, codec.render(sql, params), Status.PACKETS
        )
        return codec.decode(packets)  # synchronous: no other task uses codec meanwhile

    async def _executemany(
        self, sql: str, seq_params: Iterable[Params], timeout: float | None, pin: int
    ) -> Result:
        codec = await self._codec_for(timeout)
        statements = codec.render_many(sql, seq_params)
        if not statements:
            return Result([], (), 0, None)
        replies = await self._call(
            Op.EXECUTEMANY, timeout, pin, statements, Status.BATCH
        )
        # The broker answers every statement or errs, so there is one at least.
        return Result.combine([codec.decode(packets) for packets in replies])


# Pinned work ------------------------------------------------------------------------


class _Pinned:
    """What transactions, sessions and streams share: owner check and one-at-a-time."""

    _kind = "pinned object"

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._pid = os.getpid()
        self._lock: asyncio.Lock | None = None
        self.pin = 0

    def _check_owner(self) -> None:
        if self._pid != os.getpid():
            raise errors.InterfaceError(
                errors.ER_WRONG_OWNER,
                f"this {self._kind} belongs to pid {self._pid}; "
                "open your own in this process",
            )

    def _check_open(self) -> None:
        self._check_owner()
        if not self.pin:
            raise errors.InterfaceError(
                errors.ER_BAD_PIN, f"this {self._kind} is not open"
            )

    def _timeout_for(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _serial(self) -> asyncio.Lock:
        """Return the lock that runs this object's requests one at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _free_late(self, close_op: Op) -> Callable[[int, Any], None]:
        """Return a callback freeing a pin whose opening reply came too late."""

        def free(status: int, body: Any) -> None:
            if status == Status.SERVED:  # a replica's reply wraps the usual one
                status, body = body[1], body[2]
            if status == Status.VALUE and isinstance(body, int) and body:
                self._client._send_only(close_op, body)
            elif status == Status.CHUNK and not body[1]:
                self._client._send_only(close_op, body[0])

        return free

    async def query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Result:
        """Run one statement on the pinned connection."""
        self._check_open()
        async with self._serial():
            return await self._client._query(
                sql, params, self._timeout_for(timeout), self.pin
            )

    async def executemany(
        self, sql: str, seq_params: Iterable[Params], *, timeout: float | None = None
    ) -> Result:
        """Run sql once per parameter set on the pinned connection."""
        self._check_open()
        async with self._serial():
            return await self._client._executemany(
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

    async def __aenter__(self) -> Transaction:
        await self.begin()
        return self

    async def __aexit__(
        self, exc_type: type | None, exc: BaseException | None, tb: object
    ) -> None:
        if not self.pin:
            return
        if exc_type is None:
            await self.commit()
            return
        try:
            await self.rollback()
        except errors.Error:
            # The broker rolls back a silent transaction; keep the first error.
            self.pin = 0

    async def begin(self) -> None:
        """Pin a connection and start the transaction (``async with`` does it)."""
        self._check_owner()
        if self.pin or self._finished:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "transaction already begun")
        body = {
            "isolation": self.isolation,
            "readonly": self.readonly,
            "who": self._client.who(),
        }
        self.pin = await self._client._call(
            Op.BEGIN, self._timeout, 0, body, Status.VALUE, self._free_late(Op.ROLLBACK)
        )

    async def commit(self, *, timeout: float | None = None) -> None:
        """Commit, and free the connection."""
        await self._end(Op.COMMIT, timeout)

    async def rollback(self, *, timeout: float | None = None) -> None:
        """Roll back, and free the connection."""
        await self._end(Op.ROLLBACK, timeout)

    async def _end(self, op: Op, timeout: float | None) -> None:
        self._check_open()
        timeout = self._timeout_for(timeout)
        async with self._serial():
            pin, self.pin, self._finished = self.pin, 0, True
            if not pin:
                raise errors.InterfaceError(
                    errors.ER_BAD_PIN, "transaction is not open"
                )
            codec = await self._client._codec_for(timeout)
            codec.decode(
                await self._client._call(op, timeout, pin, None, Status.PACKETS)
            )


class Session(_Pinned):
    """A connection pinned without a transaction: session state lives here only."""

    _kind = "session"

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type | None, *exc: object) -> None:
        if self.pin:
            try:
                await self.close()
            except errors.Error:
                # Leaving on an exception: the broker frees a silent session.
                if exc_type is None:
                    raise

    async def open(self) -> None:
        """Pin a connection (``async with`` does it)."""
        self._check_owner()
        if self.pin:
            raise errors.InterfaceError(errors.ER_BAD_PIN, "session already open")
        self.pin = await self._client._call(
            Op.SESSION_OPEN,
            self._timeout,
            0,
            {"who": self._client.who()},
            Status.VALUE,
            self._free_late(Op.SESSION_CLOSE),
        )

    async def close(self, *, timeout: float | None = None) -> None:
        """End the session; the broker resets the connection before reuse."""
        self._check_owner()
        if not self.pin:
            return
        pin, self.pin = self.pin, 0
        await self._client._call(
            Op.SESSION_CLOSE, self._timeout_for(timeout), pin, None, Status.VALUE
        )


class _NeedMore(Exception):
    """The stream's packets ran out: await the next chunk, then read again."""


class Stream(_Pinned):
    """Rows of one statement pulled from the broker chunk by chunk: ``async for``.

    Leaving the loop early should close the stream (``await stream.aclose()``
    or ``async with``); otherwise garbage collection sends the close without
    waiting, or the broker frees the connection after its idle timeout.
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
        replica: bool = False,
    ) -> None:
        super().__init__(client, timeout)
        self._sql, self._params, self._chunk_rows = sql, params, chunk_rows
        self._replica = replica
        self.served_by: str | None = None  # "primary" or "replica HOST:PORT", once open
        self._result: Any = None
        self._next: bytes | None = None  # a chunk fetched for the codec to take
        self._done = False  # the broker sent the last chunk and freed the connection
        self._finished = False  # no more rows for the caller

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def description(self) -> tuple | None:
        """PEP 249 7-tuples of the result's columns, once the first row was asked."""
        return self._result.description if self._result is not None else None

    async def __anext__(self) -> tuple:
        if self._finished:
            raise StopAsyncIteration
        self._check_owner()
        async with self._serial():
            return await self._next_row()

    async def _next_row(self) -> tuple:
        if self._finished:
            raise StopAsyncIteration
        if self._result is None:
            await self._open()
            if self._finished:
                raise StopAsyncIteration
        while True:
            try:
                row = self._result._read_rowdata_packet_unbuffered()
                break
            except _NeedMore:
                await self._more()
            except errors.Error:  # ours (a truncated reply): already a client error
                self._finish()
                raise
            except pymysql.MySQLError as err:
                self._finish()
                raise errors.from_pymysql(err) from err
            except BaseException:
                self._finish()
                raise
        if row is None:
            self._finish()
            raise StopAsyncIteration
        return row

    async def _open(self) -> None:
        client = self._client
        codec = await client._codec_for(self._timeout)
        body = [codec.render(self._sql, self._params), self._chunk_rows, client.who()]
        reply = await client._call(
            Op.STREAM_OPEN_REPLICA if self._replica else Op.STREAM_OPEN,
            self._timeout,
            0,
            body,
            Status.SERVED if self._replica else Status.CHUNK,
            self._free_late(Op.STREAM_CLOSE),
        )
        if self._replica:
            self.served_by, _, reply = reply
        else:
            self.served_by = protocol.SERVED_BY_PRIMARY
        packets = await self._whole_rows(self._chunk(reply))
        info = await client._pool_info(self._timeout)
        stream_codec = Codec(
            info[protocol.INFO_CHARSET],
            info[protocol.INFO_SERVER_STATUS],
            weak_refill(self._refill),
        )
        try:
            self._result = stream_codec.open_stream(packets)
        except errors.Error:
            self._finish()
            raise
        if not self._result.unbuffered_active:
            self._finish()

    def _chunk(self, reply: list) -> bytes:
        pin, done, packets = reply
        self.pin, self._done = (0 if done else pin), bool(done)
        return packets

    async def _whole_rows(self, packets: bytes) -> bytes:
        while not self._done and mysql.ends_continued(packets):
            packets += await self._fetch()
        return packets

    async def _fetch(self) -> bytes:
        if self._done:
            raise errors.InternalError(0, "stream ended before its last row")
        reply = await self._client._call(
            Op.STREAM_NEXT, self._timeout, self.pin, None, Status.CHUNK
        )
        return self._chunk(reply)

    async def _more(self) -> None:
        self._next = await self._whole_rows(await self._fetch())

    def _refill(self) -> bytes:
        data, self._next = self._next, None
        if data is None:
            raise _NeedMore
        return data

    def _finish(self) -> None:
        self._finished = True
        if self._result is not None:
            # Stop pymysql's finaliser from draining the rest through _refill().
            self._result.unbuffered_active = False

    async def aclose(self) -> None:
        """Stop the stream and free its connection now."""
        self._check_owner()
        self._finish()
        if self.pin:
            pin, self.pin = self.pin, 0
            await self._client._call(
                Op.STREAM_CLOSE, self._timeout, pin, None, Status.VALUE
            )

    def __del__(self) -> None:
        if self.pin and self._pid == os.getpid():
            self._finish()
            self._client._send_only(Op.STREAM_CLOSE, self.pin)
            self.pin = 0


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
