"""Blocking MySQL work kept off the I/O thread: opening connections, KILLs.

Opening a connection (TCP, handshake, auth, init_sql) takes milliseconds when
the server is up and up to ``connect_timeout`` when it is not; the I/O loop
must never wait for either. A few threads do it and hand each outcome back
through `Connector.results` and a byte on the loop's wake-up pipe.

Connections are opened in the broker process, by the threads of the process
that then uses them; nothing is inherited across fork.
"""

from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import CLIENT, ER

from broker import reaper
from broker.config import PoolConfig

log = logging.getLogger(__name__)

THREADS = 4  # concurrent connects: a cold start of several pools, plus a kill
KILL_CONNECT_TIMEOUT = 5.0
# MySQL refused the account: a wrong password or grant, which no retry fixes.
# 1698 (ER_ACCESS_DENIED_NO_PASSWORD_ERROR) is MySQL's and not in pymysql's ER.
AUTH_ERRORS = frozenset({ER.ACCESS_DENIED_ERROR, ER.DBACCESS_DENIED_ERROR, 1698})
TRACK_GTID = "SET SESSION session_track_system_variables = 'last_gtid'"


@dataclass
class Outcome:
    """What a piece of blocking work came to, read by the I/O loop."""

    kind: str  # "open", "kill", "check" (a replica's lag check), "reaped" or "swept"
    pool: str
    conn: pymysql.connections.Connection | None = None
    error: Exception | None = None
    tag: Any = None  # the kill's backend; what a reap or sweep found


def setup_statements(pool: PoolConfig) -> list[str]:
    """Return the statements every new or reset connection runs, in order.

    autocommit is explicit because a reset restores the server's global
    default, which an operator may have set to 0.
    """
    readonly = ["SET SESSION TRANSACTION READ ONLY"] if pool.read_only else []
    # A primary with replicas reports each write's GTID in its OK packet, the
    # cheap way to read-your-writes (see broker.readsplit).
    track = [TRACK_GTID] if pool.replicas else []
    return ["SET autocommit=1", *readonly, *track, *pool.init_sql]


def is_auth_failure(err: BaseException) -> bool:
    """Tell whether a connect failed because MySQL refused the credentials."""
    return isinstance(err, pymysql.err.OperationalError) and bool(
        err.args and err.args[0] in AUTH_ERRORS
    )


class Connector:
    """A small thread pool for blocking MySQL calls, reporting to the I/O loop."""

    def __init__(self, wake_fd: int) -> None:
        self._wake_fd = wake_fd
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="connector")
        self.results: collections.deque[Outcome] = collections.deque()
        self.sides: dict[str, reaper.SideLink] = collections.defaultdict(
            reaper.SideLink
        )

    def report(self, outcome: Outcome) -> None:
        """Hand an outcome to the I/O loop and wake it; safe from any thread."""
        self.results.append(outcome)
        try:
            os.write(self._wake_fd, b"\x00")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is already due to wake

    def open(self, pool: PoolConfig) -> None:
        """Open a connection for pool in the background."""
        self._executor.submit(self._open, pool)

    def _open(self, pool: PoolConfig) -> None:
        try:
            conn = pymysql.connect(
                **pool.connect_args(),
                # A server that accepts but never greets must not hold this
                # thread for ever: pymysql reads the greeting without a timeout.
                # (The backend then makes the socket non-blocking.)
                read_timeout=pool.connect_timeout,
                write_timeout=pool.connect_timeout,
                autocommit=True,
                client_flag=CLIENT.MULTI_RESULTS
                | (CLIENT.SESSION_TRACK if pool.replicas else 0),
            )
            with conn.cursor() as cur:
                for sql in setup_statements(pool):
                    cur.execute(sql)
        except Exception as err:  # any failure is reported to the loop, not raised
            self.report(Outcome("open", pool.name, error=err, tag=pool))
            return
        self.report(Outcome("open", pool.name, conn=conn, tag=pool))

    def kill(self, pool: str, connect_args: dict, thread_id: int, tag: Any) -> None:
        """Run KILL QUERY for thread_id on the pool's one side connection."""
        self._executor.submit(self._kill, pool, connect_args, thread_id, tag)

    def _kill(self, pool: str, connect_args: dict, thread_id: int, tag: Any) -> None:
        args = dict(connect_args, connect_timeout=KILL_CONNECT_TIMEOUT)
        try:
            self.sides[pool].run(args, f"KILL QUERY {int(thread_id)}")
        except Exception as err:  # reported; the loop drops the backend instead
            self.report(Outcome("kill", pool, error=err, tag=tag))
            return
        self.report(Outcome("kill", pool, tag=tag))

    def reap(self, pool: str, connect_args: dict, thread_id: int) -> None:
        """KILL CONNECTION a dropped connection and report once the server closed it."""
        self._executor.submit(self._reap, pool, connect_args, thread_id)

    def _reap(self, pool: str, connect_args: dict, thread_id: int) -> None:
        args = dict(connect_args, connect_timeout=KILL_CONNECT_TIMEOUT)
        side = self.sides[pool]
        try:
            was_running = bool(reaper.running(side, args, [thread_id]))
            left, _ = reaper.reap(side, args, [thread_id], reaper.REAP_WAIT)
        except Exception as err:  # the server is away: it closed the connection too
            tag = (thread_id, False, False)
            self.report(Outcome("reaped", pool, error=err, tag=tag))
            return
        self.report(Outcome("reaped", pool, tag=(thread_id, not left, was_running)))

    def sweep(self, pool: PoolConfig) -> None:
        """Kill what a dead predecessor broker left running on pool's account."""
        self._executor.submit(self._sweep, pool)

    def _sweep(self, pool: PoolConfig) -> None:
        side = self.sides[pool.name]
        try:
            args = dict(pool.connect_args(), connect_timeout=KILL_CONNECT_TIMEOUT)
            found = reaper.predecessors(side, args)
            left, took = reaper.reap(side, args, found, reaper.SWEEP_TIMEOUT)
        except Exception as err:  # unreachable: the pool's own connects will say so
            self.report(Outcome("swept", pool.name, error=err, tag=([], set(), 0.0)))
            return
        finally:
            side.close()  # kills may never come: do not hold a connection for them
        self.report(Outcome("swept", pool.name, tag=(found, left, took)))

    def close_idle_sides(self) -> None:
        """Close side connections unused for reaper.SIDE_IDLE (never blocks)."""
        for side in self.sides.values():
            side.close(reaper.SIDE_IDLE)

    def shutdown(self) -> None:
        """Stop taking work; threads finish what they run (bounded by timeouts)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for side in self.sides.values():
            side.close()
