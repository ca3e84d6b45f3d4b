"""A scripted MySQL server over a socketpair, and a harness that drives Dispatch.

Enough of the protocol for the broker's backends (which never parse rows):
command packets in; OK, ERR, EOF and text result sets out, with sequence
numbers and status flags (autocommit, in transaction) as a server sends
them. Backends are built already connected, as `broker.connector` hands
them over, so there is no handshake. Everything runs in the test's thread:
`Harness.pump` answers what the fakes received and feeds the backends'
sockets to them until a condition holds.

Modelled on DBUtils' tests/mock_db.py and httpcore's mock backend: the
scripted side is plain data (`FakeMySQL.script`), the driven side is the
real code.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from broker.backend import Backend
from broker.config import PoolConfig
from broker.connector import Outcome
from broker.dispatch import Dispatch
from broker.metrics import BrokerMetrics
from broker.poller import POLLIN, POLLOUT, Poller
from broker.pool import Pool
from broker.request import Request

COM_QUIT, COM_QUERY, COM_PING, COM_RESET = 0x01, 0x03, 0x0E, 0x1F
AUTOCOMMIT, IN_TRANS = 0x0002, 0x0001
_TAG = re.compile(rb"^/\* mysql-broker \S+ \d+ \*/ ")


def _lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    return b"\xfd" + n.to_bytes(3, "little")


def _text(value: bytes) -> bytes:
    return _lenenc(len(value)) + value


def ok(status: int = AUTOCOMMIT, affected: int = 0, insert_id: int = 0) -> list[bytes]:
    """Return an OK packet's payload."""
    return [
        b"\x00"
        + _lenenc(affected)
        + _lenenc(insert_id)
        + status.to_bytes(2, "little")
        + b"\x00\x00"
    ]


def err(errno: int, message: str, sqlstate: str = "HY000") -> list[bytes]:
    """Return an ERR packet's payload."""
    return [
        b"\xff"
        + errno.to_bytes(2, "little")
        + b"#"
        + sqlstate.encode()
        + message.encode()
    ]


def _eof(status: int) -> bytes:
    return b"\xfe\x00\x00" + status.to_bytes(2, "little")


def result(
    columns: list[str], rows: list[tuple], status: int = AUTOCOMMIT
) -> list[bytes]:
    """Return a text result set's payloads: count, definitions, EOF, rows, EOF."""
    out = [_lenenc(len(columns))]
    for name in columns:
        out.append(
            _text(b"def")
            + _text(b"")  # schema
            + _text(b"")  # table
            + _text(b"")  # org_table
            + _text(name.encode())
            + _text(name.encode())
            + b"\x0c"
            + (33).to_bytes(2, "little")  # utf8
            + (255).to_bytes(4, "little")
            + b"\xfd"  # VAR_STRING
            + b"\x00\x00\x00\x00\x00"
        )
    out.append(_eof(status))
    for row in rows:
        out.append(b"".join(_text(str(v).encode()) for v in row))
    out.append(_eof(status))
    return out


class FakeConnection:
    """What `Backend` takes from a pymysql connection: a socket and its greeting."""

    server_status = AUTOCOMMIT

    def __init__(self, sock: socket.socket, thread_id: int) -> None:
        self._sock: socket.socket | None = sock
        self._thread_id = thread_id

    def thread_id(self) -> int:
        return self._thread_id

    def get_server_info(self) -> str:
        return "10.11.0-FakeMariaDB"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class FakeMySQL:
    """The server end of one connection: reads commands, answers from a script.

    ``script`` maps SQL (without the broker's tag comment) to response
    payloads, or to a callable returning them; unscripted SELECTs get one
    row of one column, anything else OK. With ``hold`` set, commands are
    kept in ``held`` unanswered (a slow statement) until `release`.
    """

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.sock, self.client_sock = socket.socketpair()
        self.sock.setblocking(False)
        self.script: dict[bytes, list[bytes] | Callable[[], list[bytes]]] = {}
        self.received: list[tuple[int, bytes]] = []  # (command byte, argument)
        self.hold = False
        self.held: list[tuple[int, bytes]] = []
        self.in_trans = False
        self.closed = False
        self._buf = bytearray()

    def status(self) -> int:
        return AUTOCOMMIT | (IN_TRANS if self.in_trans else 0)

    def serve(self) -> None:
        """Answer every complete command received so far (unless holding)."""
        if self.closed:
            return
        try:
            while data := self.sock.recv(65536):
                self._buf += data
        except BlockingIOError:
            pass
        while len(self._buf) >= 4:
            length = int.from_bytes(self._buf[:3], "little")
            if len(self._buf) < 4 + length:
                break
            payload = bytes(self._buf[4 : 4 + length])
            del self._buf[: 4 + length]
            command = (payload[0], _TAG.sub(b"", payload[1:]))
            self.received.append(command)
            if command[0] == COM_QUIT:
                continue
            if self.hold:
                self.held.append(command)
            else:
                self._answer(*command)

    def release(self, *responses: list[bytes]) -> None:
        """Stop holding; answer the held commands (with responses, in order)."""
        self.hold = False
        held, self.held = self.held, []
        for i, command in enumerate(held):
            if i < len(responses):
                self._send(responses[i])
            else:
                self._answer(*command)

    def die(self) -> None:
        """Close the server end, as a server that went away does."""
        self.closed = True
        self.sock.close()

    def sql(self) -> list[bytes]:
        """Return the SQL of every COM_QUERY received, in order."""
        return [arg for command, arg in self.received if command == COM_QUERY]

    def _answer(self, command: int, arg: bytes) -> None:
        if command != COM_QUERY:
            self._send(ok(self.status()))  # COM_PING, COM_RESET_CONNECTION
            return
        word = arg.split(None, 1)[0].upper() if arg.strip() else b""
        if word in (b"BEGIN", b"START"):
            self.in_trans = True
        elif word in (b"COMMIT", b"ROLLBACK"):
            self.in_trans = False
        scripted = self.script.get(arg)
        if callable(scripted):
            scripted = scripted()
        if scripted is None:
            if word == b"SELECT":
                scripted = result(["1"], [(1,)], self.status())
            else:
                scripted = ok(self.status())
        self._send(scripted)

    def _send(self, payloads: list[bytes]) -> None:
        self.sock.sendall(
            b"".join(
                len(p).to_bytes(3, "little") + bytes([seq & 0xFF]) + p
                for seq, p in enumerate(payloads, 1)
            )
        )


