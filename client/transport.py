"""One connection to the broker per process and thread: requests, ids, timeouts, fork.

A `Transport` belongs to the process and thread that made it. After ``fork()``
the child builds its own and never touches (not even closes) what it
inherited: libzmq state copied by fork is not safe to use, and closing it could
disturb the parent. Abandoned objects are parked in `_INHERITED` so the garbage
collector never finalises them in the child.

Two links speak the same ZeroMQ protocol (ZMTP 3.0, DEALER to the broker's
ROUTER): ipc:// endpoints use a plain unix socket in the calling thread
(`client.wire.zmtp`), which saves libzmq's I/O-thread hand-offs on the hot local
path; tcp:// endpoints use a pyzmq DEALER.

Timeouts follow the ZeroMQ guide's Lazy Pirate pattern: when no reply comes in
time, the connection is closed and a fresh one made for the next call, so a
stale request can never be delivered later and a late reply can never meet a
later request. Request ids are checked all the same.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import threading
import time
from typing import Any

import zmq

from client import errors, outcome
from client.wire import protocol, zmtp

GRACE = 2.0  # extra wait past the deadline for the broker's QueryTimeout reply
RECONNECT_IVL_MS = 50  # retry a vanished broker quickly: restarts take ~1 s
CONNECT_RETRY = 0.05  # seconds between attempts while the broker's socket is absent
RECV_BYTES = 65536
MAX_REPLY_BYTES = 2**40  # replies are trusted; the limit only guards against garbage

_lock = threading.Lock()
_context: zmq.Context | None = None
_context_pid = 0
_INHERITED: list[Any] = []
_HOST = socket.gethostname().encode()


class _Timeout(Exception):
    """The deadline passed before the link could finish."""


def context() -> zmq.Context:
    """Return this process's ZeroMQ context, making a new one after fork."""
    global _context, _context_pid
    pid = os.getpid()
    if _context_pid != pid:
        with _lock:
            if _context_pid != pid:
                if _context is not None:
                    _INHERITED.append(_context)
                _context = zmq.Context(io_threads=1)
                _context_pid = pid
    return _context  # type: ignore[return-value]


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a lock held by another parent thread stays held


os.register_at_fork(after_in_child=_after_fork_in_child)


