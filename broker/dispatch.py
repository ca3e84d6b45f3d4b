"""A request's way onto a MySQL connection and back: queue, pipeline, pins, release.

`Dispatch.acquire` gives a decoded request an idle backend (health-checking
one that sat idle), pipelines a plain read behind a busy one, or queues it;
each command's completion answers the request through the request itself
(`Request.reply`), then `release` hands the backend to the next waiting
request, resets it, recycles it, or gives it back to its pool. Invariants:

- a backend runs one command at a time and is held by exactly one of: its
  pool's idle list, the request it runs, a `Pin`, or its reset; it moves
  between them only through its pool's verbs (`broker.pool`);
- a request is answered exactly once;
- a statement is never re-sent after it may have reached MySQL; a read hit
  by a KILL meant for the one ahead of it is the one exception, being a
  plain read (see `broker.pipeline`);
- a backend leaves a session, or any pin that may have left session state,
  reset (COM_RESET_CONNECTION and the setup statements) before reuse.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from broker import pipeline
from broker.backend import Backend, error_from_packets
from broker.cancel import (
    Canceller,
    answer_cancelled,
    fail_unsent,
    interrupted,
)
from broker.connector import Connector, Outcome, setup_statements
from broker.metrics import BrokerMetrics
from broker.pool import MAX_QUEUE, Pool
from broker.request import Pin, Pins, Request, begin_statements
from client import errors
from client.wire import statement
from client.wire.mysql import COM_PING, COM_QUERY, COM_RESET_CONNECTION, IN_TRANS
from client.wire.protocol import Op, Status

log = logging.getLogger(__name__)

PING_AFTER_IDLE = 5.0  # health-check a connection idle longer than this before use
_ALLOWED = {
    "transaction": (Op.QUERY, Op.EXECUTEMANY, Op.COMMIT, Op.ROLLBACK),
    "session": (Op.QUERY, Op.EXECUTEMANY, Op.SESSION_CLOSE),
    "stream": (Op.STREAM_NEXT, Op.STREAM_CLOSE),
}


def connect_error(err: Exception | None) -> errors.Error:
    """Return a client error for a failed connect (a pymysql error, usually)."""
    args = err.args if err is not None else ()
    code = args[0] if args and isinstance(args[0], int) else 2003
    msg = args[1] if len(args) > 1 else str(err)
    return errors.OperationalError(code, f"cannot reach MySQL: {msg}")


class Dispatch:
    """Runs requests on backends: acquiring, command completions, pins, release."""

    def __init__(
        self, pools: dict[str, Pool], connector: Connector, metrics: BrokerMetrics
    ) -> None:
        self.pools = pools  # the configured pools, shared with the loop and reload
        self.replica_pools: list[Pool] = []  # the replicas' pools, set by the loop
        self.backends: dict[int, Backend] = {}  # by socket fd, for the poller
        self.pins = Pins()
        self.canceller = Canceller(connector)
        self.metrics = metrics
        self.draining = False  # refuse new work; finish what runs

    def all_pools(self) -> list[Pool]:
        """Return the configured pools and their replicas' pools."""
        return [*self.pools.values(), *self.replica_pools]

    # Onto a connection ----------------------------------------------------------

    def acquire(self, req: Request) -> None:
        """Give the request a free backend, pipeline it, or queue it."""
        pool = req.pool
        assert pool is not None  # noqa: S101
        if self.draining:
            self.metrics.refused_draining += 1
            req.fail(
                errors.BrokerUnavailable(
                    errors.ER_BROKER_UNAVAILABLE,
                    "broker is shutting down; retry on its successor",
                )
            )
            return
        if pool.failing:
            if pool.connect_now(time.monotonic()):
                pool.enqueue(req)  # answered by the connect's outcome
                return
            req.fail(connect_error(pool.last_error))
            return
        backend = pool.take_idle(req)
        if backend is not None:
            self.start(backend, req)
            return
        if pool.config.pipeline_depth > 1:
            req.pipeable = pipeline.pipeable(req)
            if req.pipeable and not pool.queue:
                backend = pipeline.target(pool)
                if backend is not None:
                    pipeline.pipe(backend, req)
                    return
        if len(pool.queue) >= MAX_QUEUE:
            pool.metrics.pool_timeouts += 1
            req.fail(
                errors.PoolTimeout(
                    errors.ER_POOL_TIMEOUT,
                    f"pool {pool.name}: {MAX_QUEUE} requests already wait",
                )
            )
        else:
            pool.enqueue(req)
            pool.open_if_needed()  # room for one more now that it waits

    def start(self, backend: Backend, req: Request) -> None:
        """Run req on the backend assigned to it, health-checking one that sat idle."""
        now = time.monotonic()
        if now >= req.deadline:
            backend.pool.detach(backend)
            fail_unsent(req)
            self.release(backend)
            return
        if now - backend.last_used > PING_AFTER_IDLE:
            backend.pool.metrics.pings += 1
            backend.send(COM_PING, self._pinged, req.deadline)
            return
        self._begin_work(backend, req)

    def _pinged(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        pool = backend.pool
        if err is not None or backend.scanner.error:
            # The statement was never sent, so the request may wait for another.
            req = pool.detach(backend)
            log.warning(
                "pool %s: connection %d failed its health check; replacing it",
                pool.name,
                backend.thread_id,
            )
            pool.metrics.lost += 1
            self.forget(backend)
            if req is not None:
                pool.requeue(req)
                self.serve_queue(pool)
            return
        req = backend.request
        if req is None or req.cancelled:  # cancelled while pinging: never sent
            if req is not None:
                pool.detach(backend)
                req.fail(
                    errors.QueryTimeout(
                        errors.ER_QUERY_TIMEOUT,
                        f"statement cancelled: {req.cancelled}; it was not sent",
                    )
                )
            self.after_command(backend)
            return
        self._begin_work(backend, req)

    def _begin_work(self, backend: Backend, req: Request) -> None:
        """Send req's first command on the backend that holds it."""
        op = req.op
        if op == Op.QUERY:
            if backend.pool.config.pipeline_depth > 1 and req.pipeable is None:
                req.pipeable = pipeline.pipeable(req)
            if not req.pipeable and not statement.leaves_session_clean(req.body):
                backend.dirty = True
            backend.send(COM_QUERY + req.body, self._query_done, req.deadline)
            if req.pipeable and not backend.closed:  # a failed write closes it
                backend.pipe_ok = True
                pipeline.fill(backend)
        elif op == Op.EXECUTEMANY:
            if not all(map(statement.leaves_session_clean, req.body)):
                backend.dirty = True
            backend.send(COM_QUERY + req.body[0], self._batch_done, req.deadline)
        elif op == Op.HELLO:
            backend.pool.detach(backend)
            req.answer(Status.VALUE, req.sink.pool_info(backend.pool))
            self.release(backend)
        elif op == Op.BEGIN:
            req.steps = begin_statements(req.body)
            first = req.body.get("sql")
            if first:
                req.steps.append(first)  # the transaction's first statement, same trip
                if not statement.leaves_session_clean(first):
                    backend.dirty = True
            backend.send(COM_QUERY + req.steps[0], self._begin_done, req.deadline)
        elif op == Op.SESSION_OPEN:
            pin = self._pin(backend, "session", req, req.body.get("who"))
            req.answer(Status.VALUE, pin.id)
        elif op == Op.STREAM_OPEN:
            sql, chunk_rows, who = req.body
            pin = self._pin(backend, "stream", req, who, busy=True)
            pin.request = req
            backend.send(COM_QUERY + sql, self._stream_chunk, req.deadline, chunk_rows)
        elif op in (Op.COMMIT, Op.ROLLBACK):
            backend.send(
                COM_QUERY + (b"COMMIT" if op == Op.COMMIT else b"ROLLBACK"),
                self._end_done,
                req.deadline,
            )

    # Command completions --------------------------------------------------------

    def _query_done(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        pool = backend.pool
        req = pool.detach(backend)
        if err is not None:
            self.lost(backend, req, err)
            return
        if req is not None and req.bystander and interrupted(backend, data):
            # A KILL QUERY meant for the read ahead of it landed on it: run it again.
            req.bystander = False
            pool.requeue(req)
        elif req is not None and not (
            req.cancelled and answer_cancelled(backend, req, data, 0)
        ):
            if backend.scanner.error:
                pool.metrics.sql_errors += 1
            req.reply(Status.PACKETS, data)
        if backend.pin is None and backend.scanner.status & IN_TRANS:
            backend.dirty = True  # an unpinned BEGIN: roll it back before reuse
        if backend.piped:
            pool.next_piped(backend)
            return
        self.after_command(backend)

    def _batch_done(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = self._next_step(backend, err)
        if req is None:
            return
        req.replies.append(data)  # type: ignore[arg-type]
        req.index += 1
        pool = backend.pool
        if req.cancelled and not answer_cancelled(backend, req, data, req.index - 1):
            if not backend.scanner.error and req.index < len(req.body):
                # Stopped between statements: what ran is known, the rest never will.
                pool.detach(backend)
                req.fail(
                    errors.OutcomeUnknown(
                        errors.ER_OUTCOME_UNKNOWN,
                        f"statement cancelled: {req.cancelled}; {req.index} of "
                        f"{len(req.body)} statements were applied, the rest not sent",
                    )
                )
                self.after_command(backend)
                return
        elif req.cancelled:
            pool.detach(backend)
            self.after_command(backend)
            return
        if backend.scanner.error or req.index == len(req.body):
            pool.detach(backend)
            if backend.scanner.error:
                pool.metrics.sql_errors += 1
            req.reply(Status.BATCH, req.replies)
            self.after_command(backend)
            return
        backend.send(COM_QUERY + req.body[req.index], self._batch_done, req.deadline)

    def _next_step(
        self, backend: Backend, err: errors.Error | None, dirty: bool = False
    ) -> Request | None:
        """Return the request a multi-statement command goes on with, or None.

        None when the connection died (the request is answered) or the request
        was cancelled meanwhile (the backend is freed; dirty when half-done
        work may stay in the session).
        """
        if err is not None:
            self.lost(backend, backend.pool.detach(backend), err)
            return None
        req = backend.request
        if req is None:
            backend.dirty = backend.dirty or dirty
            self.after_command(backend)
        return req

    def _begin_done(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = self._next_step(backend, err, dirty=True)
        if req is None:
            return
        first = req.body.get("sql")
        if backend.scanner.error and not (first and req.index == len(req.steps) - 1):
            backend.pool.detach(backend)
            backend.dirty = True
            req.fail(error_from_packets(data))  # type: ignore[arg-type]
            self.release(backend)
            return
        req.index += 1
        if req.index < len(req.steps):
            backend.send(
                COM_QUERY + req.steps[req.index], self._begin_done, req.deadline
            )
            return
        pin = self._pin(backend, "transaction", req, req.body.get("who"))
        # With a first statement, its result (or MySQL's error for it) comes
        # along; the transaction is open either way, as MySQL leaves it.
        req.reply(Status.VALUE, [pin.id, data] if first else pin.id)

    def _end_done(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = backend.pool.detach(backend)
        pin = backend.pin
        if err is not None:
            self.lost(backend, req, err)
            return
        if req is not None and not answer_cancelled(backend, req, data, 0):
            req.reply(Status.PACKETS, data)
        if backend.scanner.status & IN_TRANS or backend.scanner.error:
            backend.dirty = True
        if pin is not None:
            self.unpin(pin, "ended by commit or rollback")

    def _stream_chunk(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        pin: Pin = backend.pin
        if err is not None:
            req = pin.request if pin else None
            if pin:
                pin.request = None
            self.lost(backend, req, err)
            return
        done = backend.scanner.done
        req = pin.request
        pin.request = None
        pin.last_active = time.monotonic()
        if done:
            pin.done = True
        if req is not None:
            if backend.scanner.error:
                backend.pool.metrics.sql_errors += 1
            req.reply(Status.CHUNK, [pin.id, done, data])
        if done:
            self.unpin(pin, "stream finished")

    def _drained(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        """Discard the rest of a closed stream's result."""
        if err is not None:
            self.lost(backend, None, err)
            return
        backend.dirty = True
        self.release(backend)

    def after_command(self, backend: Backend) -> None:
        """Return a backend whose command ended to its pin, or to the pool."""
        if backend.cancelling or backend.closed:
            return  # the kill's outcome will call back here
        pin = backend.pin
        if pin is None:
            self.release(backend)
            return
        backend.pool.park(backend)
        if pin.pending is not None:
            req, pin.pending = pin.pending, None
            self.pinned(req)

    def lost(self, backend: Backend, req: Request | None, err: errors.Error) -> None:
        """Answer the request a dead connection took with it, and forget the backend."""
        pool = backend.pool
        pool.metrics.lost += 1
        pin = backend.pin
        if req is not None:
            log.warning(
                "pool %s: request %d of op %s was on connection %d when it died",
                pool.name,
                req.req_id,
                Op(req.op).name,
                backend.thread_id,
            )
            if req.op == Op.QUERY and statement.is_read(req.body):
                req.fail(err)
            elif req.op in (Op.QUERY, Op.EXECUTEMANY, Op.COMMIT):
                req.fail(
                    errors.OutcomeUnknown(
                        errors.ER_OUTCOME_UNKNOWN,
                        f"{err.msg}; the statement may or may not have been applied",
                    )
                )
            else:
                req.fail(err)
        for piped in backend.piped:
            if not piped.cancelled:
                piped.fail(err)  # plain reads: nothing was written
        if pin is not None:
            self._end_pin(
                pin, "its MySQL connection was lost (MySQL rolled back any transaction)"
            )
        self.forget(backend)

    def closed_while_free(self, backend: Backend) -> None:
        """Forget a backend that died with no command running (idle, pinned, ...)."""
        self.lost(
            backend,
            None,
            errors.OperationalError(errors.CR_SERVER_LOST, "connection lost"),
        )

    # Pins -------------------------------------------------------------------------

    def _pin(
        self, backend: Backend, kind: str, req: Request, who: Any, busy: bool = False
    ) -> Pin:
        pin = self.pins.add(backend, kind, req, who)
        backend.pool.pin(backend, pin, busy)
        return pin

    def _end_pin(self, pin: Pin, reason: str) -> None:
        self.pins.end(pin, reason)
        pin.backend.pool.unpin(pin.backend)

    def unpin(self, pin: Pin, reason: str, reset: bool = False) -> None:
        """End pin and release its backend (reset first after a session)."""
        backend = pin.backend
        self._end_pin(pin, reason)
        if reset or pin.kind == "session":
            backend.dirty = True
        self.release(backend)

    def pinned(self, req: Request) -> None:
        """Run a request that names a pin on the pin's backend."""
        pin = self.pins.find(req)
        if isinstance(pin, str):
            req.fail(
                errors.OperationalError(
                    errors.ER_BAD_PIN, f"transaction, session or stream is gone: {pin}"
                )
            )
            return
        op, kind, backend = req.op, pin.kind, pin.backend
        if op not in _ALLOWED[kind]:
            req.fail(
                errors.InterfaceError(
                    errors.ER_BAD_REQUEST,
                    f"op {Op(op).name} does not apply to a {kind}",
                )
            )
            return
        pin.last_active = time.monotonic()
        if kind == "stream":
            self._stream_op(pin, req)
            return
        if backend.running or backend.cancelling:
            if pin.pending is None and backend.cancelling:
                pin.pending = req
            else:
                req.fail(
                    errors.InterfaceError(
                        errors.ER_BAD_REQUEST,
                        f"a statement is already running in this {kind}",
                    )
                )
            return
        if op == Op.SESSION_CLOSE:
            req.answer(Status.VALUE, None)
            self.unpin(pin, "session closed")
            return
        backend.pool.assign(backend, req)
        self._begin_work(backend, req)

    def _stream_op(self, pin: Pin, req: Request) -> None:
        backend = pin.backend
        if req.op == Op.STREAM_CLOSE:
            req.answer(Status.VALUE, None)
            self.close_stream(pin, "stream closed by the client")
            return
        if pin.request is not None or not backend.paused:
            req.fail(
                errors.InterfaceError(
                    errors.ER_BAD_REQUEST,
                    "a chunk of this stream is already on its way",
                )
            )
            return
        pin.request = req
        backend.resume(req.deadline)

    def close_stream(self, pin: Pin, reason: str) -> None:
        """End a stream mid-result: KILL QUERY, and discard what is still coming."""
        backend = pin.backend
        if pin.request is not None:
            pin.request.fail(
                errors.OperationalError(errors.ER_BAD_PIN, f"stream ended: {reason}")
            )
            pin.request = None
        self._end_pin(pin, reason)
        self.canceller.cancel(backend, time.monotonic())
        backend.drain(self._drained)

    # Releasing, resetting, forgetting ------------------------------------------------

    def release(self, backend: Backend) -> None:
        """Hand a free backend to the next waiting request, or back to the pool."""
        if backend.closed or backend.running or backend.cancelling:
            return
        pool = backend.pool
        if pool.needs_recycling(backend, time.monotonic()):
            pool.metrics.recycled += 1
            log.info(
                "pool %s: recycling connection %d after %d uses",
                pool.name,
                backend.thread_id,
                backend.uses,
            )
            self.forget(backend)
            return
        if backend.dirty:
            self._reset(backend)
            return
        while pool.queue:
            req = pool.dequeue()
            if time.monotonic() < req.deadline:
                pool.assign(backend, req)
                self.start(backend, req)
                return
            fail_unsent(req)
        pool.check_in(backend)

    def _reset(self, backend: Backend) -> None:
        """Clear session state: COM_RESET_CONNECTION, then the setup statements."""
        pool = backend.pool
        pool.metrics.resets += 1
        steps = [COM_RESET_CONNECTION] + [
            COM_QUERY + sql.encode() for sql in setup_statements(pool.config)
        ]
        pool.start_reset(backend, steps)
        backend.send(steps[0], self._reset_step)

    def _reset_step(
        self, backend: Backend, data: bytes | None, err: errors.Error | None
    ) -> None:
        if err is not None:
            self.lost(backend, None, err)
            return
        steps = backend.reset_steps
        if backend.scanner.error:
            # No COM_RESET_CONNECTION (old server) or a failing init_sql: a fresh
            # connection is the only state we can vouch for.
            log.warning(
                "pool %s: reset of connection %d failed (%s); replacing it",
                backend.pool.name,
                backend.thread_id,
                error_from_packets(data),  # type: ignore[arg-type]
            )
            self.forget(backend)
            return
        steps.pop(0)
        if steps:
            backend.send(steps[0], self._reset_step)
            return
        self.release(backend)

    def forget(self, backend: Backend) -> None:
        """Drop a backend for good, and give its place to what waits."""
        pool = backend.pool
        self.backends.pop(backend.fd, None)
        pool.forget(backend)
        self.serve_queue(pool)

    def serve_queue(self, pool: Pool) -> None:
        """Start queued requests on idle backends (opening more if allowed)."""
        while pool.queue:
            backend = pool.take_idle()
            if backend is None:
                return
            self.release(backend)

    # Connector outcomes ---------------------------------------------------------

    def adopt(self, backend: Backend) -> None:
        """Put a newly opened backend to work, unless a reload outdated it."""
        pool = backend.pool
        self.backends[backend.fd] = backend
        pool.opened(backend)
        opened_with = backend.config
        if (
            opened_with.connect_args() != pool.config.connect_args()
            or opened_with.init_sql != pool.config.init_sql
        ):
            pool.metrics.recycled += 1  # a reload replaced its settings meanwhile
            self.forget(backend)
            return
        self.release(backend)

    @staticmethod
    def fail_waiting(pool: Pool, err: errors.Error) -> None:
        """Answer every request queued on an unreachable pool with err."""
        while pool.queue:
            pool.dequeue().fail(err)

    def killed(self, outcome: Outcome) -> None:
        """Take MySQL's answer to a KILL QUERY; go on with a backend now free."""
        backend = self.canceller.killed(outcome)
        if backend is not None:
            self.after_command(backend)
