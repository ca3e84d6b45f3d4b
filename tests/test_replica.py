"""Replica reads over real MariaDB GTID replication: lag, failures, read-your-writes.

The module starts its own pair of servers (a primary with a binary log and a
replica of it, `CHANGE MASTER TO ... MASTER_USE_GTID = slave_pos`), so the rest
of the suite does not pay for them. Each test starts its own broker on them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_fixtures import ROOT, BrokerProcess, stop_all

import client
import client.aio
from broker.sandbox import PRIMARY_OPTIONS, REPLICA_OPTIONS, Sandbox

DATABASE = "replica_test"
CHECK = 0.2  # replica_check_interval in these tests: fast, still a few checks/s
RETURN_CHECKS = 3  # broker.replica.RETURN_AFTER

pytestmark = pytest.mark.timeout(90)


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _run(server: Sandbox, *sql: str) -> list[tuple]:
    conn = server.admin()
    try:
        with conn.cursor() as cur:
            rows: list[tuple] = []
            for statement in sql:
                cur.execute(statement)
                rows = list(cur.fetchall())
            return rows
    finally:
        conn.close()


def _caught_up(replica: Sandbox, primary: Sandbox) -> bool:
    want = _run(primary, "SELECT @@gtid_binlog_pos")[0][0]
    return _run(replica, f"SELECT MASTER_GTID_WAIT('{want}', 5)")[0][0] == 0


class Pair:
    """A primary and its replica, both private sandboxes."""

    def __init__(self, base: Path, template: Path) -> None:
        self.primary = Sandbox(
            base / "primary", template=template, options=PRIMARY_OPTIONS
        )
        self.replica = Sandbox(
            base / "replica", template=template, options=REPLICA_OPTIONS
        )

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        self.replica.replicate(self.primary)
        _run(self.primary, f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        assert _caught_up(self.replica, self.primary)

    def delay(self, seconds: int) -> None:
        """Set MASTER_DELAY on the replica (after letting it catch up)."""
        assert _caught_up(self.replica, self.primary)
        self.replica.replicate(self.primary, delay=seconds)

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, mysql_template: Path
) -> Iterator[Pair]:
    """A running primary and replica for this module's tests."""
    pair = Pair(tmp_path_factory.mktemp("replication"), mysql_template)
    pair.start()
    yield pair
    pair.stop()


@pytest.fixture
def table(pair: Pair) -> Iterator[str]:
    """A fresh table on the primary, already on the replica; replication healthy."""
    pair.primary.start()
    pair.replica.start()
    _run(pair.replica, "START SLAVE")
    pair.replica.replicate(pair.primary)
    _run(
        pair.primary,
        f"DROP TABLE IF EXISTS {DATABASE}.t",
        f"CREATE TABLE {DATABASE}.t (id INT PRIMARY KEY, v INT)",
    )
    assert _caught_up(pair.replica, pair.primary)
    yield f"{DATABASE}.t"
    pair.replica.replicate(pair.primary)


@pytest.fixture
def start_broker(
    request: pytest.FixtureRequest, pair: Pair, tmp_path: Path
) -> Iterator[Callable[..., BrokerProcess]]:
    """Return a factory: start_broker(**pool_keys) -> a broker with the replica."""
    started: list[BrokerProcess] = []
    secret = tmp_path / "password"
    secret.write_text(pair.primary.password)

    def start(**pool: Any) -> BrokerProcess:
        workdir = Path(tempfile.mkdtemp(prefix="bkr-", dir="/tmp"))
        keys = {
            "replicas": [pair.replica.dsn(user="broker", database=DATABASE)],
            "replica_check_interval": CHECK,
            "max_size": 4,
            **pool,
        }
        broker_keys = keys.pop("broker", {})
        proc = BrokerProcess(
            workdir,
            pair.primary.dsn(user="broker", database=DATABASE),
            str(secret),
            keys,
            broker_keys,
        )
        started.append(proc)
        proc.start()
        return proc

    yield start
    stop_all(request, started)


def _replica_stats(c: client.Client) -> dict:
    return c.stats()["pools"]["default"]["replicas"][0]


