"""The tick: deadlines, silent pins, recycling, readiness and the watchdog.

The loop calls `Janitor.tick` every `TICK` seconds, so TICK is the precision
of every timeout: a running statement past its deadline is cancelled, one
that will not stop within ``kill_grace`` is dropped, a queued request past its
deadline or ``queue_timeout`` is answered and never sent. Every
`JANITOR_EVERY` the slower upkeep runs: idle connections past
``idle_timeout`` or due for recycling are closed and pools refilled to
``min_size``; a pin silent for ``transaction_idle_timeout`` is rolled back and
freed; READY=1 goes out once every pool holds ``min_size`` (or knows it
cannot). Nothing here blocks.
"""

from __future__ import annotations

import logging

from broker.cancel import drop_piped, fail_unsent
from broker.connector import KILL_CONNECT_TIMEOUT, Connector
from broker.dispatch import Dispatch, connect_error
from broker.frontend import Frontend
from broker.request import Request
from broker.systemd import Notifier
from client import errors

log = logging.getLogger(__name__)

TICK = 0.02  # seconds between deadline checks: the precision of timeouts
JANITOR_EVERY = 0.5  # seconds between upkeep passes (recycling, idle pins)
# With nothing running or queued the loop sleeps this long between ticks: an
# idle broker wakes twice a second, not fifty times (0.9 % of a core measured).
IDLE_TICK = JANITOR_EVERY


class Janitor:
    """Periodic work: enforcing deadlines each tick, upkeep every half second."""

    def __init__(
        self,
        dispatch: Dispatch,
        frontend: Frontend,
        connector: Connector,
        notifier: Notifier,
    ) -> None:
        self._dispatch = dispatch
        self._frontend = frontend
        self._connector = connector
        self._notifier = notifier
        self._next_upkeep = 0.0
        self.ready = False  # READY=1 went out

    def tick(self, now: float) -> bool:
        """Enforce deadlines; run the upkeep when due; ping the watchdog.

        Return whether anything waits on a deadline finer than `JANITOR_EVERY`
        (a running statement, a queued request, a paused listener): while
        nothing does, the loop may sleep until the next upkeep.
        """
        pending = self.deadlines(now)
        pending = self._frontend.resume(now) or pending
        if now >= self._next_upkeep:
            self._next_upkeep = now + JANITOR_EVERY
            self.upkeep(now)
        self._notifier.watchdog(now)
        return pending

    def deadlines(self, now: float) -> bool:
        """Cancel statements past their deadline; answer expired queued requests.

        Return whether a statement still runs or a request still waits.
        """
        canceller = self._dispatch.canceller
        pending = False
        for backend in list(self._dispatch.backends.values()):
            pending = pending or backend.running or bool(backend.cancel_started)
            if backend.cancel_started and (backend.cancelling or backend.running):
                # The grace runs from MySQL's answer to the KILL: a slow KILL
                # must not turn a statement it does stop into OutcomeUnknown.
                grace = backend.pool.config.kill_grace
                if backend.cancelling:
                    grace += KILL_CONNECT_TIMEOUT
                if now - backend.cancel_started > grace and not backend.paused:
                    canceller.drop(backend, "cancelled statement did not stop")
            elif backend.deadline and now >= backend.deadline and backend.running:
                canceller.cancel(backend, now)
            for piped in backend.piped:
                if now >= piped.deadline and not piped.cancelled:
                    drop_piped(piped, f"deadline of {piped.timeout:.3f} s passed")
        for pool in self._dispatch.all_pools():
            pool.expire_queue(now, self._expire)
            pending = pending or bool(pool.queue)
        return pending

    @staticmethod
    def _expire(req: Request, why: str) -> None:
        pool = req.pool
        assert pool is not None  # noqa: S101  only pools queue requests
        if why == "query":
            fail_unsent(req)
            return
        if why == "unreachable":  # a connect it prompted is still hanging
            req.fail(connect_error(pool.last_error))
            return
        pool.metrics.pool_timeouts += 1
        req.fail(
            errors.PoolTimeout(
                errors.ER_POOL_TIMEOUT,
                f"pool {pool.name}: no connection free within queue_timeout "
                f"({pool.config.queue_timeout:g} s; max_size {pool.config.max_size})",
            )
        )

    def upkeep(self, now: float) -> None:
        """Recycle idle connections, free silent pins, refill, say ready."""
        dispatch = self._dispatch
        for pool in dispatch.all_pools():
            for backend in pool.idle_to_close(now):
                pool.metrics.recycled += 1
                dispatch.forget(backend)
            pool.open_if_needed(now)
        for pin in list(dispatch.pins.open.values()):
            limit = pin.pool.config.transaction_idle_timeout
            busy = pin.backend.running and not pin.backend.paused
            if not busy and now - pin.last_active > limit:
                pin.pool.metrics.abandoned += 1
                who = pin.who
                log.warning(
                    "pool %s: %s of pid %s on %s silent for %.0f s; "
                    "rolling back and freeing it",
                    pin.pool.name,
                    pin.kind,
                    who.get("pid"),
                    who.get("host"),
                    now - pin.last_active,
                )
                reason = (
                    f"silent for over transaction_idle_timeout ({limit:g} s); "
                    "rolled back"
                )
                if pin.kind == "stream" and not pin.done:
                    dispatch.close_stream(pin, reason)
                else:
                    dispatch.unpin(pin, reason, reset=True)
        for pool in dispatch.pools.values():
            pool.retry_reaps(now)
        self._connector.close_idle_sides()
        report = self._frontend.report
        report.publish()
        if not self.ready and all(
            len(p.backends) >= p.config.min_size or p.last_error is not None
            for p in dispatch.pools.values()
        ):
            self.ready = True
            self._notifier.ready(report.status_line())
            log.info("ready: %s", report.status_line())
        elif self.ready and self._notifier.enabled:
            self._notifier.status(report.status_line())
