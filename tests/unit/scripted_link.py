"""A scripted broker for client unit tests: a ZMTP ROUTER on a unix socket.

It speaks the real wire (`client.wire.zmtp`, `client.wire.protocol`) in a
thread, records every request, answers HELLO with a fixed pool info, and
answers everything else from a script of actions, one per request. MySQL
result packets are built by hand, as a server sends them, so the client's
pymysql decoding runs for real. No MariaDB, no subprocess.
"""

from __future__ import annotations

import collections
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.wire import protocol, zmtp
from client.wire.protocol import Op, Status

INFO = {
    protocol.INFO_CHARSET: "utf8mb4",
    protocol.INFO_SERVER_STATUS: 2,  # autocommit
    protocol.INFO_SERVER_VERSION: "10.11.0-scripted",
    protocol.INFO_MAX_MESSAGE_BYTES: 1 << 20,
}
LONGLONG, VAR_STRING = 8, 253


@dataclass
class Request:
    """One request as the broker decoded it."""

    req_id: int
    op: int
    pool: str
    timeout: float
    pin: int
    body: Any


Action = Callable[[Request], list[bytes] | None]  # reply frames; None: hang up


def reply(status: int, body: Any) -> Action:
    """Answer the request with (status, body)."""
    return lambda req: [protocol.encode_reply(req.req_id, status, body)]


def late_then(status: int, body: Any) -> Action:
    """Send a late reply to an older request first (it must be dropped), then this."""
    return lambda req: [
        protocol.encode_reply(req.req_id + 1000, Status.VALUE, "stale"),
        protocol.encode_reply(req.req_id, status, body),
    ]


def error(cls: str, errno: int, msg: str, sqlstate: str = "HY000") -> Action:
    """Answer with a wire error."""
    return reply(Status.ERROR, [cls, errno, msg, sqlstate])


def silence(req: Request) -> list[bytes]:
    """Read the request and never answer it."""
    return []


# MySQL packets ---------------------------------------------------------------------


def _lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    return b"\xfd" + n.to_bytes(3, "little")


def _text(value: bytes) -> bytes:
    return _lenenc(len(value)) + value


def _packets(payloads: list[bytes], seq: int = 1) -> bytes:
    out = b""
    for payload in payloads:
        out += len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload
        seq += 1
    return out


def ok_packet(affected: int = 0, insert_id: int = 0, info: bytes = b"") -> bytes:
    """Return MySQL's OK response (a write's)."""
    payload = b"\x00" + _lenenc(affected) + _lenenc(insert_id) + b"\x02\x00\x00\x00"
    return _packets([payload + info])


def error_packet(errno: int, sqlstate: str, msg: str) -> bytes:
    """Return MySQL's error response."""
    payload = b"\xff" + errno.to_bytes(2, "little") + b"#" + sqlstate.encode()
    return _packets([payload + msg.encode()])


def _eof() -> bytes:
    return b"\xfe\x00\x00\x02\x00"


def _column(name: str, type_code: int) -> bytes:
    return (
        _text(b"def")
        + _text(b"db")
        + _text(b"t")
        + _text(b"t")
        + _text(name.encode())
        + _text(name.encode())
        + b"\x0c"
        + (63 if type_code == LONGLONG else 45).to_bytes(2, "little")
        + (20).to_bytes(4, "little")
        + bytes((type_code,))
        + b"\x00\x00\x00\x00\x00"
    )


def _row(values: tuple) -> bytes:
    return b"".join(b"\xfb" if v is None else _text(str(v).encode()) for v in values)


def result_head(columns: dict[str, int]) -> list[bytes]:
    """Return the payloads before the rows: column count, definitions, EOF."""
    head = [_lenenc(len(columns))]
    head += [_column(name, type_code) for name, type_code in columns.items()]
    return [*head, _eof()]


def result_set(columns: dict[str, int], rows: list[tuple]) -> bytes:
    """Return a whole text result set, as MySQL answers a SELECT."""
    return _packets([*result_head(columns), *map(_row, rows), _eof()])


def stream_chunks(
    columns: dict[str, int], rows: list[tuple], per_chunk: int
) -> list[bytes]:
    """Return a result cut in chunks of per_chunk rows, as the broker streams it."""
    payloads = [*result_head(columns)]
    cut = [len(payloads) + per_chunk * (i + 1) for i in range(len(rows) // per_chunk)]
    payloads += [*map(_row, rows), _eof()]
    chunks, start, seq = [], 0, 1
    for end in [*cut, len(payloads)]:
        if end > start:
            chunks.append(_packets(payloads[start:end], seq))
            seq += end - start
            start = end
    return chunks


# The broker ------------------------------------------------------------------------


class ScriptedBroker:
    """A fake broker at ``endpoint``: records requests, answers from a script."""

    def __init__(self, path: str) -> None:
        self.endpoint = f"ipc://{path}"
        self.requests: list[Request] = []
        self._script: collections.deque[Action] = collections.deque()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def script(self, *actions: Action) -> None:
        """Queue actions for the next requests other than HELLO and CANCEL."""
        self._script.extend(actions)

    def ops(self) -> list[int]:
        """Return the ops received, in order."""
        return [r.op for r in self.requests]

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._closed = True
        for sock in [self._listener, *self._conns]:
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        peer = zmtp.Connection(b"ROUTER", (b"DEALER",), 1 << 30)
        try:
            conn.sendall(peer.start())
            while not self._closed:
                select.select([conn], [], [], 0.5)
                data = conn.recv(65536)
                if not data:
                    return
                for message in peer.receive(data):
                    frames = self._answer(
                        Request(*protocol.decode_request(message)[:6])
                    )
                    if frames is None:
                        return
                    conn.sendall(b"".join(map(zmtp.encode_frame, frames)))
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, req: Request) -> list[bytes] | None:
        self.requests.append(req)
        if req.op == Op.HELLO:
            return [protocol.encode_reply(req.req_id, Status.VALUE, INFO)]
        if req.op == Op.CANCEL:
            return [protocol.encode_reply(req.req_id, Status.VALUE, True)]
        action = self._script.popleft() if self._script else silence
        return action(req)
