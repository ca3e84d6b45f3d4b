"""What a client is told when the broker dies or freezes at the worst moment.

Each fault lands at a known point: after MySQL shows the statement running
(it reached the broker and MySQL), or while the request sits unread in a
stopped broker's socket. The row count on the server is the judge.
"""

import asyncio
import contextlib
import os
import re
import signal
import socket
import threading
import time

import pymysql
import pytest
from broker_fixtures import start_on_tcp

import client
from broker import reaper
from broker.config import PoolConfig
from broker.connector import Connector
from broker.pool import Pool
from client import aio

SLOW_INSERT = "INSERT INTO t SELECT 1 FROM (SELECT SLEEP(0.5)) AS s /* bk-lost */"


def _count(direct) -> int:
    direct.commit()  # a fresh snapshot
    with direct.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        return cur.fetchone()[0]


def _wait_running(direct, marker: str, timeout: float = 5.0) -> None:
    """Wait until MySQL shows a statement containing marker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with direct.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
                (f"%{marker}%",),
            )
            if cur.fetchone()[0]:
                return
        time.sleep(0.01)
    pytest.fail(f"statement {marker} never showed in PROCESSLIST")


def _wait_count(direct, want: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (got := _count(direct)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def _in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(fn())
        except client.Error as err:
            out.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_write_the_broker_read_then_lost_is_outcome_unknown(make_broker, direct, fault):
    b = make_broker(max_size=1)
    c = b.client(timeout=10)
    c.query("CREATE TABLE t (a INT)")
    # SIGKILL: a timeout long enough to tell "noticed" from "waited out".
    timeout = 5 if fault == "SIGKILL" else 1
    start = time.monotonic()
    thread, out = _in_thread(lambda: c.query(SLOW_INSERT, timeout=timeout))
    try:
        _wait_running(direct, "bk-lost")
        b.signal(getattr(signal, fault))
        thread.join(10)
        elapsed = time.monotonic() - start
        assert _wait_count(direct, 1) == 1  # it was applied ...
    finally:
        if fault == "SIGSTOP":
            b.signal(signal.SIGCONT)
    (err,) = out
    # ... so the client must not say "nothing happened"; old handlers still match.
    assert isinstance(err, client.OutcomeUnknown), err
    assert isinstance(err, client.BrokerUnavailable)
    assert "may or may not have been applied" in err.msg
    stated = float(re.search(r"after (\d+\.\d) s", err.msg).group(1))
    assert abs(stated - elapsed) < 0.5  # the time it took, not timeout + GRACE
    if fault == "SIGKILL":
        assert elapsed < 4  # the closed socket is noticed, not waited out (7 s)
    else:
        assert 2.5 < elapsed < 8  # timeout + GRACE


@pytest.mark.timeout(60)
def test_aio_write_lost_with_the_broker_is_outcome_unknown(make_broker, direct):
    b = make_broker(max_size=1)
    b.client().query("CREATE TABLE t (a INT)")

    async def main() -> BaseException:
        async with aio.Client(endpoint=b.endpoint, timeout=1) as c:
            await c.ping()
            task = asyncio.create_task(c.query(SLOW_INSERT))
            await asyncio.to_thread(_wait_running, direct, "bk-lost")
            b.signal(signal.SIGKILL)
            return (await asyncio.gather(task, return_exceptions=True))[0]

    err = asyncio.run(main())
    assert _wait_count(direct, 1) == 1
    assert isinstance(err, client.OutcomeUnknown), err
    assert isinstance(err, client.BrokerUnavailable)


@pytest.mark.timeout(60)
def test_insert_left_unread_past_its_deadline_never_runs(make_broker, direct):
    b = make_broker(max_size=1)
    c = b.client(timeout=1)
    c.query("CREATE TABLE t (a INT)")
    b.signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(client.BrokerUnavailable) as exc:
            c.query("INSERT INTO t VALUES (1)", timeout=1)
        elapsed = time.monotonic() - start
        # Provably never read, so not "unknown": the broker will not start it.
        assert not isinstance(exc.value, client.OutcomeUnknown), exc.value
        assert "did not read the request" in exc.value.msg
        assert 2.5 < elapsed < 8
        time.sleep(1.0)  # well past the deadline, still unread
    finally:
        b.signal(signal.SIGCONT)
    d = b.client(timeout=5)
    assert d.query("SELECT 1").scalar() == 1  # the broker has read its backlog
    assert _count(direct) == 0
    assert d.stats()["pools"]["default"]["expired_unread"] == 1


@pytest.mark.timeout(60)
def test_tcp_insert_read_past_its_wall_clock_deadline_never_runs(
    make_broker, direct, mysql_dsn, password_file
):
    b = start_on_tcp(make_broker, mysql_dsn, password_file, {"max_size": 1})
    c = b.client(timeout=1)
    c.query("CREATE TABLE t (a INT)")
    b.signal(signal.SIGSTOP)
    try:
        with pytest.raises(client.BrokerUnavailable) as exc:
            c.query("INSERT INTO t VALUES (1)", timeout=1)
        # libzmq took the frame: the client cannot know, so it says so.
        assert isinstance(exc.value, client.OutcomeUnknown), exc.value
        time.sleep(1.0)  # past the deadline and the 1 s skew allowance
    finally:
        b.signal(signal.SIGCONT)
    d = b.client(timeout=5)
    assert d.query("SELECT 1").scalar() == 1
    assert _count(direct) == 0
    assert d.stats()["pools"]["default"]["expired_unread"] == 1


@pytest.mark.timeout(60)
def test_request_left_unread_by_a_killed_broker_runs_on_its_successor(
    make_broker, direct
):
    b = make_broker(max_size=1)
    c = b.client(timeout=15)
    c.query("CREATE TABLE t (a INT)")
    b.signal(signal.SIGSTOP)
    thread, out = _in_thread(lambda: c.query("INSERT INTO t VALUES (1)"))
    time.sleep(0.5)  # the request sits unread in the frozen broker's socket
    b.kill()  # as a watchdog does; the kernel resets our socket: "never read"
    b.start()
    thread.join(15)
    (result,) = out
    assert not isinstance(result, BaseException), result
    assert result.rowcount == 1
    assert _count(direct) == 1  # once


@pytest.mark.timeout(120)
def test_request_after_mysql_returns_connects_at_once(make_broker, faulty_mysql):
    b = make_broker(dsn=faulty_mysql.dsn(user="broker", database="broker"), max_size=2)
    c = b.client(timeout=3)
    assert c.query("SELECT 1").scalar() == 1
    faulty_mysql.kill()
    with pytest.raises(client.OperationalError):
        c.query("SELECT 1")
    time.sleep(7)  # the broker's own retries back off to 5 s apart
    with pytest.raises(client.OperationalError):
        c.query("SELECT 1")  # still down: fails fast, not after its timeout
    faulty_mysql.start()
    faulty_mysql.admin().close()  # the server accepts connections again
    start = time.monotonic()
    assert c.query("SELECT 2").scalar() == 2  # no back-off wait, no stale error
    assert time.monotonic() - start < 4  # well inside its timeout
    assert c.stats()["pools"]["default"]["connect_failures"] >= 3


def _account_connections(conn, test_conn: int = 0) -> list[int]:
    """Return the broker account's connections but the test's own."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE USER = 'broker' AND DB = DATABASE() AND ID <> CONNECTION_ID() "
            "AND ID <> %s",
            (test_conn,),
        )
        return [row[0] for row in cur.fetchall()]


