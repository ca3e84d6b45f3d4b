"""The broker's connections as the server sees them: tagged, killed, confirmed gone.

What `max_size` counts is what MySQL holds, and MySQL keeps a connection whose
client vanished for as long as its statement runs. So:

- every statement a backend sends starts with `statement_tag()`, a comment
  naming this broker (host, pid), visible in PROCESSLIST's INFO column;
- each pool has one side connection (`SideLink`), opened at its first use
  and reused, for ``KILL QUERY``, ``KILL CONNECTION`` and PROCESSLIST checks:
  never more than one per pool, however many statements are cancelled, and
  closed after `SIDE_IDLE` unused. It is the one connection beyond
  ``max_size``: it must open when every counted connection is busy, since
  that is when a statement needs cancelling;
- a connection the broker drops while its statement still runs is killed
  with ``KILL CONNECTION`` and counted until PROCESSLIST no longer shows it
  (`reap`);
- at start, statements tagged by a broker of this host whose process is gone
  (a SIGKILLed predecessor) are killed the same way before the pool opens its
  own connections (`sweep`).

These calls block; they run in `broker.connector` threads, never the I/O loop.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from typing import Any

import pymysql

SIDE_IDLE = 10.0  # s a side connection stays open unused, for cancels in a burst
SIDE_READ_TIMEOUT = 5.0  # s a KILL or PROCESSLIST query (or the greeting) may take
REAP_WAIT = 1.0  # s one check waits for a killed connection to go (in a thread)
REAP_TIMEOUT = 30.0  # s the pool keeps asking (each janitor pass), then gives up
SWEEP_TIMEOUT = 10.0  # s a starting pool waits for a predecessor's connections
POLL = 0.05  # s between PROCESSLIST checks
_TAG = re.compile(rb"/\* mysql-broker (\S+) (\d+) \*/")
_UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD: it ended already


def statement_tag() -> bytes:
    """Return the comment that starts this process's statements (see module doc)."""
    return f"/* mysql-broker {socket.gethostname()} {os.getpid()} */ ".encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


class SideLink:
    """The one side connection of a pool: opened on first use, reused, reopened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # connector threads take turns on it
        self._conn: pymysql.connections.Connection | None = None
        self._args: dict | None = None
        self.last_used = 0.0

    @property
    def open(self) -> bool:
        """Whether the side connection exists now."""
        return self._conn is not None

    def run(self, connect_args: dict, sql: str, args: Any = None) -> tuple:
        """Run one statement on the side connection; return its rows."""
        with self._lock:
            self.last_used = time.monotonic()
            for attempt in (1, 2):
                conn = self._connect(connect_args)
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, args)
                        return cur.fetchall()
                except pymysql.err.OperationalError as err:
                    if err.args and err.args[0] == _UNKNOWN_THREAD:
                        return ()
                    self._close()  # a stale side connection: one fresh try
                    if attempt == 2:
                        raise
        return ()  # unreachable; for the type checker

    def _connect(self, connect_args: dict) -> pymysql.connections.Connection:
        if self._conn is not None and self._args != connect_args:
            self._close()  # a reload changed where or who
        if self._conn is None:
            self._conn = pymysql.connect(
                **connect_args,
                read_timeout=SIDE_READ_TIMEOUT,
                write_timeout=SIDE_READ_TIMEOUT,
                autocommit=True,
            )
            self._args = connect_args
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: S110  closing a broken connection: nothing to save
                pass
            self._conn = None

    def close(self, idle: float = 0.0) -> None:
        """Close the side connection if unused for idle s and no thread has it."""
        if self._conn is None or time.monotonic() - self.last_used < idle:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()


def _listed(
    side: SideLink, connect_args: dict, ids: list[int], also: str = ""
) -> set[int]:
    """Return which of the connection ids PROCESSLIST shows (and matches also)."""
    if not ids:
        return set()
    marks = ", ".join(["%s"] * len(ids))
    rows = side.run(
        connect_args,
        f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({marks}){also}",
        ids,
    )
    return {row[0] for row in rows}


def present(side: SideLink, connect_args: dict, ids: list[int]) -> set[int]:
    """Return which of the connection ids PROCESSLIST still shows."""
    return _listed(side, connect_args, ids)


def running(side: SideLink, connect_args: dict, ids: list[int]) -> set[int]:
    """Return which of the connection ids are running a statement now."""
    return _listed(side, connect_args, ids, " AND COMMAND <> 'Sleep'")


def reap(
    side: SideLink, connect_args: dict, ids: list[int], timeout: float
) -> tuple[set[int], float]:
    """KILL CONNECTION each id; return those still shown after timeout, and the time.

    Killing ends a running statement as MySQL ends any killed statement:
    rolled back (in a transactional engine), and the connection closed.
    """
    start = time.monotonic()
    for thread_id in ids:
        side.run(connect_args, f"KILL CONNECTION {int(thread_id)}")
    left = present(side, connect_args, ids)
    while left and time.monotonic() - start < timeout:
        time.sleep(POLL)
        left = present(side, connect_args, list(left))
    return left, time.monotonic() - start


def predecessors(side: SideLink, connect_args: dict) -> list[int]:
    """Return ids of this account's statements tagged by a dead broker of this host."""
    rows = side.run(
        connect_args,
        "SELECT ID, INFO FROM information_schema.PROCESSLIST "
        "WHERE INFO LIKE '/* mysql-broker %' AND ID <> CONNECTION_ID() "
        "AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
    )
    host = socket.gethostname().encode()
    found = []
    for thread_id, info in rows:
        text = info.encode() if isinstance(info, str) else info or b""
        match = _TAG.match(text)
        if match is None or match.group(1) != host:
            continue  # another host's broker: alive or not, not ours to judge
        pid = int(match.group(2))
        if pid != os.getpid() and not _alive(pid):
            found.append(thread_id)
    return found