class _StreamLink:
    """ZMTP over a unix socket, driven in the caller's thread.

    The socket stays non-blocking and waits go through poll(): socket
    timeouts would cost two fcntl() calls each time they change.
    """

    def __init__(self, path: str, deadline: float) -> None:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() + CONNECT_RETRY > deadline:
                    raise _Timeout from None
                time.sleep(CONNECT_RETRY)
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        self.sock = sock
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        self._reader = zmtp.FrameReader(MAX_REPLY_BYTES)
        try:
            # Who we are, so the broker can bound one process's requests.
            me = {b"X-Pid": str(os.getpid()).encode(), b"X-Host": _HOST}
            try:
                self._write(zmtp.greeting() + zmtp.ready(b"DEALER", me), deadline)
            except BrokenPipeError:
                pass  # refused at once (broker at its fd limit): read the reason
            greeting = self._read_exact(zmtp.GREETING_SIZE, deadline)
            zmtp.check_greeting(greeting)
            flags, body = self._next_frame(deadline)
            if not flags & zmtp.COMMAND or zmtp.parse_command(body)[0] != b"READY":
                raise zmtp.ZmtpError("broker did not send READY")
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
        self._write(zmtp.encode_frame(frame), deadline)

    def recv(self, deadline: float) -> bytes:
        while True:
            flags, body = self._next_frame(deadline)
            if not flags & zmtp.COMMAND:
                return body

    @staticmethod
    def _wait(poller: select.poll, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            raise _Timeout

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
        self._reader.feed(data)

    def _next_frame(self, deadline: float) -> tuple[int, bytes]:
        while (frame := self._reader.next()) is None:
            self._fill(deadline)
        return frame

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while (data := self._reader.take(size)) is None:
            self._fill(deadline)
        return data

    def close(self) -> None:
        self.sock.close()


class _ZmqLink:
    """A pyzmq DEALER socket."""

    def __init__(self, endpoint: str, curve: tuple | None) -> None:
        sock = context().socket(zmq.DEALER)
        if curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
        sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a broker that is not connected: a send then waits
        # (bounded by SNDTIMEO) instead of piling up stale requests.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.connect(endpoint)
        self.sock = sock

    def stale(self) -> bool:
        return False  # libzmq reconnects by itself

    def unread(self, err: BaseException) -> bool:
        return False  # libzmq took the frame: nothing more can be known

    def send(self, frame: bytes, deadline: float) -> None:
        self.sock.setsockopt(
            zmq.SNDTIMEO, max(1, int((deadline - time.monotonic()) * 1000))
        )
        try:
            self.sock.send(frame)
        except zmq.Again:
            raise _Timeout from None

    def recv(self, deadline: float) -> bytes:
        self.sock.setsockopt(
            zmq.RCVTIMEO, max(1, int((deadline - time.monotonic()) * 1000))
        )
        try:
            return self.sock.recv()
        except zmq.Again:
            raise _Timeout from None

    def close(self) -> None:
        self.sock.close(linger=0)


class Transport:
    """The connection to the broker used by one thread of one process."""

    def __init__(self, endpoint: str, curve: tuple | None = None) -> None:
        self.pid = os.getpid()
        self._curve = curve
        self.thread = threading.get_ident()
        self._endpoint = endpoint
        self._ipc_path = (
            endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None
        )
        self._ids = itertools.count(1)
        self._link: _StreamLink | _ZmqLink | None = None

    def __del__(self) -> None:
        if self._link is not None:
            if self.pid == os.getpid():
                self._link.close()
            else:
                _INHERITED.append(self._link)

    def _connect(self, deadline: float) -> _StreamLink | _ZmqLink:
        link = self._link
        if link is not None and link.stale():
            # The broker went away between calls (a restart): nothing was sent
            # on this connection, so a fresh one is safe.
            self.reset()
            link = None
        if link is None:
            if self._ipc_path is not None:
                link = _StreamLink(self._ipc_path, deadline)
            else:
                link = _ZmqLink(self._endpoint, self._curve)
            self._link = link
        return link

    def reset(self) -> None:
        """Drop the connection; the next call makes a fresh one."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def call(
        self,
        op: int,
        pool: str,
        timeout: float,
        pin: int,
        body: Any,
        max_bytes: int | None = None,
    ) -> tuple[int, Any]:
        """Send one request and return (status, body) of its reply.

        Raises BrokerUnavailable when no reply arrives within timeout + GRACE
        (`errors.ReplyLost`, also an OutcomeUnknown, for a write the broker may
        have run), and InterfaceError, without sending, for a request over
        max_bytes.
        """
        req_id = next(self._ids)
        frame = protocol.encode_request(req_id, op, pool, timeout, pin, body)
        if max_bytes is not None and len(frame) > max_bytes:
            raise errors.InterfaceError(
                errors.ER_TOO_LARGE,
                f"request of {len(frame)} bytes exceeds the broker's "
                f"max_message_bytes ({max_bytes})",
            )
        return self.exchange(req_id, frame, timeout, op, body)

    def send_only(self, op: int, pool: str, pin: int) -> None:
        """Send a request and forget it; its reply is dropped as a late one."""
        frame = protocol.encode_request(next(self._ids), op, pool, GRACE, pin, None)
        try:
            self._connect(time.monotonic() + 0.1).send(frame, time.monotonic() + 0.1)
        except (_Timeout, OSError, zmq.ZMQError, zmtp.ZmtpError):
            # No broker (it frees what this would have freed, by timeout); and
            # a half-written frame must not prefix the next request.
            self.reset()

    def exchange(
        self, req_id: int, frame: bytes, timeout: float, op: int = 0, body: Any = None
    ) -> tuple[int, Any]:
        """Send an encoded request and return its reply.

        Reaching the broker and handing it the request may take up to timeout;
        the reply may take GRACE longer, the time the broker needs to report
        a deadline it enforced. A request that provably never reached a broker
        (the connection broke before it went out whole, or the broker closed
        with it unread: a restart) is sent again on a new connection while its
        deadline allows, reads and writes alike. When no reply comes,
        `client.outcome` says what the caller may conclude; op and body tell a
        write from a read.
        """
        start = time.monotonic()
        sent_by, deadline = start + timeout, start + timeout + GRACE
        while True:
            link, sent = None, False
            try:
                link = self._connect(sent_by)
                link.send(frame, sent_by)
                sent = True
                while True:
                    rid, status, reply = protocol.decode_reply(link.recv(deadline))
                    if rid == req_id:
                        return status, reply
                    # A late reply to a request abandoned earlier: drop it.
            except (_Timeout, OSError, zmtp.ZmtpError, zmq.ZMQError) as err:
                unread = sent and link is not None and link.unread(err)
                self.reset()
                if isinstance(err, PermissionError):
                    raise errors.BrokerUnavailable(
                        errors.ER_BROKER_UNAVAILABLE,
                        f"cannot reach the broker: no permission on {self._ipc_path} "
                        "(is this user in its group?)",
                    ) from None
                if isinstance(err, zmtp.Refused):  # final: the broker said why
                    raise errors.BrokerUnavailable(
                        errors.ER_BROKER_UNAVAILABLE,
                        f"the broker at {self._endpoint} refused the connection: {err}",
                    ) from None
                timed_out = isinstance(err, _Timeout)
                if (
                    not timed_out
                    and (unread or not sent)
                    and time.monotonic() + CONNECT_RETRY < sent_by
                ):
                    time.sleep(CONNECT_RETRY)  # a restarting broker: try its successor
                    continue
                raise outcome.no_reply(
                    self._endpoint,
                    op,
                    body,
                    time.monotonic() - start,
                    sent=sent,
                    unread=unread,
                    why="" if timed_out else str(err) or type(err).__name__,
                ) from None
            except protocol.ProtocolError as err:
                self.reset()
                raise errors.InterfaceError(errors.ER_BAD_REQUEST, str(err)) from err
            except BaseException:
                # Interrupted (KeyboardInterrupt, a signal): ask the broker to cancel
                # the statement; its reply must not meet the next request, so start
                # over on a new connection.
                self._send_cancel(req_id)
                self.reset()
                raise

    def _send_cancel(self, req_id: int) -> None:
        link = self._link
        if link is None:
            return
        frame = protocol.encode_request(
            next(self._ids), protocol.Op.CANCEL, "", GRACE, 0, req_id
        )
        try:
            link.send(frame, time.monotonic() + 0.1)
        except (_Timeout, OSError, zmq.ZMQError):
            pass  # the broker's deadline still stops the statement
