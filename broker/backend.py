"""One MySQL connection (a backend), driven by the I/O loop without blocking.

pymysql opens the connection (handshake, auth, charset, init_sql) in a
connector thread; from then on the I/O thread owns its socket: it writes one
command packet at a time and reads the response into a buffer that the
`Scanner` walks, so the reply can be forwarded as MySQL's own packets. No
thread hand-off and no row parsing happen per statement: that is what lets one
Python thread serve thousands of statements a second.

A backend runs one command at a time, except that plain reads may be
pipelined behind a running read (`pipe`): MySQL answers commands in the order
it reads them, so the responses are cut apart in order and each goes to its
own request. When a response is complete the backend calls the command's
callback with the raw packets; a stream's callback is called once per chunk,
and reading pauses between chunks so an unread result waits in MySQL's socket
buffers, not in the broker's memory.

Where a backend is held (`state`, `request`, `pin`) is written only by its
`Pool`'s verbs; the backend itself keeps the command in flight, its socket
and whether that socket is closed (`closed`).
"""

from __future__ import annotations

import collections
import enum
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pymysql

from broker.poller import POLLIN, POLLOUT, Poller
from broker.reaper import statement_tag
from broker.scanner import Scanner
from client import errors
from client.wire import mysql
from client.wire.mysql import COM_QUERY, SESSION_STATE_CHANGED, command_packets

if TYPE_CHECKING:
    from broker.config import PoolConfig
    from broker.pool import Pool

log = logging.getLogger(__name__)


RECV_BYTES = 65536  # measured: recv(262144) costs ~16 µs a call against ~1 µs

Done = Callable[["Backend", bytes | None, errors.Error | None], None]


class State(enum.Enum):
    """Where a backend is; each comment says who holds it in that state."""

    IDLE = 1  # in Pool._idle, ready to take a request
    BUSY = 2  # running a command for `request` (or for its pin's stream)
    PINNED = 3  # between statements of a transaction, session or stream (`pin`)
    RESETTING = 4  # running its reset commands (`reset_steps`) before going IDLE
    CLOSED = 5  # gone; the pool has forgotten it


