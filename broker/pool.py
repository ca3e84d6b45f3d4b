"""One named pool of backends (MySQL connections), and the one writer of their state.

A backend is idle (in `_idle`), busy with exactly one request, pinned to one
client's transaction, session or stream, or resetting. The verbs below
(`take_idle`, `assign`, `detach`, `next_piped`, `pin`, `park`, `unpin`,
`start_reset`, `check_in`, `forget`) are the only writers of a backend's
``state``, ``request``, ``pin`` and ``reset_steps``, as PgBouncer's
``change_server_state`` is of ``server->state``; `enqueue`, `requeue`,
`dequeue`, `unqueue` and `expire_queue` are the only ones that edit the
queue. Others read both freely.

`size` counts every live backend, those being opened, and connections the
server still holds for us after we let go (`dying`: dropped mid-statement, or
left by a dead predecessor, until PROCESSLIST confirms them gone); it never
exceeds ``max_size``. The pool's one side connection for KILLs (`broker.reaper`) is
the only connection beyond it.

When no backend is idle a request waits in `queue` (bounded) until one frees,
its queue_timeout passes (PoolTimeout) or its deadline passes (QueryTimeout,
never sent). While the server is unreachable and the pool holds no backend,
requests fail at once with the connect error: nothing piles up; except that
a request arriving when no connect is under way starts one at once, whatever
the back-off, and waits for it (`connect_now`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.backend import Backend, State
from broker.config import PoolConfig
from broker.connector import Connector, Outcome, is_auth_failure
from broker.metrics import PoolMetrics
from broker.reaper import REAP_TIMEOUT

if TYPE_CHECKING:
    from broker.request import Pin, Request

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
    """Backends of one ``[pools.NAME]``: limits, queue, states, opening, recycling."""

    def __init__(self, config: PoolConfig, connector: Connector) -> None:
        self.name = config.name
        self.config = config
        self.metrics = PoolMetrics()
        self._connector = connector
        self._idle: list[Backend] = []  # LIFO: hot connections first, old ones age out
        self.backends: set[Backend] = set()
        self.opening = 0
        # Requests waiting for a backend, oldest first; edited by the verbs below.
        self.queue: collections.deque[Request] = collections.deque()
        self.info: dict[str, Any] | None = None  # charset, status, version: for HELLO
        self.generation = 0  # bumped when the DSN or password changes
        self._backend_generation: dict[Backend, int] = {}
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
        """Live backends plus those being opened: what counts against max_size."""
        return len(self.backends) + self.opening + len(self.dying)

    @property
    def idle(self) -> int:
        """How many backends are idle, ready for a request."""
        return len(self._idle)

    @property
    def failing(self) -> bool:
        """Whether the server is unreachable: no backend and the last connect failed."""
        return not self.backends and self.last_error is not None

    # The verbs: the only writers of a backend's state and holder ----------------

    def take_idle(self, req: Request | None = None) -> Backend | None:
        """Return an idle backend now BUSY for req, or None (and open one if room)."""
        if self._idle:
            backend = self._idle.pop()
            backend.state = State.BUSY
            backend.request = req
            return backend
        self.open_if_needed()
        return None

    @staticmethod
    def assign(backend: Backend, req: Request) -> None:
        """Make a free or pinned backend BUSY running req."""
        backend.state = State.BUSY
        backend.request = req

    @staticmethod
    def detach(backend: Backend) -> Request | None:
        """Return the request a backend's command answers, and let go of it."""
        req = backend.request
        backend.request = None
        return req

    @staticmethod
    def next_piped(backend: Backend) -> None:
        """Make the next piped read the one whose response comes next."""
        req = backend.piped.popleft()
        backend.cancel_started = 0.0  # the cancelled statement, if any, has ended
        # One answered while it waited runs unwanted: its deadline (passed) kills it.
        backend.request = None if req.cancelled else req
        backend.deadline = req.deadline

    @staticmethod
    def pin(backend: Backend, pin: Pin, busy: bool = False) -> None:
        """Hold a backend for pin: PINNED, or BUSY when a stream's first chunk runs."""
        backend.pin = pin
        backend.request = None
        backend.state = State.BUSY if busy else State.PINNED

    @staticmethod
    def park(backend: Backend) -> None:
        """Return a pinned backend whose command ended to its pin."""
        backend.state = State.PINNED

    @staticmethod
    def unpin(backend: Backend) -> None:
        """Let go of a backend's pin; releasing it (`check_in`, a reset) comes next."""
        backend.pin = None

    @staticmethod
    def start_reset(backend: Backend, steps: list[bytes]) -> None:
        """Make a free backend RESETTING: it sends steps before going back to IDLE."""
        backend.state = State.RESETTING
        backend.request = None
        backend.dirty = False
        backend.reset_steps = steps

    def check_in(self, backend: Backend) -> None:
        """Take back a backend that is clean and free: IDLE."""
        backend.state = State.IDLE
        backend.pin = None
        backend.request = None
        self._idle.append(backend)

    def forget(self, backend: Backend) -> None:
        """Drop a backend (CLOSED) and open a replacement if one is wanted."""
        backend.close()
        backend.state = State.CLOSED
        backend.piped.clear()
        self.backends.discard(backend)
        self._backend_generation.pop(backend, None)
        if backend in self._idle:
            self._idle.remove(backend)
        self.open_if_needed()

    # The queue ---------------------------------------------------------------

    def enqueue(self, req: Request) -> None:
        """Queue req for the next free backend."""
        self.queue.append(req)

    def requeue(self, req: Request) -> None:
        """Put req back at the head of the queue: it was never sent."""
        self.queue.appendleft(req)

    def dequeue(self) -> Request:
        """Take the oldest waiting request (the queue must not be empty)."""
        return self.queue.popleft()

    def unqueue(self, req: Request) -> None:
        """Take a waiting request out of the queue (cancelled)."""
        self.queue.remove(req)

    def needs_recycling(self, backend: Backend, now: float) -> bool:
        """Whether a free backend should be closed instead of reused."""
        cfg = self.config
        return (
            self.retired
            or now - backend.created > cfg.max_lifetime
            or (cfg.max_uses and backend.uses >= cfg.max_uses)
            or self._backend_generation.get(backend) != self.generation
            or len(self.backends) > cfg.max_size
        )

    def open_if_needed(self, now: float | None = None) -> None:
        """Start opening connections up to min_size, or for waiting requests."""
        if self.retired or self.sweeping:
            return
        now = time.monotonic() if now is None else now
        if now < self._retry_at:
            return
        wanted = max(
            self.config.min_size,
            len(self.backends) + min(len(self.queue), self.config.max_size),
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

    def opened(self, backend: Backend) -> None:
        """Adopt a newly opened backend."""
        self.opening -= 1
        self.last_error = None
        self._backoff = 0.0
        self.backends.add(backend)
        self._backend_generation[backend] = self.generation
        self.metrics.opened += 1
        if self.info is None:
            self.info = {
                "server_status": backend.server_status,
                "server_version": backend.server_version,
            }
        log.info(
            "pool %s: connection %d open (%d of max %d)",
            self.name,
            backend.thread_id,
            len(self.backends),
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

    def idle_to_close(self, now: float) -> list[Backend]:
        """Return idle backends to close: past idle_timeout above min_size, or due."""
        cfg = self.config
        out = [b for b in self._idle if self.needs_recycling(b, now)]
        spare = len(self.backends) - len(out) - cfg.min_size
        for backend in self._idle:  # oldest-used first: the bottom of the stack
            if spare <= 0:
                break
            if backend not in out and now - backend.last_used > cfg.idle_timeout:
                out.append(backend)
                spare -= 1
        return out

    def snapshot(self) -> dict[str, Any]:
        """Return the pool's part of `broker status`, as plain values."""
        states = collections.Counter(b.state.name.lower() for b in self.backends)
        return {
            "dsn": self.config.safe_dsn(),
            "min_size": self.config.min_size,
            "max_size": self.config.max_size,
            "pipeline_depth": self.config.pipeline_depth,
            "size": len(self.backends),
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

    def expire_queue(self, now: float, reply: Callable[[Request, str], None]) -> None:
        """Hand reply the queued requests whose queue_timeout or deadline passed.

        reply gets why: "query" (its deadline), "pool" (queue_timeout) or
        "unreachable" (a connect it prompted still hangs).
        """
        if not self.queue:
            return
        limit = self.config.queue_timeout
        unreachable = self.failing and now - self._connect_started >= PROMPT_WAIT
        keep: collections.deque[Request] = collections.deque()
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
