"""The sync driver: runs operations in the calling thread, over its own link.

A `Driver` belongs to one thread of one process (`client.Client` keeps one
per thread and makes a new one after fork). `run` is psycopg's ``wait``:
it sends each `Call` an operation yields and sends the reply back in.

Timeouts follow the ZeroMQ guide's Lazy Pirate pattern: when no reply comes in
time, the link is closed and a fresh one made for the next call, so a stale
request can never be delivered later and a late reply can never meet a later
request. Request ids are checked all the same.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import TYPE_CHECKING, TypeVar

import zmq

from client import errors
from client.calls import CONNECT_RETRY, GRACE, Call, Operation, Reply, Scope
from client.links import INHERITED, Link, UnixLink, ZmqLink
from client.wire import protocol, zmtp

if TYPE_CHECKING:
    from client.settings import BaseClient

T = TypeVar("T")

_LINK_ERRORS = (TimeoutError, OSError, zmtp.ZmtpError, zmq.ZMQError)


class Driver:
    """Runs operations for one thread of one process over its link to the broker."""

    def __init__(self, client: BaseClient) -> None:
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.scope = Scope(client)
        self._client = client
        self._ids = itertools.count(1)
        self._link: Link | None = None

    def __del__(self) -> None:
        if self._link is not None:
            if self.pid == os.getpid():
                self._link.close()
            else:
                INHERITED.append(self._link)

    def run(self, operation: Operation[T]) -> T:
        """Drive operation to its result: each call it yields out, each reply in."""
        try:
            call = operation.send(None)  # type: ignore[arg-type]
            while True:
                try:
                    reply = self.exchange(call)
                except BaseException as err:
                    call = operation.throw(err)
                else:
                    call = operation.send(reply)
        except StopIteration as stop:
            return stop.value

    def exchange(self, call: Call) -> Reply:
        """Send one call and return its reply as (status, body).

        Reaching the broker and handing it the request may take up to the
        call's timeout; the reply may take GRACE longer, the time the broker
        needs to report a deadline it enforced. Raises what `Scope.failed`
        says when no reply comes.
        """
        req_id = next(self._ids)
        frame = self.scope.request(req_id, call)
        start = time.monotonic()
        sent_by, deadline = start + call.timeout, start + call.timeout + GRACE
        while True:
            link, sent = None, False
            try:
                link = self._connect(sent_by)
                link.send(frame, sent_by)
                sent = True
                while True:
                    rid, status, body = protocol.decode_reply(link.recv(deadline))
                    if rid == req_id:
                        return status, body
                    # A late reply to a request abandoned earlier: drop it.
            except _LINK_ERRORS as err:
                unread = sent and link is not None and link.unread(err)
                self.reset()
                error = self.scope.failed(
                    err, call, start, sent_by, sent=sent, unread=unread
                )
                if error is not None:
                    raise error from None
                time.sleep(CONNECT_RETRY)  # a restarting broker: try its successor
            except protocol.ProtocolError as err:
                self.reset()
                raise errors.InterfaceError(errors.ER_BAD_REQUEST, str(err)) from err
            except BaseException:
                # Interrupted (KeyboardInterrupt, a signal): ask the broker to cancel
                # the statement; its reply must not meet the next request, so start
                # over on a new connection.
                self._send(self.scope.cancel_request(next(self._ids), req_id))
                self.reset()
                raise

    def send_only(self, op: int, pin: int) -> None:
        """Send a request and forget it (a finaliser freeing a pin): best effort."""
        frame = self.scope.request(next(self._ids), Call(op, pin, None, GRACE))
        try:
            self._connect(time.monotonic() + 0.1)
        except _LINK_ERRORS:
            self.reset()
            return  # no broker: it frees what this would have freed, by timeout
        self._send(frame)

    def reset(self) -> None:
        """Drop the link; the next call makes a fresh one."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def _connect(self, deadline: float) -> Link:
        link = self._link
        if link is not None and link.stale():
            # The broker went away between calls (a restart): nothing was sent
            # on this connection, so a fresh one is safe.
            self.reset()
            link = None
        if link is None:
            path = self._client.ipc_path
            if path is not None:
                link = UnixLink(path, deadline)
            else:
                link = ZmqLink(self._client.endpoint, self._client.curve)
            self._link = link
        return link

    def _send(self, frame: bytes) -> None:
        if self._link is None:
            return
        try:
            self._link.send(frame, time.monotonic() + 0.1)
        except _LINK_ERRORS:
            # A half-written frame must not prefix the next request.
            self.reset()