def _serving(c: client.Client) -> bool:
    return _replica_stats(c)["state"] == "serving"


def _server_id(c: client.Client, **kw: Any) -> tuple[int, str]:
    r = c.query("SELECT @@server_id", **kw)
    return r.scalar(), r.served_by


def test_replica_read_is_served_by_the_replica_and_writes_by_the_primary(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker()
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        address = f"127.0.0.1:{pair.replica.port}"
        assert _server_id(c, replica=True) == (2, f"replica {address}")
        assert _server_id(c) == (1, "primary")
        w = c.query(f"INSERT INTO {table} VALUES (1, 10)", replica=True)
        assert (w.rowcount, w.served_by) == (1, "primary")  # a write: never a replica
        with c.transaction() as tx:
            assert tx.query("SELECT @@server_id").scalar() == 1
        locking = c.query(
            f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE", replica=True
        )
        assert locking.served_by == "primary"
        with client.Client(endpoint=broker.endpoint, replica=True) as rc:
            assert _server_id(rc) == (2, f"replica {address}")
            assert _server_id(rc, replica=False) == (1, "primary")
            rows = rc.stream("SELECT seq FROM seq_1_to_5000", chunk_rows=1000)
            assert sum(row[0] for row in rows) == 5000 * 5001 // 2
            assert rows.served_by == f"replica {address}"
        assert asyncio.run(_aio_reads(broker.endpoint)) == [
            (2, f"replica {address}"),
            (1, "primary"),
            (15, f"replica {address}"),
        ]
        stats = _replica_stats(c)
        assert stats["reads"] >= 5
        assert stats["connections"] >= 1


async def _aio_reads(endpoint: str) -> list[tuple[int, str]]:
    async with client.aio.Client(endpoint=endpoint, replica=True) as ac:
        on_replica = await ac.query("SELECT @@server_id")
        on_primary = await ac.query("SELECT @@server_id", replica=False)
        stream = ac.stream("SELECT seq FROM seq_1_to_5")
        total = sum([row[0] async for row in stream])
        return [
            (on_replica.scalar(), on_replica.served_by),
            (on_primary.scalar(), on_primary.served_by),
            (total, stream.served_by),
        ]


def test_stopped_replication_moves_reads_to_the_primary_and_back(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker()
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        assert _server_id(c, replica=True)[0] == 2
        _run(pair.replica, "STOP SLAVE")
        stopped = time.monotonic()
        _wait(lambda: _server_id(c, replica=True)[0] == 1, 10, "reads on the primary")
        # One interval and one check is 0.4 s here; allow for a loaded machine.
        assert time.monotonic() - stopped < 3.0
        assert [_server_id(c, replica=True) for _ in range(20)] == [(1, "primary")] * 20
        stats = _replica_stats(c)
        assert stats["state"] == "lagging"
        assert "replication not running" in stats["why"]
        assert stats["fallbacks"] >= 20
        _run(pair.replica, "START SLAVE")
        started = time.monotonic()
        _wait(lambda: _server_id(c, replica=True)[0] == 2, 10, "reads back on it")
        assert time.monotonic() - started < 5.0  # RETURN_AFTER good checks: 0.6 s


def _insert_then_read(
    writer: client.Client, reader: client.Client, table: str, n: int
) -> tuple[int, set[str]]:
    misses, served = 0, set()
    for i in range(n):
        writer.query(f"INSERT INTO {table} VALUES (%s, %s)", (i, i))
        r = reader.query(f"SELECT v FROM {table} WHERE id = %s", (i,), replica=True)
        misses += r.rows != [(i,)]
        served.add(r.served_by)
    return misses, served


def test_read_your_writes_process_never_misses_a_delayed_write(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    pair.delay(2)
    broker = start_broker(read_your_writes="process", replica_wait_timeout=0.02)
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        assert _insert_then_read(c, c, table, 200) == (0, {"primary"})
        stats = _replica_stats(c)
        assert stats["ryw_waits"] >= 200
        assert stats["ryw_timeouts"] >= 200
        # Once the replica has applied the process's writes, it serves again.
        _wait(lambda: _server_id(c, replica=True)[0] == 2, 10, "replica caught up")
        assert c.stats()["pools"]["default"]["gtids_learned"] >= 200


def _host_writer(endpoint: str, table: str, pipe: Any) -> None:
    with client.Client(endpoint=endpoint, timeout=10) as w:
        while (i := pipe.recv()) is not None:
            w.query(f"INSERT INTO {table} VALUES (%s, %s)", (i, i))
            pipe.send(i)


def test_read_your_writes_host_sees_another_process_write(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    pair.delay(2)
    broker = start_broker(read_your_writes="host", replica_wait_timeout=0.02)
    ours, theirs = multiprocessing.Pipe()
    writer = multiprocessing.get_context("fork").Process(
        target=_host_writer, args=(broker.endpoint, table, theirs)
    )
    writer.start()
    try:
        with broker.client() as c:
            _wait(lambda: _serving(c), 10, "replica serving")
            misses = 0
            for i in range(200):
                ours.send(i)
                assert ours.poll(10), "the writer process did not answer"
                assert ours.recv() == i
                r = c.query(f"SELECT v FROM {table} WHERE id = %s", (i,), replica=True)
                misses += r.rows != [(i,)]
            assert misses == 0
            assert _replica_stats(c)["ryw_waits"] >= 200
    finally:
        ours.send(None)
        writer.join(10)
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0


def test_read_your_writes_off_may_miss_a_delayed_write(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    pair.delay(2)
    broker = start_broker(read_your_writes="off")
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        misses, served = _insert_then_read(c, c, table, 10)
        assert misses > 0  # the replica really is behind: the other tests mean it
        assert served == {f"replica 127.0.0.1:{pair.replica.port}"}
        assert _replica_stats(c)["ryw_waits"] == 0


def test_read_your_writes_waits_for_a_replica_that_catches_up(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker(read_your_writes="process", replica_wait_timeout=2.0)
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        misses, served = _insert_then_read(c, c, table, 50)
        assert misses == 0
        assert f"replica 127.0.0.1:{pair.replica.port}" in served
        assert _replica_stats(c)["ryw_waits"] >= 1


def _read_loop(c: client.Client, seconds: float) -> list[tuple[float, Any]]:
    """Read with replica=True for a while; return (time, server_id or error)."""
    out: list[tuple[float, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.monotonic()
        try:
            out.append((began, _server_id(c, replica=True, timeout=5)[0]))
        except client.Error as err:
            out.append((began, err))
        time.sleep(0.02)
    return out


def test_killed_replica_is_skipped_and_serves_again_when_back(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker(min_size=2)
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        assert _server_id(c, replica=True)[0] == 2
        pair.replica.kill()
        killed = time.monotonic()
        reads = _read_loop(c, 2.0)
        first_check = killed + CHECK + 0.5  # the next check, and slack to apply it
        late = [v for t, v in reads if t > first_check]
        assert late
        assert all(v == 1 for v in late), late
        assert _replica_stats(c)["state"] == "down"
        pair.replica.start()
        _wait(lambda: _server_id(c, replica=True)[0] == 2, 20, "serving again")


def test_killed_primary_fails_writes_and_replica_reads_keep_working(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker(min_size=2)
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        c.query(f"INSERT INTO {table} VALUES (1, 1)")
        assert _caught_up(pair.replica, pair.primary)
        pair.primary.kill()
        try:
            began = time.monotonic()
            with pytest.raises(client.OperationalError):
                c.query(f"INSERT INTO {table} VALUES (2, 2)", timeout=5)
            assert time.monotonic() - began < 5.0
            reads = _read_loop(c, 2.0)
            assert [v for _, v in reads] == [2] * len(reads), reads
            r = c.query(f"SELECT v FROM {table} WHERE id = 1", replica=True)
            assert r.rows == [(1,)]
            assert r.served_by.startswith("replica")
        finally:
            pair.primary.start()
        _wait(
            lambda: _write_works(c, f"INSERT INTO {table} VALUES (3, 3)"),
            20,
            "writes after the primary is back",
        )


def _write_works(c: client.Client, sql: str) -> bool:
    try:
        c.query(sql, timeout=2)
    except client.OperationalError:
        return False
    return True


def test_statement_running_on_a_replica_that_turns_ineligible_completes(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker()
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        out: dict[str, Any] = {}

        def slow() -> None:
            out["r"] = c.query("SELECT SLEEP(2), @@server_id", replica=True)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        _run(pair.replica, "STOP SLAVE")
        _wait(lambda: _replica_stats(c)["state"] == "lagging", 5, "lagging")
        thread.join(10)
        r = out["r"]
        assert (r.rows, r.served_by) == (
            [(0, 2)],
            f"replica 127.0.0.1:{pair.replica.port}",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_and_metrics_show_each_replica(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    broker = start_broker(broker={"metrics_address": address})
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        c.query("SELECT 1", replica=True)
    status = [sys.executable, "-m", "broker", "status", "--endpoint", broker.endpoint]
    env = {"PYTHONPATH": str(ROOT)}
    text = subprocess.run(status, capture_output=True, text=True, env=env, cwd=ROOT)
    line = f"replica 127.0.0.1:{pair.replica.port}  serving"
    assert line in text.stdout, text.stdout + text.stderr
    raw = subprocess.run(
        [*status, "--json"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    replica = json.loads(raw.stdout)["pools"]["default"]["replicas"][0]
    assert replica["state"] == "serving"
    assert replica["reads"] >= 1
    assert {"lag_s", "connections", "fallbacks", "ryw_waits"} <= set(replica)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as f:
            return f.read().decode()

    key = f'pool="default",replica="127.0.0.1:{pair.replica.port}"'
    serving = f'broker_replica_state{{{key},state="serving"}} 1.0'
    # The exporter takes a fresh snapshot every upkeep pass (0.5 s).
    metrics = _wait(lambda: serving in (m := scrape()) and m, 5, "replica metrics")
    assert f'broker_replica_state{{{key},state="serving"}} 1.0' in metrics
    assert f"broker_replica_connections{{{key}}}" in metrics


def test_replica_read_past_its_deadline_is_killed_there_and_the_replica_serves_on(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str
) -> None:
    broker = start_broker(max_size=1)
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        began = time.monotonic()
        with pytest.raises(client.QueryTimeout, match="KILL QUERY"):
            c.query("SELECT SLEEP(10)", replica=True, timeout=1)
        assert time.monotonic() - began < 5.0
        # The one replica connection was cancelled, not lost: it serves the next.
        assert _server_id(c, replica=True)[0] == 2
        stats = c.stats()["pools"]["default"]
        assert stats["replicas"][0]["lost"] == 0
        sleeping = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE INFO = 'SELECT SLEEP(10)'"
        )
        _wait(lambda: _run(pair.replica, sleeping) == [(0,)], 5, "KILL on the replica")


def test_reload_applies_replica_keys_live_and_keeps_the_replica_list(
    start_broker: Callable[..., BrokerProcess], pair: Pair, table: str, tmp_path: Path
) -> None:
    broker = start_broker(read_your_writes="off")
    with broker.client() as c:
        _wait(lambda: _serving(c), 10, "replica serving")
        pool = {
            "replicas": [
                pair.replica.dsn(user="broker", database=DATABASE),
                "mysql://broker@127.0.0.1:9/replica_test",
            ],
            "replica_check_interval": CHECK,
            "read_your_writes": "host",
        }
        dsn = pair.primary.dsn(user="broker", database=DATABASE)
        broker.write_config(dsn, str(tmp_path / "password"), pool, {})
        broker.signal(signal.SIGHUP)
        _wait(
            lambda: c.stats()["pools"]["default"]["read_your_writes"] == "host",
            10,
            "read_your_writes reloaded",
        )
        assert len(c.stats()["pools"]["default"]["replicas"]) == 1
        assert "replicas changed but needs a restart" in broker.log()
        assert _server_id(c, replica=True)[0] == 2
