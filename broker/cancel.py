"""Stopping a statement: KILL QUERY, dropping what will not stop, what callers hear.

A running statement is stopped with ``KILL QUERY`` on the pool's side
connection (`Connector.kill`, in a thread), never by closing its connection.
Invariants:

- one KILL per statement: `Backend.kill_sent` clears its deadline, and a
  statement that has not stopped within ``kill_grace`` of MySQL's answer to
  the KILL loses its connection instead (`Canceller.drop`);
- a read is answered (`QueryTimeout`) as soon as the KILL is asked for; a
  write is answered only once MySQL says whether it ran (`answer_cancelled`),
  since only then is the outcome known;
- a queued request is cancelled by taking it out of the queue: it is never
  sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from broker.backend import Backend, error_from_packets
from broker.connector import Connector, Outcome
from client import errors
from client.wire import statement
from client.wire.protocol import Op

if TYPE_CHECKING:
    from broker.pool import Pool
    from broker.request import PeerId, Request

log = logging.getLogger(__name__)

_INTERRUPTED = frozenset({1317, 1028})  # "query execution was interrupted", "aborted"


def may_write(req: Request) -> bool:
    """Whether a request's statement may change data (so a cancel must wait)."""
    return req.op in (Op.EXECUTEMANY, Op.COMMIT) or (
        req.op == Op.QUERY and not statement.is_read(req.body)
    )


def interrupted(backend: Backend, data: bytes | None) -> bool:
    """Whether the response is MySQL's "interrupted": a KILL QUERY landed on it."""
    return (
        backend.scanner.error
        and data is not None
        and error_from_packets(data).errno in _INTERRUPTED
    )


def answer_cancelled(
    backend: Backend, req: Request, data: bytes | None, applied: int
) -> bool:
    """Answer a cancelled write whose statement MySQL interrupted; else False.

    A write that completed before the KILL landed gets its real result
    from the caller; one MySQL interrupted was not applied (QueryTimeout),
    except a COMMIT or a batch with statements behind it (OutcomeUnknown).
    """
    if not req.cancelled or not interrupted(backend, data):
        return False
    backend.pool.detach(backend)
    message = f"statement cancelled: {req.cancelled}"
    if req.op == Op.COMMIT:
        err: errors.Error = errors.OutcomeUnknown(
            errors.ER_OUTCOME_UNKNOWN, message + "; the commit may or may not stand"
        )
    elif applied:
        err = errors.OutcomeUnknown(
            errors.ER_OUTCOME_UNKNOWN,
            f"{message}; {applied} of {len(req.body)} statements were applied",
        )
    else:
        err = errors.QueryTimeout(
            errors.ER_QUERY_TIMEOUT, message + "; it was not applied"
        )
    req.fail(err)
    return True


def drop_piped(req: Request, why: str) -> None:
    """Answer a piped read now; the response it still gets is thrown away."""
    req.cancelled = why
    req.pool.metrics.query_timeouts += 1  # type: ignore[union-attr]
    req.fail(
        errors.QueryTimeout(
            errors.ER_QUERY_TIMEOUT,
            f"statement cancelled: {why} while it waited behind another "
            "statement on its MySQL connection",
        )
    )


def fail_unsent(req: Request) -> None:
    """Answer a request whose deadline passed before it reached a connection."""
    if req.pool is not None:
        req.pool.metrics.query_timeouts += 1
    req.fail(
        errors.QueryTimeout(
            errors.ER_QUERY_TIMEOUT,
            f"deadline of {req.timeout:.3f} s passed while waiting for a "
            "connection; the statement was not sent",
        )
    )


class Canceller:
    """Sends the KILLs: for a deadline, a client's CANCEL, or a closed stream."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector

    def cancel(self, backend: Backend, now: float, reason: str = "") -> None:
        """Stop the statement a backend runs: answer its caller and KILL QUERY."""
        if backend.cancelling:
            return
        backend.kill_sent(now)
        for piped in backend.piped:
            piped.bystander = True  # the KILL may land on it if the head just ended
        pin = backend.pin
        req = backend.request
        if req is None and pin is not None and pin.kind == "stream":
            req, pin.request = pin.request, None
        log.info(
            "pool %s: cancelling the statement on connection %d (%s); KILL QUERY",
            backend.pool.name,
            backend.thread_id,
            reason or "deadline passed",
        )
        if req is not None:
            backend.pool.metrics.query_timeouts += 1
            why = reason or f"deadline of {req.timeout:.3f} s passed"
            if may_write(req):
                # Whether it was applied is known once MySQL answers: the reply
                # waits for that (bounded by kill_grace), never guesses.
                req.cancelled = why
            else:
                backend.pool.detach(backend)
                req.fail(
                    errors.QueryTimeout(
                        errors.ER_QUERY_TIMEOUT,
                        f"statement cancelled: {why} (KILL QUERY sent)",
                    )
                )
        self._connector.kill(
            backend.pool.name,
            backend.config.connect_args(),
            backend.thread_id,
            backend,
        )

    def killed(self, outcome: Outcome) -> Backend | None:
        """Take MySQL's answer to a KILL QUERY; return the backend if now free.

        A KILL that failed drops the connection instead: its statement may
        run on, and nothing else would stop it.
        """
        backend: Backend = outcome.tag
        if backend.closed:
            return None
        now = time.monotonic()
        took = now - backend.cancel_started
        backend.kill_answered(now)
        if outcome.error is not None:
            log.warning(
                "pool %s: KILL QUERY %d failed: %s",
                backend.pool.name,
                backend.thread_id,
                outcome.error,
            )
            self.drop(backend, "could not cancel its statement")
            return None
        if took > backend.pool.config.kill_grace:
            backend.pool.metrics.slow_kills += 1
            log.info(
                "pool %s: KILL QUERY %d took %.1f s",
                backend.pool.name,
                backend.thread_id,
                took,
            )
        if backend.running:
            return None  # the statement's own response frees it
        # A statement stopped between commands may have left state behind.
        backend.dirty = backend.dirty or backend.pin is None
        return backend

    @staticmethod
    def drop(backend: Backend, reason: str) -> None:
        """Drop a connection whose statement would not stop; it counts until gone."""
        backend.pool.drop(backend.thread_id, backend.config.connect_args())
        backend.lost(reason)

    def cancel_request(
        self,
        peer: PeerId,
        target: int,
        backends: Iterable[Backend],
        pools: Iterable[Pool],
        now: float,
    ) -> bool:
        """Cancel peer's request target wherever it is; whether it was found."""
        for backend in backends:
            running = backend.request
            if running is None and backend.pin is not None:
                running = backend.pin.request
            if (
                running is not None
                and running.req_id == target
                and running.peer == peer
            ):
                self.cancel(backend, now, "cancelled by the client")
                return True
            for piped in backend.piped:
                if piped.req_id == target and piped.peer == peer:
                    if not piped.cancelled:
                        drop_piped(piped, "cancelled by the client")
                    return True
        for pool in pools:
            for queued in pool.queue:
                if queued.req_id == target and queued.peer == peer:
                    # Still waiting for a connection: it must never be sent.
                    pool.unqueue(queued)
                    queued.fail(
                        errors.QueryTimeout(
                            errors.ER_QUERY_TIMEOUT,
                            "statement cancelled by the client before it was sent",
                        )
                    )
                    return True
        return False