class Backend:
    """A MySQL connection whose socket the I/O loop reads and writes directly."""

    def __init__(
        self,
        pool: Pool,
        config: PoolConfig,
        conn: pymysql.connections.Connection,
        poller: Poller,
        on_closed: Callable[[Backend], None],
    ) -> None:
        self.pool = pool
        self.pool_name = pool.name
        self.config = config  # what it was opened with: KILL goes there
        self._poller = poller
        self._tag = COM_QUERY + statement_tag()  # who sent it, in PROCESSLIST
        self._conn = conn  # keeps pymysql's objects, and so the socket, alive
        self.sock: socket.socket = conn._sock
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.thread_id: int = conn.thread_id()
        self.server_status: int = conn.server_status
        self.server_version: str = conn.get_server_info()
        self.created = self.last_used = time.monotonic()
        self.uses = 0
        # Written by the pool's verbs only (see broker.pool).
        self.state = State.IDLE
        self.request: Any = None  # the Request its running command answers
        # Requests whose statements were sent behind the running one, in order.
        self.piped: collections.deque[Any] = collections.deque()
        self.head_since = 0.0  # when the running command's response became next
        self.pipe_ok = False  # the running command is a plain read: pipe behind it
        self.pin: Any = None  # the Pin holding it, when PINNED or busy for one
        self.reset_steps: list[bytes] = []  # what its reset still has to send
        self.closed = False  # the socket is closed; the pool forgets it next
        self.on_closed = on_closed  # lost while no command ran
        # Called with a response whose OK packet tracks session state (a
        # primary's last_gtid), before the response's own callback.
        self.on_state_change: Callable[[Backend, bytes], None] | None = None
        self.cancel_started = 0.0  # when KILL QUERY was asked for; 0 when not

        self.dirty = False  # session state left behind; reset before reuse
        self.deadline = 0.0  # monotonic; 0 when nothing is running
        self.cancelling = False  # a KILL QUERY was sent for the running command
        self.paused = False  # a stream chunk is out; wait before reading more
        self.chunk_rows = 0  # stream: rows per chunk; 0 for whole responses
        self._row_limit = 0  # stream: deliver when the scanner has counted this many
        self.scanner = Scanner()
        self._in = bytearray()
        self._out = b""
        self._done: Done | None = None
        self._events = POLLIN
        poller.register(self.fd, POLLIN)

    def _watch(self) -> None:
        """Poll for reading unless a chunk is out; for writing while output waits."""
        events = (0 if self.paused else POLLIN) | (POLLOUT if self._out else 0)
        if events != self._events:
            self._events = events
            self._poller.modify(self.fd, events)

    def __repr__(self) -> str:
        return f"<Backend {self.pool_name}#{self.thread_id} {self.state.name}>"

    @property
    def running(self) -> bool:
        """Whether a command is in flight."""
        return self._done is not None

    def send(
        self, command: bytes, done: Done, deadline: float = 0.0, chunk_rows: int = 0
    ) -> None:
        """Write one command (command byte and body); call done with the response.

        With chunk_rows, done is called with every chunk of that many rows and
        reading pauses until `resume`; ``scanner.done`` tells the last chunk.
        """
        assert self._done is None, f"{self} already runs a command"  # noqa: S101
        if command[:1] == COM_QUERY:
            command = self._tag + memoryview(command)[1:]
        packet = command_packets(command)
        self._done = done
        self.deadline = deadline
        self.chunk_rows = self._row_limit = chunk_rows
        self.cancelling = False
        self.cancel_started = 0.0
        self.pipe_ok = False
        self.scanner.reset()
        self.uses += 1
        self.last_used = self.head_since = time.monotonic()
        self._out = packet
        self.flush()

    def pipe(self, command: bytes, req: Any) -> None:
        """Send a command behind the running one; its response goes to the same done.

        For statements that fit in one packet and whose outcome does not
        depend on what runs before them on the connection (plain reads).
        """
        assert self._done is not None, f"{self} runs no command"  # noqa: S101
        self.piped.append(req)
        self.uses += 1
        command = self._tag + memoryview(command)[1:]
        self._out += command_packets(command)
        self.flush()

    def kill_sent(self, now: float) -> None:
        """Note that KILL QUERY was asked for the running command: one per statement."""
        self.cancelling = True
        self.cancel_started = now
        self.deadline = 0.0  # kill_grace covers the rest

    def kill_answered(self, now: float) -> None:
        """Note MySQL's answer to the KILL; kill_grace runs from here."""
        self.cancelling = False
        self.cancel_started = now

    def flush(self) -> None:
        """Write what is pending; leave the rest for when the socket is writable."""
        if not self._out:
            return
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self.lost(f"write failed: {err}")
            return
        self._out = self._out[sent:]
        self._watch()

    def on_readable(self) -> None:
        """Read what MySQL sent and deliver a complete response or chunk."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            self.lost(f"read failed: {err}")
            return
        if not data:
            self.lost("server closed the connection")
            return
        if self._done is None:
            # Unsolicited bytes on an idle connection: the server is shutting
            # it down (an error packet then EOF). It is no longer usable.
            self.lost("server sent data on an idle connection")
            return
        self._deliver(data if not self._in else self._take(data))

    def _take(self, data: bytes) -> bytearray:
        self._in += data
        return self._in

    def drain(self, done: Done) -> None:
        """Stop chunking a stream: read the rest of the response and hand it to done."""
        self._done = done
        self.chunk_rows = self._row_limit = 0
        self.paused = False
        self.deadline = 0.0
        self._watch()
        self._deliver(self._in)

    def resume(self, deadline: float) -> None:
        """Continue a paused stream until deadline: hand over buffered rows, read on."""
        self.deadline = deadline
        self.paused = False
        self._row_limit = self.scanner.rows + self.chunk_rows
        self._watch()
        self._deliver(self._in)

    def _deliver(self, buf: bytes | bytearray) -> None:
        """Hand over a complete response or chunk found in buf.

        buf is either `_in` or, in the usual case of a response that arrived in
        one read with nothing buffered before it, the read itself: then the
        bytes go out without being copied.
        """
        scanner = self.scanner
        # Scanner reads bytes as well as bytearray.
        done = scanner.scan(buf, self._row_limit)  # type: ignore[arg-type]
        if not done and not (self._row_limit and scanner.rows >= self._row_limit):
            if buf is not self._in:
                self._in += buf  # keep the partial response; offsets stay valid
            return
        end = scanner.end
        if buf is self._in:
            data = bytes(buf) if end == len(buf) else bytes(buf[:end])
            del buf[:end]
        elif end == len(buf):
            data = buf  # type: ignore[assignment]  # not _in: the bytes just read
        else:
            data = buf[:end]  # type: ignore[assignment]
            self._in += buf[end:]
        scanner.end = 0
        if done and scanner.status & SESSION_STATE_CHANGED and self.on_state_change:
            self.on_state_change(self, data)
        callback = self._done
        if done and self.piped:
            # Another response follows: the callback moves `request` on to it.
            scanner.reset()
            self.head_since = time.monotonic()
            assert callback is not None  # noqa: S101
            callback(self, data, None)
            if self._in and self._done is not None:
                self._deliver(self._in)
            return
        if done:
            self._done = None
            self.deadline = 0.0
            if self._in:
                self.lost("server sent more than one response")
                return
        else:
            self.paused = True
            self.deadline = 0.0  # paused: the pin's idle timeout applies now
            self._watch()
        assert callback is not None  # noqa: S101
        callback(self, data, None)

    def lost(self, reason: str) -> None:
        """Mark the connection dead and tell the running command, if any."""
        if self.closed:
            return
        log.warning(
            "pool %s: connection %d lost (%s)", self.pool_name, self.thread_id, reason
        )
        callback, self._done = self._done, None
        self.close()
        if callback is None:
            self.on_closed(self)
        else:
            callback(
                self,
                None,
                errors.OperationalError(
                    errors.CR_SERVER_LOST,
                    f"Lost connection to MySQL server during query ({reason})",
                ),
            )

    def close(self) -> None:
        """Say goodbye to the server (best effort) and close the socket."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._done is None:
                self.sock.send(mysql.QUIT_PACKET)
        except OSError:
            pass  # the socket is going away either way
        self._done = None
        self._poller.unregister(self.fd)
        self.sock.close()
        self._conn._sock = None  # pymysql must not touch it again


def error_from_packets(data: bytes) -> errors.Error:
    """Return the client error for the first error packet in a response."""
    for start, end in mysql.packets(data):
        if data[start : start + 1] == b"\xff":
            try:
                pymysql.err.raise_mysql_exception(data[start:end])
            except pymysql.MySQLError as err:
                return errors.from_pymysql(err)
    return errors.InternalError(0, "MySQL reported an error the broker could not read")
