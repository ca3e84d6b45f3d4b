"""One replica of a pool: connections, lag checks, the one place its state changes.

Each replica has a `Pool` of its own, so its connections get the primary's
care (health checks, recycling, reset, init_sql, KILL on deadline, reconnect
with backoff) from the same code. A monitor thread runs the lag check every
``replica_check_interval`` on a connection of its own, so a slow or dead
replica never blocks the I/O loop; the loop applies each result in
`Replica.checked`, and `Replica._change_state` is the only writer of
``state``.

Eligibility: SERVING needs both replication threads running and
``Seconds_Behind_Master <= replica_max_lag``. One bad check is enough to
leave: NULL lag or a stopped thread makes it LAGGING, a failed check DOWN.
Coming back takes `RETURN_AFTER` good checks in a row, so a replica hovering
at the limit does not flap. While the broker cannot reach the primary, a
replica whose SQL thread runs and whose last measured lag was within the
limit counts as good: its IO thread is only reconnecting, and ``replica=True``
reads keep working.

A state change only decides where the next read goes: statements already
running on a replica that turns ineligible finish (drain); nothing is killed.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import ER
from pymysql.cursors import DictCursor

from broker import gtid
from broker.config import PoolConfig
from broker.connector import Connector, Outcome
from broker.pool import Pool

log = logging.getLogger(__name__)

RETURN_AFTER = 3  # good checks in a row before a replica that left serves again
CHECK_TIMEOUT_MIN = 1.0  # s a check may take (connect, each statement) ...
CHECK_TIMEOUT_MAX = 5.0  # ... at least and at most; else twice the interval


class State(enum.Enum):
    """Where a replica stands; ReadSplit sends replica=True reads only to SERVING."""

    SERVING = "serving"  # eligible: takes replica=True reads
    LAGGING = "lagging"  # reachable, but behind, not replicating, or not back yet
    DOWN = "down"  # its last check failed: unreachable, or the check was refused


@dataclass(frozen=True)
class Check:
    """What one lag check found; built in the monitor thread, read by the loop."""

    error: str | None = None
    io_running: str = ""  # Slave_IO_Running: "Yes", "No" or "Connecting"
    sql_running: str = ""  # Slave_SQL_Running
    lag: float | None = None  # Seconds_Behind_Master; None when NULL
    position: str = ""  # @@gtid_slave_pos


def run_check(conn: pymysql.connections.Connection) -> Check:
    """Return the replication state a replica reports."""
    with conn.cursor(DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        if row is None:
            return Check(error="not a replica (SHOW SLAVE STATUS is empty)")
        cur.execute("SELECT @@gtid_slave_pos AS pos")
        position = cur.fetchone()["pos"] or ""
    lag = row.get("Seconds_Behind_Master")
    return Check(
        io_running=row.get("Slave_IO_Running") or "",
        sql_running=row.get("Slave_SQL_Running") or "",
        lag=None if lag is None else float(lag),
        position=position,
    )


def _check_error(err: Exception) -> str:
    code = err.args[0] if err.args and isinstance(err.args[0], int) else None
    text = err.args[1] if len(err.args) > 1 else str(err)
    if code in (ER.SPECIFIC_ACCESS_DENIED_ERROR, ER.ACCESS_DENIED_ERROR):
        return (
            f"{text} (the pool's user needs SLAVE MONITOR, or REPLICATION CLIENT "
            "before MariaDB 10.5, on the replica)"
        )
    return text


class Replica:
    """A read-only copy of a pool's server: connections, check results, counters."""

    def __init__(self, config: PoolConfig, connector: Connector) -> None:
        self.dsn = config.dsn
        self.address = (
            f"{config.host}:{config.port}" if config.host else str(config.unix_socket)
        )
        self.served_by = f"replica {self.address}"
        self.pool = Pool(config, connector)
        self.pool.name = f"{config.name} {self.served_by}"  # in logs and pins
        self.state = State.DOWN
        self.why = "not checked yet"
        self.lag: float | None = None  # as last reported (None when NULL)
        self.last_lag: float | None = None  # the last lag actually measured
        self.good = 0  # good checks in a row
        # Its SQL thread ran and its last measured lag was within the limit at
        # the last check: it may serve while the primary is unreachable.
        self.survivor = False
        self.checked_once = False
        self.position: gtid.Position = {}  # applied at least this far
        self.reads = 0  # replica=True reads sent here
        self.fallbacks = 0  # reads sent to the primary while this could not serve
        self.ryw_waits = 0  # MASTER_GTID_WAIT before a read
        self.ryw_timeouts = 0  # ... that timed out: the primary served the read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # The monitor thread -----------------------------------------------------

    def start(self, report: Callable[[Outcome], None]) -> None:
        """Start the monitor thread; it reports each check through report."""
        self._thread = threading.Thread(
            target=self._monitor,
            args=(report,),
            name=f"replica-check {self.address}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the monitor to stop; it exits within one check timeout."""
        self._stop.set()

    def _monitor(self, report: Callable[[Outcome], None]) -> None:
        conn = None
        while not self._stop.is_set():
            config = self.pool.config  # a reload swaps it: read it each round
            interval = config.replica_check_interval
            began = time.monotonic()
            try:
                if conn is None:
                    bound = min(CHECK_TIMEOUT_MAX, max(CHECK_TIMEOUT_MIN, 2 * interval))
                    args = dict(config.connect_args(), connect_timeout=bound)
                    conn = pymysql.connect(
                        **args, read_timeout=bound, write_timeout=bound, autocommit=True
                    )
                check = run_check(conn)
            except Exception as err:  # any failure is a failed check, reported
                if conn is not None:
                    conn.close()  # a failed check may leave it mid-response
                    conn = None
                check = Check(error=_check_error(err))
            report(Outcome("check", config.name, tag=(self, check)))
            self._stop.wait(max(0.0, interval - (time.monotonic() - began)))
        if conn is not None:
            conn.close()

    # The loop's side --------------------------------------------------------

    def checked(self, check: Check, primary_down: bool) -> None:
        """Apply one check's result: the eligibility rules of the module docstring."""
        max_lag = self.pool.config.replica_max_lag
        self.lag = check.lag
        if check.lag is not None:
            self.last_lag = check.lag
        if check.position:
            gtid.advance(self.position, gtid.parse(check.position))
        self.survivor = (
            check.error is None
            and check.sql_running == "Yes"
            and self.last_lag is not None
            and self.last_lag <= max_lag
        )
        if check.error is not None:
            self.good = 0
            self._change_state(State.DOWN, check.error)
            return
        running = check.io_running == "Yes" and check.sql_running == "Yes"
        # The primary is gone and the replica has applied what it sent: serve
        # at once, without hysteresis; the reads have nowhere else to go.
        orphaned = primary_down and self.survivor
        if orphaned or (running and check.lag is not None and check.lag <= max_lag):
            ok, why = True, ""
        elif not running:
            ok = False
            why = (
                f"replication not running (IO {check.io_running or '?'}, "
                f"SQL {check.sql_running or '?'})"
            )
        elif check.lag is None:
            ok, why = False, "Seconds_Behind_Master is NULL"
        else:
            ok, why = False, f"{check.lag:g} s behind (replica_max_lag {max_lag:g})"
        if not ok:
            self.good = 0
            self._change_state(State.LAGGING, why)
            return
        self.good += 1
        first = not self.checked_once
        self.checked_once = True
        if self.state is not State.SERVING and (
            first or orphaned or self.good >= RETURN_AFTER
        ):
            self._change_state(State.SERVING, "")

    def _change_state(self, state: State, why: str) -> None:
        """Move to state; the only place that writes ``state``."""
        self.checked_once = True
        changed = state is not self.state
        self.state, self.why = state, why
        if not changed:
            return
        if state is State.SERVING:
            log.info("pool %s: serving reads", self.pool.name)
        else:
            log.warning(
                "pool %s: %s, no reads until %d good checks (%s)",
                self.pool.name,
                state.value,
                RETURN_AFTER,
                why,
            )

    def snapshot(self) -> dict[str, Any]:
        """Return this replica as `broker status` shows it."""
        pool = self.pool
        size = len(pool.backends)
        return {
            "address": self.address,
            "state": self.state.value,
            "why": self.why,
            "lag_s": self.lag,
            "connections": size,
            "idle": pool.idle,
            "busy": size - pool.idle,
            "max_size": pool.config.max_size,
            "waiting": len(pool.queue),
            "reads": self.reads,
            "fallbacks": self.fallbacks,
            "ryw_waits": self.ryw_waits,
            "ryw_timeouts": self.ryw_timeouts,
            "gtid_position": gtid.to_text(self.position),
            "unreachable": pool.failing,
            "last_error": str(pool.last_error) if pool.last_error else None,
            "latency_ms": pool.metrics.snapshot()["latency_ms"],
            "failed": pool.metrics.failed,
            "lost": pool.metrics.lost,
        }