class FakeConnector:
    """Records the blocking work Dispatch asks for; the test plays the threads."""

    def __init__(self) -> None:
        self.opens: list[PoolConfig] = []
        self.kills: list[int] = []
        self.sides: dict[str, Any] = {}

    def open(self, pool: PoolConfig) -> None:
        self.opens.append(pool)

    def kill(self, pool: str, connect_args: dict, thread_id: int, tag: Any) -> None:
        self.kills.append(thread_id)

    def reap(self, pool: str, connect_args: dict, thread_id: int) -> None:
        return

    def close_idle_sides(self) -> None:
        return


class Sink:
    """Where the requests' replies go: the frontend's place, recorded."""

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, Any]] = {}

    def answer(self, req: Request, status: int, body: Any) -> None:
        assert req.req_id not in self.replies, f"request {req.req_id} answered twice"
        self.replies[req.req_id] = (status, body)

    def pool_info(self, pool: Pool) -> dict[str, Any]:
        return {"server_version": (pool.info or {}).get("server_version")}


class Harness:
    """One pool, Dispatch over it, fake servers for its backends, and a sink."""

    def __init__(self, **pool_settings: Any) -> None:
        settings = {"min_size": 0, "max_size": 2, **pool_settings}
        self.config = PoolConfig(name="t", dsn="mysql://u@127.0.0.1/db", **settings)
        self.connector = FakeConnector()
        self.pool = Pool(self.config, self.connector)  # type: ignore[arg-type]
        self.dispatch = Dispatch(
            {"t": self.pool},
            self.connector,  # type: ignore[arg-type]
            BrokerMetrics(),
        )
        self.poller = Poller()
        self.sink = Sink()
        self.fakes: dict[int, FakeMySQL] = {}  # by thread id
        self._next_id = 0

    def close(self) -> None:
        for backend in list(self.dispatch.backends.values()):
            backend.close()
        for fake in self.fakes.values():
            if not fake.closed:
                fake.sock.close()
        self.poller.close()

    def fulfil(self) -> list[Backend]:
        """Open the connections the pool asked for, as the connector threads do."""
        made = []
        while self.connector.opens:
            config = self.connector.opens.pop(0)
            self._next_id += 1
            fake = FakeMySQL(100 + self._next_id)
            self.fakes[fake.thread_id] = fake
            conn = FakeConnection(fake.client_sock, fake.thread_id)
            backend = Backend(
                self.pool,
                config,
                conn,  # type: ignore[arg-type]
                self.poller,
                self.dispatch.closed_while_free,
            )
            self.dispatch.adopt(backend)
            made.append(backend)
        return made

    def backends(self, count: int) -> list[Backend]:
        """Open count idle backends (the pool's min_size)."""
        self.pool.config = self.config = dataclasses.replace(
            self.config, min_size=count
        )
        self.pool.open_if_needed()
        return self.fulfil()

    def fake(self, backend: Backend) -> FakeMySQL:
        return self.fakes[backend.thread_id]

    def request(
        self, req_id: int, op: int, body: Any, pin: int = 0, timeout: float = 5.0
    ) -> Request:
        req = Request(b"peer", req_id, op, self.pool, pin, body, self.sink)
        req.timeout = timeout
        req.deadline = req.received + timeout
        return req

    def pump(self, until: Callable[[], bool], timeout: float = 2.0) -> None:
        """Serve the fakes and feed the backends until `until()` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the condition never held"
            for fake in list(self.fakes.values()):
                fake.serve()
            for fd, event in self.poller.poll(5):
                backend = self.dispatch.backends.get(fd)  # type: ignore[arg-type]
                if backend is None:
                    continue
                if event & POLLOUT:
                    backend.flush()
                if event & POLLIN and not backend.closed:
                    backend.on_readable()

    def answered(self, *req_ids: int) -> Callable[[], bool]:
        return lambda: all(i in self.sink.replies for i in req_ids)

    def kill_answered(self, backend: Backend) -> None:
        """Hand Dispatch the outcome of the KILL QUERY it asked for."""
        self.dispatch.killed(Outcome("kill", self.pool.name, tag=backend))
