"""One DEALER socket per process and thread: requests, ids, timeouts, fork.

A `Transport` belongs to the process and thread that made it. After ``fork()``
the child builds its own context and sockets and never touches (not even
closes) what it inherited: libzmq state copied by fork is not safe to use, and
closing it could disturb the parent. Abandoned objects are parked in
`_INHERITED` so the garbage collector never finalises them in the child.

Timeouts follow the ZeroMQ guide's Lazy Pirate pattern: when no reply comes
in time, the socket is closed (linger 0) and a fresh one is made for the next
call, so a queued request can never be delivered later and a late reply can
never meet a later request. Request ids are checked all the same.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import zmq

from client import errors, protocol

GRACE = 2.0  # extra wait past the deadline for the broker's QueryTimeout reply
RECONNECT_IVL_MS = 50  # retry a vanished broker quickly: restarts take ~1 s

_lock = threading.Lock()
_context: zmq.Context | None = None
_context_pid = 0
_INHERITED: list[Any] = []


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


class Transport:
    """A DEALER socket to the broker, used by one thread of one process."""

    def __init__(self, endpoint: str) -> None:
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self._endpoint = endpoint
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None
        self._rcvtimeo = -2

    def __del__(self) -> None:
        if self._sock is not None:
            if self.pid == os.getpid():
                self._sock.close(linger=0)
            else:
                _INHERITED.append(self._sock)

    def _socket(self) -> zmq.Socket:
        sock = self._sock
        if sock is None:
            sock = context().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue nothing for a broker that is not connected: a send then
            # waits (bounded by SNDTIMEO) instead of piling up stale requests.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.connect(self._endpoint)
            self._sock, self._rcvtimeo = sock, -2
        return sock

    def reset(self) -> None:
        """Drop the socket; the next call makes a fresh one."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

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

        Raises BrokerUnavailable when no reply arrives within timeout + GRACE,
        and InterfaceError, without sending, for a request over max_bytes.
        """
        req_id = next(self._ids)
        frame = protocol.encode_request(req_id, op, pool, timeout, pin, body)
        if max_bytes is not None and len(frame) > max_bytes:
            raise errors.InterfaceError(
                errors.ER_TOO_LARGE,
                f"request of {len(frame)} bytes exceeds the broker's "
                f"max_message_bytes ({max_bytes})",
            )
        return self.exchange(req_id, frame, timeout + GRACE)

    def send_only(self, op: int, pool: str, pin: int) -> None:
        """Send a request and forget it; its reply is dropped as a late one."""
        frame = protocol.encode_request(next(self._ids), op, pool, GRACE, pin, None)
        try:
            self._socket().send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # no broker: it frees what the request would have freed by timeout

    def exchange(self, req_id: int, frame: bytes, wait: float) -> tuple[int, Any]:
        """Send an encoded request and wait up to wait seconds for its reply."""
        sock = self._socket()
        deadline = time.monotonic() + wait
        wait_ms = max(1, int(wait * 1000))
        if self._rcvtimeo != wait_ms:
            sock.setsockopt(zmq.SNDTIMEO, wait_ms)
            sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._rcvtimeo = wait_ms
        try:
            sock.send(frame)
            while True:
                reply = sock.recv()
                rid, status, body = protocol.decode_reply(reply)
                if rid == req_id:
                    return status, body
                # A late reply to a request abandoned earlier: drop it.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise zmq.Again
                sock.setsockopt(zmq.RCVTIMEO, max(1, int(left * 1000)))
                self._rcvtimeo = -2
        except zmq.Again:
            self.reset()
            raise errors.BrokerUnavailable(
                errors.ER_BROKER_UNAVAILABLE,
                f"no reply from the broker at {self._endpoint} within {wait:.1f} s",
            ) from None
        except protocol.ProtocolError as err:
            self.reset()
            raise errors.InterfaceError(errors.ER_BAD_REQUEST, str(err)) from err
        except BaseException:
            # Interrupted (KeyboardInterrupt, a signal): the reply may still come
            # and must not meet the next request, so start over on a new socket.
            self.reset()
            raise
