"""The broker's one loop: the poller, the wake-up pipe, signals, drain; its lifetime.

One thread multiplexes the ROUTER socket, every ipc peer, every MySQL socket
and a wake-up pipe (signals, connector results) in one epoll `Poller`.
Measured on 2 cores, this beat an I/O thread handing requests to pymysql
worker threads by about 2x: the GIL and per-query thread hand-offs, not
MySQL, were the ceiling.

`Broker` builds the parts, each named for whom it acts and each calling only
those after it: `Reloader` (SIGHUP), `Janitor` (the tick), `Frontend`
(clients: requests in, replies out, with `Report` for stats), `ReadSplit`
(replicas), `Dispatch` (a request's way onto a connection and back), and
under them `Pool` and `Backend`. The loop hands each ready socket to its
owner and each connector outcome to the part that asked for it. Invariants:

- a signal handler does nothing; the signal number arrives on the wake-up
  pipe and the loop acts on it between events;
- nothing here blocks: connects and KILL QUERY run in `Connector` threads;
- SIGTERM stops new work, lets in-flight work finish within
  ``drain_timeout``, and `run` returns the exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from broker.backend import Backend, State
from broker.config import Config
from broker.connector import Connector, Outcome
from broker.dispatch import Dispatch, connect_error
from broker.frontend import Frontend
from broker.janitor import IDLE_TICK, TICK, Janitor
from broker.metrics import BrokerMetrics
from broker.poller import POLLIN, POLLOUT, Poller
from broker.pool import Pool
from broker.processes import LoopSlot
from broker.readsplit import ReadSplit
from broker.reload import Reloader
from broker.systemd import Notifier

log = logging.getLogger(__name__)


def _runnable() -> int | None:
    """Return how many threads on the host are runnable now (this one included).

    None when /proc/loadavg cannot be read: not Linux, or hidden (systemd's
    ProcSubset=pid).
    """
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


class Broker:
    """The broker's event loop, and the parts it hands events to."""

    def __init__(
        self,
        config: Config,
        reload: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        loop: LoopSlot | None = None,
    ) -> None:
        self.config = config
        self.notifier = loop.notifier() if loop else (notifier or Notifier())
        self.poller = Poller()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, POLLIN)
        self.connector = Connector(self._wake_w)
        metrics = BrokerMetrics()
        self.pools: dict[str, Pool] = {
            name: Pool(cfg, self.connector) for name, cfg in config.pools.items()
        }
        self.dispatch = Dispatch(self.pools, self.connector, metrics)
        self.readsplit = ReadSplit(config, self.connector, self.dispatch)
        # A changed replicas list needs a restart, so this list stays.
        self.dispatch.replica_pools = self.readsplit.pools()
        self.frontend = Frontend(
            config, self.poller, self.dispatch, self.readsplit, metrics, loop
        )
        self.janitor = Janitor(
            self.dispatch, self.frontend, self.connector, self.notifier
        )
        self._reloader = Reloader(
            reload,
            self.notifier,
            self.connector,
            self.frontend,
            self.dispatch,
            self.readsplit,
        )
        self._stop = False
        self._drain_deadline = 0.0
        self._exit_code = 0
        self._next_tick = 0.0
        self._idle = False  # nothing waits on a deadline: tick every IDLE_TICK
        self._spare_cpu = True  # busy polling only takes a CPU nobody else wants
        self._cpus = len(os.sched_getaffinity(0))
        self._load_unknown_said = False

    # Setup and teardown ---------------------------------------------------------

    def bind(self, listening: dict[str, socket.socket] | None = None) -> None:
        """Listen on every endpoint (see `Frontend.bind`)."""
        self.frontend.bind(listening)

    def start_pools(self) -> None:
        """Open every pool's min_size connections in the background.

        First each pool kills what a dead predecessor left running on its
        account (`broker.reaper`), so the two never hold more than max_size.
        """
        for pool in self.pools.values():
            pool.sweeping = True
            self.connector.sweep(pool.config)
        self.readsplit.start()

    def close(self) -> None:
        """Close every connection and socket, and remove ipc socket files."""
        self.readsplit.close()
        for backend in list(self.dispatch.backends.values()):
            backend.close()
        self.dispatch.backends.clear()
        self.frontend.close()
        self.connector.shutdown()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.poller.close()
        self.notifier.close()

    # The loop -------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT and the drain after it; return the exit code."""
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._exit_code

    @staticmethod
    def _on_signal(signum: int, frame: object) -> None:
        # Signal handler: do nothing here. The wake-up fd carries the signal
        # number to the loop, which acts on it outside the handler.
        return

    def _loop(self) -> None:
        poll = self.poller.poll
        frontend = self.frontend
        router, drain_router = frontend.router, frontend.drain_router
        backends, peers = self.dispatch.backends, frontend.peers
        listeners = frontend.listeners
        events: list[tuple[Any, int]] = []
        sock: Any  # a file descriptor, or the ROUTER
        while not self._stop:
            # Spin only while traffic flows: after a wake-up that brought events.
            spin = self.config.broker.busy_poll_us if events and self._spare_cpu else 0
            wait_ms = (IDLE_TICK if self._idle else TICK) * 1000
            events = poll(0 if spin else wait_ms)
            if spin and not events:
                events = self._busy_poll(spin / 1e6) or poll(wait_ms)
            for sock, event in events:
                if sock is router:
                    drain_router()
                elif (peer := peers.get(sock)) is not None:
                    if event & POLLOUT:
                        peer.flush()
                    if event & POLLIN and not peer.closed:
                        peer.on_readable()
                elif (backend := backends.get(sock)) is not None:
                    if event & POLLOUT:
                        backend.flush()
                    if event & POLLIN and not backend.closed:
                        backend.on_readable()
                elif sock == self._wake_r:
                    self._on_wake()
                elif (listener := listeners.get(sock)) is not None:
                    frontend.accept(listener)
            now = time.monotonic()
            if events and self._idle:  # work arrived: deadlines need the fine tick
                self._idle = False
                self._next_tick = min(self._next_tick, now + TICK)
            if now >= self._next_tick:
                self._tick(now)

    def _busy_poll(self, seconds: float) -> list:
        """Poll without sleeping for a while; return what arrived (or []).

        Going to sleep and being woken costs a few tens of µs on a VM each
        time, and under steady traffic the next request or MySQL response
        is usually that close. sched_yield lets any runnable process have
        the CPU first, so the spin only uses time nobody else wants.
        """
        poll, clock, yield_cpu = self.poller.poll, time.perf_counter, os.sched_yield
        until = clock() + seconds
        while clock() < until:
            yield_cpu()
            if events := poll(0):
                return events
        return []

    def _tick(self, now: float) -> None:
        if self.config.broker.busy_poll_us:
            runnable = _runnable()
            self._spare_cpu = runnable is None or runnable <= self._cpus
            if runnable is None and not self._load_unknown_said:
                self._load_unknown_said = True
                log.warning(
                    "busy_poll_us: /proc/loadavg is not readable (systemd "
                    "ProcSubset=pid hides it), so the loop spins whatever the "
                    "other load; see Throughput options in deploy/README.md"
                )
        pending = self.janitor.tick(now)
        self._idle = not (pending or self.dispatch.draining)
        self._next_tick = now + (IDLE_TICK if self._idle else TICK)
        if self.dispatch.draining and (
            now >= self._drain_deadline or self._idle_for_exit()
        ):
            self._stop = True

    # Connector outcomes, signals, drain -------------------------------------------

    def _on_wake(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            data = b""
        for byte in set(data):
            if byte in (signal.SIGTERM, signal.SIGINT):
                self._begin_drain(signal.Signals(byte).name)
            elif byte == signal.SIGHUP:
                self.config = self._reloader.reload(self.config)
        results = self.connector.results
        while results:
            outcome = results.popleft()
            if outcome.kind == "kill":
                self.dispatch.killed(outcome)
            elif outcome.kind == "check":
                self.readsplit.checked(outcome)
            elif outcome.kind == "open":
                self._opened(outcome)
            elif (pool := self.pools.get(outcome.pool)) is not None:
                pool.reaper_done(outcome)

    def _opened(self, outcome: Outcome) -> None:
        """Adopt a new connection into the pool (or replica) it was opened for."""
        pool = self.readsplit.pool_for(outcome.tag) or self.pools.get(outcome.pool)
        if pool is None:
            if outcome.conn is not None:
                outcome.conn.close()
            return
        if outcome.conn is None:
            pool.open_failed(outcome.error)  # type: ignore[arg-type]
            if pool.failing and not self.readsplit.reroute(pool):
                self.dispatch.fail_waiting(pool, connect_error(outcome.error))
            return
        dispatch = self.dispatch
        backend = Backend(
            pool, outcome.tag, outcome.conn, self.poller, dispatch.closed_while_free
        )
        self.readsplit.adopt(backend)
        dispatch.adopt(backend)

    def _begin_drain(self, why: str) -> None:
        dispatch = self.dispatch
        if dispatch.draining:
            return
        dispatch.draining = True
        self._drain_deadline = time.monotonic() + self.config.broker.drain_timeout
        log.info(
            "%s: draining (%d statements running, %d pins open; at most %g s)",
            why,
            sum(b.running for b in dispatch.backends.values()),
            len(dispatch.pins),
            self.config.broker.drain_timeout,
        )
        self.notifier.stopping("draining")

    def _idle_for_exit(self) -> bool:
        dispatch = self.dispatch
        return (
            not dispatch.pins.open
            and not any(
                b.running or b.state is State.RESETTING
                for b in dispatch.backends.values()
            )
            and not any(p.queue for p in dispatch.all_pools())
        )