class _Peak:
    """Sample the broker account's connections in PROCESSLIST every 10 ms."""

    def __init__(self, conn, test_conn: int) -> None:
        self.peak = 0
        self._conn = conn  # its own: pymysql connections are not thread-safe
        self._test_conn = test_conn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            found = _account_connections(self._conn, self._test_conn)
            self.peak = max(self.peak, len(found))
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.timeout(120)
def test_max_size_holds_in_processlist_across_kills_and_a_broker_restart(
    make_broker, direct, mysql_server, database
):
    b = make_broker(max_size=3, min_size=1)
    c = b.client(timeout=10)
    c.query("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    c.query("INSERT INTO t VALUES (1, 0)")
    holder = mysql_server.admin()  # holds the row lock the writes wait for
    holder.select_db(database)
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT v FROM t WHERE id = 1 FOR UPDATE")
    own = mysql_server.admin()
    own.select_db(database)
    watch = _Peak(own, direct.thread_id())
    try:
        # Rounds of cancels: each KILL QUERY goes over the pool's one side link.
        for _ in range(3):
            threads = [
                _in_thread(
                    lambda: c.query(
                        "UPDATE t SET v = v + 1 WHERE id = 1 /* bk-cap */", timeout=0.5
                    )
                )
                for _ in range(3)
            ]
            for thread, out in threads:
                thread.join(10)
                assert isinstance(out[0], client.QueryTimeout), out
        # Writes left waiting on the server by a SIGKILLed broker ...
        threads = [
            _in_thread(
                lambda: c.query("UPDATE t SET v = v + 1 WHERE id = 1 /* bk-cap */")
            )
            for _ in range(3)
        ]
        _wait_running(direct, "bk-cap")
        time.sleep(0.3)
        b.kill()
        for thread, _ in threads:
            thread.join(10)
        with direct.cursor() as cur:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE "
                "'%bk-cap%' AND ID <> CONNECTION_ID()"
            )
            lingering = {row[0] for row in cur.fetchall()}
        assert len(lingering) == 3  # the server still runs them
        # ... are killed by its successor before it opens connections of its own.
        b.start()
        d = b.client(timeout=10)
        loaded = [_in_thread(lambda: d.query("SELECT SLEEP(0.5)")) for _ in range(3)]
        for thread, out in loaded:
            thread.join(10)
            (result,) = out
            assert result.scalar() == 0, result
        assert not lingering & set(_account_connections(direct))
        assert d.stats()["pools"]["default"]["predecessor_killed"] == 3
    finally:
        peak = watch.stop()
        own.close()
        with holder.cursor() as cur:
            cur.execute("COMMIT")
        holder.close()
    assert peak <= 3 + 1  # max_size, and the one side connection for KILLs
    assert _count_v(direct) == 0  # no cancelled or killed write was applied


