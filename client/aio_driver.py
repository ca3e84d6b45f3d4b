"""The asyncio driver: runs operations on one event loop, over the loop's link.

`AsyncDriver.run` is psycopg's ``wait_async``: the same operations as the
sync driver's (`client.calls`, `client.pins`), each call awaited. One link
per loop carries every task's requests at once; a timeout abandons only the
request (its late reply is dropped by id), a failed link fails them all.

Cancelling the task that awaits a call cancels the statement: the driver
sends ``Op.CANCEL`` with its request id on the same link, the broker stops it
(``KILL QUERY`` when it runs) and frees the MySQL connection, and the task
sees `asyncio.CancelledError`. A late reply that opened a pin (the call's
``frees``) has that pin closed at once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import TYPE_CHECKING, TypeVar

from client.aio_links import AsyncLink, LinkLost, UnixLink, ZmqLink
from client.calls import (
    CONNECT_RETRY,
    GRACE,
    Call,
    Operation,
    Reply,
    Scope,
    late_pin,
)
from client.wire import zmtp
from client.wire.protocol import Op

if TYPE_CHECKING:
    from client.settings import BaseClient

T = TypeVar("T")

_LINK_ERRORS = (TimeoutError, LinkLost, OSError, zmtp.ZmtpError)


def _timeout(deadline: float) -> asyncio.Timeout:
    return asyncio.timeout(max(deadline - time.monotonic(), 0.001))


class AsyncDriver:
    """Runs the operations of one event loop's tasks over the loop's link."""

    def __init__(self, client: BaseClient, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = os.getpid()
        self.loop = loop
        self.scope = Scope(client)
        self.link: AsyncLink | None = None
        self._client = client
        self._ids = itertools.count(1)
        self._opening: asyncio.Task | None = None
        self._hello: asyncio.Task | None = None

    async def run(self, operation: Operation[T]) -> T:
        """Drive operation to its result: each call it yields out, each reply in."""
        try:
            call = operation.send(None)  # type: ignore[arg-type]
            while True:
                try:
                    reply = await self.exchange(call)
                except BaseException as err:
                    call = operation.throw(err)
                else:
                    call = operation.send(reply)
        except StopIteration as stop:
            return stop.value

    async def exchange(self, call: Call) -> Reply:
        """Send one call and return its reply; HELLO once for all waiting tasks."""
        if call.op != Op.HELLO:
            return await self._exchange(call)
        hello = self._hello
        if hello is None or hello.done():
            hello = self._hello = self.loop.create_task(self._exchange(call))
        return await asyncio.shield(hello)

    async def _exchange(self, call: Call) -> Reply:
        start = time.monotonic()
        sent_by, deadline = start + call.timeout, start + call.timeout + GRACE
        req_id = next(self._ids)
        frame = self.scope.request(req_id, call)
        while True:  # again only for a request that provably never reached a broker
            link, sent, end = None, False, 0
            future = self.loop.create_future()
            try:
                async with _timeout(deadline):
                    link = await self._link(sent_by)
                    link.pending[req_id] = future
                    await link.send(frame)
                    sent, end = True, link.written
                    return await future
            except _LINK_ERRORS as err:
                unread = sent and link is not None and link.unread(end)
                error = self.scope.failed(
                    err, call, start, sent_by, sent=sent, unread=unread
                )
                if error is not None:
                    raise error from None
                await asyncio.sleep(CONNECT_RETRY)  # a restart: try its successor
            except asyncio.CancelledError:
                if sent and link is not None:
                    self._cancelled(link, req_id, future, call.frees)
                raise
            finally:
                if link is not None and link.pending.get(req_id) is future:
                    del link.pending[req_id]

    def send_only(self, op: int, pin: int) -> None:
        """Send a request without waiting (cleanup code): best effort."""
        link = self.link
        if link is not None and not link.closed and self.pid == os.getpid():
            link.send_nowait(
                self.scope.request(next(self._ids), Call(op, pin, None, GRACE))
            )

    def close(self) -> None:
        """Close the link (requests waiting on it fail); the next call opens one."""
        link, self.link = self.link, None
        if link is not None:
            link.close()

    async def _link(self, deadline: float) -> AsyncLink:
        """Return the loop's link, opening it (once, for all tasks) if needed."""
        link = self.link
        if link is not None and not link.closed:
            return link
        opening = self._opening
        if opening is None or opening.done():
            opening = self._opening = self.loop.create_task(self._open(deadline))
        async with _timeout(deadline):
            return await asyncio.shield(opening)

    async def _open(self, deadline: float) -> AsyncLink:
        path = self._client.ipc_path
        if path is not None:
            link: AsyncLink = await UnixLink.open(path, deadline)
        else:
            link = ZmqLink(self.loop, self._client.endpoint, self._client.curve)
        self.link = link
        return link

    def _cancelled(
        self, link: AsyncLink, req_id: int, future: asyncio.Future, frees: int | None
    ) -> None:
        """Ask the broker to stop a request whose caller was cancelled."""
        if future.done() and not future.cancelled():
            # The reply came just before the cancellation: nothing runs any more.
            if frees is not None and future.exception() is None:
                self._free(frees, future.result())
            return
        link.send_nowait(self.scope.cancel_request(next(self._ids), req_id))
        if frees is not None and not link.closed:
            # Keep listening for the reply: it may carry a pin to free.
            link.pending[req_id] = late = self.loop.create_future()

            def done(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._free(frees, f.result())

            late.add_done_callback(done)
        future.cancel()

    def _free(self, close_op: int, reply: Reply) -> None:
        pin = late_pin(reply)
        if pin:
            self.send_only(close_op, pin)
