"""The sync client's links to the broker, and what fork leaves behind.

Two links speak the same ZeroMQ protocol (ZMTP 3.0, DEALER to the broker's
ROUTER): ipc:// endpoints use a plain unix socket in the calling thread with
the sans-IO `client.wire.zmtp.Connection`, which saves libzmq's I/O-thread
hand-offs on the hot local path; tcp:// endpoints use a pyzmq DEALER, with
CurveZMQ when keys are given. A link raises TimeoutError when its deadline
(monotonic seconds) passes, OSError or ZmtpError when the connection fails.

After ``fork()`` a child never touches (not even closes) what it inherited:
libzmq state copied by fork is not safe to use, and closing it could disturb
the parent. Abandoned objects are parked in `INHERITED` so the garbage
collector never finalises them in the child.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any

import zmq

from client import outcome
from client.calls import CONNECT_RETRY
from client.wire import zmtp

RECONNECT_IVL_MS = 50  # retry a vanished broker quickly: restarts take ~1 s
RECV_BYTES = 65536
MAX_REPLY_BYTES = 2**40  # replies are trusted; the limit only guards against garbage

INHERITED: list[Any] = []  # made by a parent process: never touched, never freed
HOST = socket.gethostname().encode()

_lock = threading.Lock()
_context: zmq.Context | None = None
_context_pid = 0


def context() -> zmq.Context:
    """Return this process's ZeroMQ context, making a new one after fork."""
    global _context, _context_pid
    pid = os.getpid()
    if _context_pid != pid:
        with _lock:
            if _context_pid != pid:
                if _context is not None:
                    INHERITED.append(_context)
                _context = zmq.Context(io_threads=1)
                _context_pid = pid
    return _context  # type: ignore[return-value]


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a lock held by another parent thread stays held


os.register_at_fork(after_in_child=_after_fork_in_child)


def metadata() -> dict[bytes, bytes]:
    """Return the READY properties saying who we are (the broker bounds a process)."""
    return {b"X-Pid": str(os.getpid()).encode(), b"X-Host": HOST}


def connect_unix(path: str, deadline: float) -> socket.socket:
    """Return a non-blocking unix socket connected to path, retrying while absent."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() + CONNECT_RETRY > deadline:
                raise TimeoutError from None
            time.sleep(CONNECT_RETRY)
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


class UnixLink:
    """ZMTP over a unix socket, driven in the caller's thread.

    The socket stays non-blocking and waits go through poll(): socket
    timeouts would cost two fcntl() calls each time they change.
    """

    def __init__(self, path: str, deadline: float) -> None:
        sock = self.sock = connect_unix(path, deadline)
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        self._zmtp = zmtp.Connection(b"DEALER", (b"ROUTER",), MAX_REPLY_BYTES)
        self._messages: list[bytes] = []  # received, not yet taken
        try:
            try:
                self._write(self._zmtp.start(metadata()), deadline)
            except BrokenPipeError:
                pass  # refused at once (broker at its fd limit): read the reason
            while not self._zmtp.ready:
                self._fill(deadline)
        except BaseException:
            sock.close()
            raise

    def stale(self) -> bool:
        """Whether the broker closed this connection since the last call."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def unread(self, err: BaseException) -> bool:
        """Whether the broker provably never read all that was sent (see outcome)."""
        return outcome.reset_by_peer(err) or outcome.unread_bytes(self.sock) > 0

    def send(self, frame: bytes, deadline: float) -> None:
        """Send one message."""
        self._write(zmtp.encode_frame(frame), deadline)

    def recv(self, deadline: float) -> bytes:
        """Return the next message."""
        messages = self._messages
        while not messages:
            self._fill(deadline)
        return messages.pop(0)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    @staticmethod
    def _wait(poller: select.poll, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            raise TimeoutError

    def _write(self, data: bytes, deadline: float) -> None:
        while True:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self._wait(self._writable, deadline)

    def _fill(self, deadline: float) -> None:
        self._wait(self._readable, deadline)
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionResetError("broker closed the connection")
        self._messages += self._zmtp.receive(data)
        if self._zmtp.output:  # a heartbeat PING: answer it
            self._write(self._zmtp.take_output(), deadline)


class ZmqLink:
    """A pyzmq DEALER socket, with CurveZMQ when keys are given."""

    def __init__(self, endpoint: str, curve: tuple | None) -> None:
        self.sock = dealer(context(), endpoint, curve)

    def stale(self) -> bool:
        """Never: libzmq reconnects by itself."""
        return False

    def unread(self, err: BaseException) -> bool:
        """Never provable: libzmq took the frame, nothing more can be known."""
        return False

    def send(self, frame: bytes, deadline: float) -> None:
        """Send one message."""
        self.sock.setsockopt(
            zmq.SNDTIMEO, max(1, int((deadline - time.monotonic()) * 1000))
        )
        try:
            self.sock.send(frame)
        except zmq.Again:
            raise TimeoutError from None

    def recv(self, deadline: float) -> bytes:
        """Return the next message."""
        self.sock.setsockopt(
            zmq.RCVTIMEO, max(1, int((deadline - time.monotonic()) * 1000))
        )
        try:
            return self.sock.recv()
        except zmq.Again:
            raise TimeoutError from None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)


def dealer(ctx: zmq.Context, endpoint: str, curve: tuple | None) -> Any:
    """Return a DEALER socket of ctx connecting to endpoint (sync or asyncio)."""
    sock = ctx.socket(zmq.DEALER)
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.setsockopt(zmq.LINGER, 0)
    # Queue nothing for a broker that is not connected: a send then waits
    # (bounded by its timeout) instead of piling up stale requests.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.connect(endpoint)
    return sock


Link = UnixLink | ZmqLink