def _count_v(direct) -> int:
    direct.commit()
    with direct.cursor() as cur:
        cur.execute("SELECT v FROM t WHERE id = 1")
        return cur.fetchone()[0]


@pytest.mark.timeout(60)
def test_aio_request_left_unread_by_a_killed_broker_runs_on_its_successor(
    make_broker, direct
):
    b = make_broker(max_size=1)
    b.client().query("CREATE TABLE t (a INT)")

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=15) as c:
            await c.ping()
            b.signal(signal.SIGSTOP)
            task = asyncio.create_task(c.query("INSERT INTO t VALUES (1)"))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(b.kill)
            await asyncio.to_thread(b.start)
            return await task

    assert asyncio.run(main()).rowcount == 1
    assert _count(direct) == 1


@pytest.mark.timeout(60)
def test_reaper_kills_a_running_connection_and_confirms_it_gone(
    mysql_server, database, direct
):
    args = {
        "host": mysql_server.host,
        "port": mysql_server.port,
        "user": mysql_server.user,
        "password": mysql_server.password,
        "database": database,
    }
    victim = pymysql.connect(**args)
    victim_id = victim.thread_id()

    def run() -> None:
        with contextlib.suppress(pymysql.err.MySQLError), victim.cursor() as cur:
            cur.execute("SELECT SLEEP(20) /* bk-reap */")

    thread = threading.Thread(target=run)
    thread.start()
    _wait_running(direct, "bk-reap")
    side = reaper.SideLink()
    try:
        assert reaper.running(side, args, [victim_id, 2**31]) == {victim_id}
        left, took = reaper.reap(side, args, [victim_id], 10)
        assert left == set()
        assert took < 5
        assert reaper.present(side, args, [victim_id]) == set()
        assert side.open  # one side connection, kept for the next kill
    finally:
        side.close()
        thread.join(10)
    assert not side.open


@pytest.mark.timeout(60)
def test_dropped_connection_counts_against_the_pool_until_seen_gone(
    mysql_server, database, direct
):
    cfg = PoolConfig(
        name="default",
        dsn=mysql_server.dsn(user=mysql_server.user, database=database),
        password=mysql_server.password,
        max_size=2,
        min_size=0,
    )
    wake_r, wake_w = os.pipe()
    connector = Connector(wake_w)
    pool = Pool(cfg, connector)
    victim = pymysql.connect(**cfg.connect_args())

    def run() -> None:
        with contextlib.suppress(pymysql.err.MySQLError), victim.cursor() as cur:
            cur.execute("SELECT SLEEP(20) /* bk-drop */")

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_running(direct, "bk-drop")
        pool.drop(victim.thread_id(), cfg.connect_args())
        assert pool.size == 1  # counted while the server may still hold it
        deadline = time.monotonic() + 10
        while pool.dying and time.monotonic() < deadline:
            os.read(wake_r, 64)
            while connector.results:
                pool.reaper_done(connector.results.popleft())
            pool.retry_reaps(time.monotonic())
        assert pool.size == 0
        assert pool.metrics.dropped_confirmed == 1
        assert (
            reaper.present(connector.sides["default"], cfg.connect_args(), [1]) == set()
        )
    finally:
        thread.join(10)
        connector.shutdown()
        os.close(wake_r)
        os.close(wake_w)


@pytest.mark.timeout(90)
def test_request_to_an_unanswering_server_fails_fast_after_its_prompted_connect(
    make_broker,
):
    # A listener that never says hello: each connect hangs for connect_timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    try:
        b = make_broker(
            dsn=f"mysql://broker@127.0.0.1:{port}/broker?connect_timeout=3",
            min_size=0,
            queue_timeout=20,
        )
        c = b.client(timeout=30)
        with pytest.raises(client.OperationalError):
            c.query("SELECT 1")  # waits out the first connect: nothing known yet
        start = time.monotonic()
        with pytest.raises(client.OperationalError, match="cannot reach MySQL"):
            c.query("SELECT 1")
        elapsed = time.monotonic() - start
        assert elapsed < 5  # not queue_timeout (20 s) or the call's 30 s
    finally:
        silent.close()
