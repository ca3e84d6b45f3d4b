"""One named pool of workers, each owning one MySQL connection.

A worker is idle (in `_idle`), busy with exactly one request, pinned to one
client's transaction, session or stream, or resetting. `size` counts every
live worker, those being opened, and connections the server still holds for
us after we let go (`dying`: dropped mid-statement, or left by a dead
predecessor, until PROCESSLIST confirms them gone); it never exceeds
``max_size``. The pool's one side connection for KILLs (`broker.reaper`) is
the only connection beyond it.

When no worker is idle a request waits in `_queue` (bounded) until one frees,
its queue_timeout passes (PoolTimeout) or its deadline passes (QueryTimeout,
never sent). While the server is unreachable and the pool holds no worker,
requests fail at once with the connect error: nothing piles up; except that
a request arriving when no connect is under way starts one at once, whatever
the back-off, and waits for it (`connect_now`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from broker.config import PoolConfig
from broker.connector import Connector, Outcome, is_auth_failure
from broker.metrics import PoolMetrics
from broker.reaper import REAP_TIMEOUT
from broker.worker import State, Worker

log = logging.getLogger(__name__)

MAX_QUEUE = 10000  # waiting requests per pool; beyond it a request is refused at once
BACKOFF_FIRST = 0.1  # seconds before retrying a failed connect, doubling ...
BACKOFF_MAX = 5.0  # ... up to this
# A request for a pool with no connection starts a connect at once, back-off
# aside, at most this often: a returning server is used within ~0.1 s, and an
# absent one costs a refused connect per 0.1 s however many requests come.
PROMPT_EVERY = 0.1
# How long a request waits for a connect it prompted before it gets the last
# connect error after all: a refused or accepted connect takes milliseconds,
# only an unanswering (firewalled) server takes up to connect_timeout.
PROMPT_WAIT = 1.0


class Pool:
    """Workers of one ``[pools.NAME]``: limits, queue, opening and recycling rules."""

    def __init__(self, config: PoolConfig, connector: Connector) -> None:
        self.name = config.name
        self.config = config
        self.metrics = PoolMetrics()
        self._connector = connector
        self._idle: list[Worker] = []  # LIFO: hot connections first, cold ones age out
        self.workers: set[Worker] = set()
        self.opening = 0
        self.queue: collections.deque[Any] = collections.deque()
        self.info: dict[str, Any] | None = None  # charset, status, version: for HELLO
        self.generation = 0  # bumped when the DSN or password changes
        self._worker_generation: dict[Worker, int] = {}
        self.last_error: Exception | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._prompted = 0.0  # when a request last started a connect itself
        self._connect_started = 0.0  # when the latest connect began
        self.retired = False  # removed from the config: finish and close
        # Server thread id -> [dropped at, connect args it was opened with,
        # whether a statement still ran at the first check]: not yet seen gone.
        self.dying: dict[int, list] = {}
        self._reaping: set[int] = set()  # ids a connector thread is checking
        self.sweeping = False  # looking for a dead predecessor's connections

    @property
    def size(self) -> int:
        """Live workers plus those being opened: what counts against max_size."""
        return len(self.workers) + self.opening + len(self.dying)

    @property
    def idle(self) -> int:
        """How many workers are idle, ready for a request."""
        return len(self._idle)

    @property
    def failing(self) -> bool:
        """Whether the server is unreachable: no worker, and the last connect failed."""
        return not self.workers and self.last_error is not None

    def check_out(self) -> Worker | None:
        """Return an idle worker, or None (and start opening one if there is room)."""
        if self._idle:
            worker = self._idle.pop()
            worker.state = State.BUSY
            return worker
        self.open_if_needed()
        return None

    def check_in(self, worker: Worker) -> None:
        """Take back a worker that is clean and free."""
        worker.state = State.IDLE
        worker.pin = None
        self._idle.append(worker)

    def needs_recycling(self, worker: Worker, now: float) -> bool:
        """Whether a free worker should be closed instead of reused."""
        cfg = self.config
        return (
            self.retired
            or now - worker.created > cfg.max_lifetime
            or (cfg.max_uses and worker.uses >= cfg.max_uses)
            or self._worker_generation.get(worker) != self.generation
            or len(self.workers) > cfg.max_size
        )

    def forget(self, worker: Worker) -> None:
        """Drop a closed worker and open a replacement if one is wanted."""
        worker.close()
        self.workers.discard(worker)
        self._worker_generation.pop(worker, None)
        if worker in self._idle:
            self._idle.remove(worker)
        self.open_if_needed()

    def open_if_needed(self, now: float | None = None) -> None:
        """Start opening connections up to min_size, or for waiting requests."""
        if self.retired or self.sweeping:
            return
        now = time.monotonic() if now is None else now
        if now < self._retry_at:
            return
        wanted = max(
            self.config.min_size,
            len(self.workers) + min(len(self.queue), self.config.max_size),
        )
        while self.size < min(wanted, self.config.max_size) and (
            self.opening == 0 or self.last_error is None
        ):
            self.opening += 1
            self._connect_started = now
            self._connector.open(self.config)

    def connect_now(self, now: float) -> bool:
        """Start a connect for a request to a failing pool; whether one is under way.

        The back-off paces the broker's own retries; a caller waiting now is
        worth one attempt at once (bounded by PROMPT_EVERY and one at a time),
        so service resumes as soon as the server accepts connections.
        """
        if self.opening:
            return True
        if self.retired or now - self._prompted < PROMPT_EVERY:
            return False
        self._prompted = self._connect_started = now
        self.opening += 1
        self._connector.open(self.config)
        return True

    def drop(self, thread_id: int, connect_args: dict) -> None:
        """Count a connection let go mid-statement until the server has closed it.

        connect_args are those it was opened with: after a reload to another
        server, its thread id means nothing (or someone else) on the new one.
        """
        self.dying[thread_id] = [time.monotonic(), connect_args, None]
        self._reap(thread_id)

    def _reap(self, thread_id: int) -> None:
        if thread_id not in self._reaping:
            self._reaping.add(thread_id)
            self._connector.reap(self.name, self.dying[thread_id][1], thread_id)

    def retry_reaps(self, now: float) -> None:
        """Ask again about dropped connections the server still showed (janitor)."""
        for thread_id, (since, _, _) in list(self.dying.items()):
            if thread_id in self._reaping:
                continue
            if now - since > REAP_TIMEOUT:
                del self.dying[thread_id]
                log.warning(
                    "pool %s: dropped connection %d still on the server after "
                    "%.0f s; no longer counted",
                    self.name,
                    thread_id,
                    now - since,
                )
                self.open_if_needed(now)
            else:
                self._reap(thread_id)

    def reaper_done(self, outcome: Outcome) -> None:
        """Take the outcome of a reap or the start-up sweep (`broker.reaper`)."""
        if outcome.kind == "swept":
            self.swept(*outcome.tag)
            return
        thread_id, confirmed, was_running = outcome.tag
        self._reaping.discard(thread_id)
        entry = self.dying.get(thread_id)
        if entry is None:
            return
        if entry[2] is None:
            entry[2] = was_running  # later checks see the KILL's own "Killed"
        if not confirmed and outcome.error is None:
            return  # still shown: the janitor asks again
        since, _, was_running = self.dying.pop(thread_id)
        if outcome.error is not None:
            log.warning(
                "pool %s: cannot confirm dropped connection %d closed: %s",
                self.name,
                thread_id,
                outcome.error,
            )
        else:
            self.metrics.dropped_confirmed += 1
            log.info(
                "pool %s: dropped connection %d confirmed closed on the server "
                "%.1f s after the drop (KILL CONNECTION); %s",
                self.name,
                thread_id,
                time.monotonic() - since,
                "its statement was still running: MySQL aborted it (rolled back)"
                if was_running
                else "no statement was running any more",
            )
        self.open_if_needed()

    def swept(self, found: list[int], left: set[int], took: float) -> None:
        """Finish the start-up sweep: count what still lingers, then open."""
        self.sweeping = False
        for thread_id in left:  # still closing: count and confirm them as dropped
            self.drop(thread_id, self.config.connect_args())
        if found:
            self.metrics.predecessor_killed += len(found) - len(left)
            log.warning(
                "pool %s: killed %d connections a dead broker left running "
                "(%d still closing after %.1f s)",
                self.name,
                len(found),
                len(left),
                took,
            )
        self.open_if_needed()

    def opened(self, worker: Worker) -> None:
        """Adopt a newly opened worker."""
        self.opening -= 1
        self.last_error = None
        self._backoff = 0.0
        self.workers.add(worker)
        self._worker_generation[worker] = self.generation
        self.metrics.opened += 1
        if self.info is None:
            self.info = {
                "server_status": worker.server_status,
                "server_version": worker.server_version,
            }
        log.info(
            "pool %s: connection %d open (%d of max %d)",
            self.name,
            worker.thread_id,
            len(self.workers),
            self.config.max_size,
        )

    def open_failed(self, error: Exception) -> None:
        """Note a failed connect and back off before the next attempt."""
        self.opening -= 1
        self.metrics.connect_failures += 1
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_FIRST)
        self._retry_at = time.monotonic() + self._backoff
        if self.last_error is None or str(error) != str(self.last_error):
            # A refused login needs the operator; an unreachable server may
            # come back by itself.
            level = logging.ERROR if is_auth_failure(error) else logging.WARNING
            log.log(
                level,
                "pool %s: cannot connect to %s: %s (retrying in %.1f s)",
                self.name,
                self.config.safe_dsn(),
                error,
                self._backoff,
            )
        self.last_error = error

    def idle_to_close(self, now: float) -> list[Worker]:
        """Return idle workers to close: past idle_timeout above min_size, or due."""
        cfg = self.config
        out = [w for w in self._idle if self.needs_recycling(w, now)]
        spare = len(self.workers) - len(out) - cfg.min_size
        for worker in self._idle:  # oldest-used first: the bottom of the stack
            if spare <= 0:
                break
            if worker not in out and now - worker.last_used > cfg.idle_timeout:
                out.append(worker)
                spare -= 1
        return out

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's part of `broker status`, as plain values."""
        states = collections.Counter(w.state.name.lower() for w in self.workers)
        return {
            "dsn": self.config.safe_dsn(),
            "min_size": self.config.min_size,
            "max_size": self.config.max_size,
            "pipeline_depth": self.config.pipeline_depth,
            "size": len(self.workers),
            "opening": self.opening,
            "dying": len(self.dying),
            "side_connection": self._connector.sides[self.name].open
            if self.name in self._connector.sides
            else False,
            "idle": states["idle"],
            "busy": states["busy"] + states["resetting"],
            "pinned": states["pinned"],
            "waiting": len(self.queue),
            "unreachable": self.failing,
            "last_error": str(self.last_error) if self.last_error else None,
            **self.metrics.snapshot(),
        }

    def expire_queue(self, now: float, reply: Callable[[Any, Exception], None]) -> None:
        """Answer queued requests whose queue_timeout or deadline has passed."""
        if not self.queue:
            return
        limit = self.config.queue_timeout
        unreachable = self.failing and now - self._connect_started >= PROMPT_WAIT
        keep: collections.deque[Any] = collections.deque()
        for req in self.queue:
            if now >= req.deadline:
                reply(req, "query")
            elif now - req.received >= limit:
                reply(req, "pool")
            elif unreachable:
                reply(req, "unreachable")
            else:
                keep.append(req)
        self.queue = keep
