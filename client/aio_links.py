"""The asyncio client's links: one connection per event loop, shared by its tasks.

Requests are tagged with ids and each reply resolves the future of its id in
``pending``, so many tasks share one socket. ipc:// endpoints are a unix
socket on the event loop's own selector speaking ZMTP with the sans-IO
`client.wire.zmtp.Connection`, as the sync `client.links` does; tcp://
endpoints use a ``zmq.asyncio`` DEALER socket (CurveZMQ when keys are given).
When a link fails, every request waiting on it fails with `LinkLost`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import zmq
import zmq.asyncio

from client import outcome
from client.calls import CONNECT_RETRY
from client.links import INHERITED, MAX_REPLY_BYTES, RECV_BYTES, dealer, metadata
from client.wire import protocol, zmtp

_zmq_context: zmq.asyncio.Context | None = None
_zmq_context_pid = 0


class LinkLost(Exception):
    """The connection to the broker failed; every request on it is unanswered."""


def zmq_context() -> zmq.asyncio.Context:
    """Return this process's zmq.asyncio context, making a new one after fork."""
    global _zmq_context, _zmq_context_pid
    if _zmq_context_pid != os.getpid():
        if _zmq_context is not None:
            INHERITED.append(_zmq_context)
        _zmq_context = zmq.asyncio.Context(io_threads=1)
        _zmq_context_pid = os.getpid()
    return _zmq_context  # type: ignore[return-value]


class AsyncLink:
    """What both links share: the futures of requests waiting for replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False

    def deliver(self, frame: bytes) -> None:
        """Resolve the future of the request a reply frame answers."""
        req_id, status, body = protocol.decode_reply(frame)
        future = self.pending.pop(req_id, None)
        # No future: a reply to a request abandoned by timeout or cancellation.
        if future is not None and not future.done():
            future.set_result((status, body))

    def fail_pending(self, err: BaseException) -> None:
        """Fail every waiting request with LinkLost."""
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(LinkLost(str(err) or type(err).__name__))

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

    def close_socket(self) -> None:
        """Close the socket itself."""
        raise NotImplementedError

    def __del__(self) -> None:
        # Only reachable once the loop let go of the link (closed, or no reader
        # registered), so closing the socket cannot confuse a live selector.
        if not self.closed and self.pid == os.getpid():
            self.closed = True
            self.close_socket()


class UnixLink(AsyncLink):
    """ZMTP on a unix socket, read and written by the event loop's selector."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        super().__init__(loop)
        self.sock = sock
        self.fd = sock.fileno()
        self._zmtp = zmtp.Connection(b"DEALER", (b"ROUTER",), MAX_REPLY_BYTES)
        self._out = bytearray()
        self._handed = 0  # bytes the kernel took; the rest wait in _out
        self._reset = False  # closed by ECONNRESET: the broker left our bytes unread
        self.ready: asyncio.Future = loop.create_future()
        loop.add_reader(self.fd, self._on_readable)
        self._write(self._zmtp.start(metadata()))

    @classmethod
    async def open(cls, path: str, deadline: float) -> UnixLink:
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
        try:
            messages = self._zmtp.receive(data)
            if self._zmtp.output:  # a heartbeat PING: answer it
                self._write(self._zmtp.take_output())
            if self._zmtp.ready and not self.ready.done():
                self.ready.set_result(None)
            for message in messages:
                self.deliver(message)
        except (zmtp.ZmtpError, protocol.ProtocolError, LinkLost) as err:
            self._lost(err)

    def _write(self, data: bytes) -> None:
        if self.closed:
            raise LinkLost("the connection to the broker is closed")
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self._lost(err)
            raise LinkLost(str(err)) from err
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
        except LinkLost:
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
        self.close_socket()
        err = err or ConnectionResetError("the connection was closed")
        self.fail_pending(err)
        if not self.ready.done():
            # Refused (the broker said why) stays itself: the reason is final.
            lost = err if isinstance(err, zmtp.Refused) else LinkLost(str(err))
            self.ready.set_exception(lost)
            self.ready.exception()  # retrieved: nobody may be waiting for it

    def close_socket(self) -> None:
        """Close the socket itself."""
        self.sock.close()


class ZmqLink(AsyncLink):
    """A zmq.asyncio DEALER socket and the task that reads its replies."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, endpoint: str, curve: tuple | None
    ) -> None:
        super().__init__(loop)
        self.sock: Any = dealer(zmq_context(), endpoint, curve)
        self._task = loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.deliver(await self.sock.recv())
        except (zmq.ZMQError, protocol.ProtocolError) as err:
            self.close(err)

    async def send(self, frame: bytes) -> None:
        """Send one frame (waits while no broker is connected)."""
        try:
            await self.sock.send(frame)
        except zmq.ZMQError as err:
            raise LinkLost(str(err)) from err

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
        self.close_socket()
        self.fail_pending(err or ConnectionResetError("the connection was closed"))

    def close_socket(self) -> None:
        """Close the socket itself."""
        self.sock.close(linger=0)
