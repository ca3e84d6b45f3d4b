"""`[broker] loops = K`: K I/O loop processes behind one endpoint, and their parent.

The GIL keeps one Python loop on one core; K processes use K. The parent
(`broker serve`) binds the ipc sockets, forks the loops, and then only
supervises: it forwards SIGHUP and SIGTERM, tells systemd READY once every loop
is ready, pings the watchdog only while every loop ticks, and exits (non-zero,
for a restart) when a loop dies. MySQL connections and the libzmq context are
made in each loop after the fork, never inherited.

Invariants a reader needs first:

- A client connection is accepted by exactly one loop, so everything keyed by
  it (pins, in-flight counts, cancel) lives in that loop. A client that
  reconnects mid-transaction may land on another loop, which does not know its
  pin: the transaction is lost as it would be across a broker restart.
- Each pool's ``min_size``/``max_size`` is split across the loops (`share`):
  the sum is the configured figure, so the cap holds for the whole broker with
  no shared counter on the hot path. The cost: one loop's share can be busy
  while another's is idle.
- tcp:// endpoints (a libzmq ROUTER cannot be shared) and the metrics exporter
  live in loop 0 only.
- `broker status` adds the loops up: each loop writes its snapshot to the
  parent's private directory every upkeep pass, and the one asked merges the
  others' (at most JANITOR_EVERY old) with its own (`merge_stats`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgpack

from broker.config import Config
from broker.systemd import Notifier

log = logging.getLogger(__name__)

CHILD_TICK = 1.0  # seconds between a loop's "still ticking" bytes to its parent
STUCK_AFTER = 10.0  # a loop silent this long stops the watchdog pings
KILL_AFTER_DRAIN = 5.0  # seconds past drain_timeout before loops are SIGKILLed
EXIT_BUG = 70
_READY, _TICK = b"R", b"W"
# Merging snapshots: these keys are the same in every loop, or a maximum.
_SAME = frozenset(
    {
        "version",
        "pid",
        "endpoints",
        "busy_poll_us",
        "open_files_limit",
        "pipeline_depth",
        "dsn",
        "started",
        "loop",
    }
)
_MAX = frozenset({"p50", "p99", "uptime_s"})


def share(config: Config, index: int, loops: int) -> Config:
    """Return the config loop `index` of `loops` runs: its part of each pool's sizes."""

    def part(total: int) -> int:
        return total // loops + (1 if index < total % loops else 0)

    pools = {
        name: dataclasses.replace(
            pool,
            min_size=part(pool.min_size),
            max_size=part(pool.max_size),
            replica_max_size=pool.replica_max_size and part(pool.replica_max_size),
        )
        for name, pool in config.pools.items()
    }
    # The loop runs one loop's worth: its config says loops = 1.
    broker = dataclasses.replace(config.broker, loops=1)
    return dataclasses.replace(config, broker=broker, pools=pools)


def merge_stats(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Return one `stats` dict for the whole broker from each loop's own."""
    merged = _merge(snapshots)
    merged["loops"] = [
        {
            "loop": s.get("loop"),
            "pid": s.get("loop_pid"),
            "requests": s.get("requests"),
            "connections": sum(p["size"] for p in s.get("pools", {}).values()),
            "pinned": len(s.get("pins", [])),
        }
        for s in snapshots
    ]
    return merged


def _merge(values: list[Any], key: str = "") -> Any:
    first = values[0]
    if isinstance(first, dict):
        keys = [k for v in values for k in v]
        return {
            k: _merge([v[k] for v in values if k in v], k) for k in dict.fromkeys(keys)
        }
    if key in _SAME:
        return first
    if isinstance(first, bool):
        return any(values)
    if isinstance(first, int | float):
        numbers = [v for v in values if isinstance(v, int | float)]
        return max(numbers) if key in _MAX else sum(numbers)
    if isinstance(first, list):
        return [item for v in values for item in v]
    return next((v for v in values if v is not None), None)


class LoopSlot:
    """What one loop process knows of its siblings: its index and the shared dir."""

    def __init__(self, index: int, count: int, share_dir: str, tick_fd: int) -> None:
        self.index = index
        self.count = count
        self._dir = share_dir
        self._tick_fd = tick_fd
        self._pid = os.getpid()

    def publish(self, own: dict[str, Any]) -> None:
        """Leave this loop's snapshot where its siblings read it."""
        path = os.path.join(self._dir, f"loop-{self.index}")
        tmp = f"{path}.tmp"
        own = {**own, "loop": self.index, "loop_pid": self._pid}
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(own, default=str))
        os.replace(tmp, path)

    def whole(self, own: dict[str, Any]) -> dict[str, Any]:
        """Return the whole broker's stats: own, fresh, plus the siblings' last."""
        own = {**own, "loop": self.index, "loop_pid": self._pid}
        snapshots = [own]
        for i in range(self.count):
            if i == self.index:
                continue
            try:
                with open(os.path.join(self._dir, f"loop-{i}"), "rb") as f:
                    snapshots.append(msgpack.unpackb(f.read()))
            except (OSError, ValueError):
                pass  # not written yet (starting): counted from its next pass
        snapshots.sort(key=lambda s: s.get("loop", 0))
        # The broker's pid is the parent's: the one systemd and signals know.
        return {**merge_stats(snapshots), "pid": os.getppid()}

    def notifier(self) -> Notifier:
        """Return the loop's line to its parent, in place of systemd's."""
        return _ParentNotifier(self._tick_fd)


class _ParentNotifier(Notifier):
    """Tells the parent "ready" and "still ticking"; the parent talks to systemd."""

    def __init__(self, fd: int) -> None:
        super().__init__(environ={})
        self._fd = fd
        self._next_tick = 0.0

    @property
    def enabled(self) -> bool:
        return True

    def _say(self, what: bytes) -> None:
        try:
            os.write(self._fd, what)
        except OSError:
            pass  # the parent is gone; it exits, and so will we on SIGTERM

    def ready(self, status: str) -> None:
        self._say(_READY)

    def status(self, status: str) -> None:
        return

    def reloading(self) -> None:
        return

    def stopping(self, status: str) -> None:
        return

    def watchdog(self, now: float) -> None:
        if now >= self._next_tick:
            self._next_tick = now + CHILD_TICK
            self._say(_TICK)


def supervise(
    config: Config,
    loops: int,
    listening: dict[str, socket.socket],
    run_loop: Callable[[LoopSlot], int],
) -> int:
    """Fork `loops` loop processes and supervise them; return the exit code."""
    notifier = Notifier()
    share_dir = tempfile.mkdtemp(prefix="broker-loops-")
    children: dict[int, tuple[int, int]] = {}  # read fd -> (index, pid)
    for index in range(loops):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for other in children:
                os.close(other)
            code = EXIT_BUG
            try:
                code = run_loop(LoopSlot(index, loops, share_dir, write_fd))
            except BaseException:
                log.exception("loop %d: bug: an exception escaped", index)
            finally:
                # Never return into the parent's code (its atexit hooks would
                # stop a sandbox the parent owns).
                os._exit(code)
        os.close(write_fd)
        children[read_fd] = (index, pid)
    for sock in listening.values():
        sock.close()  # the loops hold their copies
    log.info("%d loops started: pids %s", loops, [pid for _, pid in children.values()])
    try:
        return _watch(config, notifier, children)
    finally:
        for name in os.listdir(share_dir):
            os.unlink(os.path.join(share_dir, name))
        os.rmdir(share_dir)
        notifier.close()


def _watch(
    config: Config, notifier: Notifier, children: dict[int, tuple[int, int]]
) -> int:
    """Relay signals and readiness until every loop has exited."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    now = time.monotonic()
    last_tick = {fd: now for fd in children}
    ready: set[int] = set()
    stopping_since = 0.0
    code = 0
    try:
        while children:
            readable, _, _ = select.select([wake_r, *children], [], [], 0.5)
            now = time.monotonic()
            for fd in readable:
                if fd == wake_r:
                    for sig in set(os.read(wake_r, 64)):
                        if sig == signal.SIGHUP and not stopping_since:
                            notifier.reloading()
                            ready.clear()
                            _signal_all(children, signal.SIGHUP)
                        elif (
                            sig in (signal.SIGTERM, signal.SIGINT)
                            and not stopping_since
                        ):
                            stopping_since = now
                            notifier.stopping("draining")
                            _signal_all(children, signal.SIGTERM)
                    continue
                data = os.read(fd, 4096)
                if data:
                    last_tick[fd] = now
                    if _READY in data and fd not in ready:
                        ready.add(fd)
                        if len(ready) == len(children) and not stopping_since:
                            notifier.ready(f"{len(children)} loops serving")
                            log.info("ready: %d loops", len(children))
                    continue
                index, pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                child_code = os.waitstatus_to_exitcode(status)
                if not stopping_since:
                    log.error(
                        "loop %d (pid %d) exited with %d; stopping the others for a "
                        "restart",
                        index,
                        pid,
                        child_code,
                    )
                    stopping_since = now
                    code = EXIT_BUG
                    _signal_all(children, signal.SIGTERM)
                elif child_code:
                    code = code or child_code
            if stopping_since and now - stopping_since > (
                config.broker.drain_timeout + KILL_AFTER_DRAIN
            ):
                _signal_all(children, signal.SIGKILL)
            elif not stopping_since and all(
                now - t < STUCK_AFTER for t in last_tick.values()
            ):
                notifier.watchdog(now)
    finally:
        signal.set_wakeup_fd(-1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
    return code


def _signal_all(children: dict[int, tuple[int, int]], sig: int) -> None:
    for _, pid in children.values():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # exited already; its pipe's EOF reports it
