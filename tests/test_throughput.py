"""Throughput options: pipelined reads on a busy MySQL connection, busy polling."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import client


def _run_later(delay: float, fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Run fn in a thread after delay; the dict gets its result or error, and time."""
    out: dict = {}

    def run() -> None:
        time.sleep(delay)
        began = time.monotonic()
        try:
            out["value"] = fn(*args, **kwargs)
        except client.Error as err:
            out["error"] = err
        out["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _pipelined(c: client.Client) -> int:
    return c.stats()["pools"]["default"]["pipelined"]


@pytest.mark.timeout(120)
def test_every_piped_reply_reaches_its_own_caller(make_broker):
    b = make_broker(max_size=2, min_size=2, pipeline_depth=4, queue_timeout=30)
    c = b.client()
    c.query("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
    c.executemany("INSERT INTO t VALUES (%s, %s)", [(i, f"v{i}") for i in range(50)])
    wrong: list = []

    def reader(n: int) -> None:
        for i in range(150):
            key = (n * 7 + i) % 50
            rows = c.query("SELECT id, v, %s FROM t WHERE id = %s", (f"{n}:{i}", key))
            if rows.rows != [(key, f"v{key}", f"{n}:{i}")]:
                wrong.append((n, i, rows.rows))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert _pipelined(c) > 0  # the load did share connections
    assert c.stats()["pools"]["default"]["size"] <= 2


@pytest.mark.timeout(120)
def test_writes_and_session_statements_are_never_piped(make_broker):
    b = make_broker(max_size=1, pipeline_depth=4, queue_timeout=30)
    c = b.client()
    c.query("CREATE TABLE w (id INT AUTO_INCREMENT PRIMARY KEY, n INT)")

    def writer(n: int) -> None:
        for i in range(40):
            c.query("INSERT INTO w (n) VALUES (%s)", (n * 100 + i,))
            c.query("SELECT @x := %s", (i,))  # a user variable: never shared

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.query("SELECT COUNT(*), COUNT(DISTINCT n) FROM w").rows == [(240, 240)]
    assert _pipelined(c) == 0


def test_off_by_default(make_broker):
    b = make_broker(max_size=1, queue_timeout=30)
    c = b.client()
    threads = [
        _run_later(0, c.query, "SELECT SLEEP(0.05)")[0],
        *(_run_later(0.01, c.query, "SELECT 1")[0] for _ in range(4)),
    ]
    for t in threads:
        t.join()
    assert _pipelined(c) == 0


def test_a_read_is_not_piped_behind_one_that_has_run_a_while(make_broker):
    b = make_broker(max_size=2, min_size=2, pipeline_depth=4)
    c = b.client()
    slow, slow_out = _run_later(0, c.query, "SELECT SLEEP(1.5)")
    short, _ = _run_later(0, c.query, "SELECT SLEEP(0.5)")
    # Both connections are busy when these come: they wait for the first to free
    # (the SLEEP(0.5)), not behind whichever statement runs.
    fast = [_run_later(0.3, c.query, "SELECT %s", (i,)) for i in range(6)]
    for thread, _ in fast:
        thread.join()
    slow.join()
    short.join()
    for i, (_, out) in enumerate(fast):
        assert out["value"].scalar() == i
        assert out["seconds"] < 1.0  # not stuck behind the SLEEP(1.5)
    assert slow_out["value"].scalar() == 0


def test_a_piped_read_times_out_at_its_own_deadline(make_broker):
    b = make_broker(max_size=1, pipeline_depth=4)
    c = b.client()
    # The first keeps the only connection busy, so the next two queue; when
    # it ends, the SLEEP(1.5) is sent and the short read is piped behind it.
    first, _ = _run_later(0, c.query, "SELECT SLEEP(0.4)")
    slow, slow_out = _run_later(0.1, c.query, "SELECT SLEEP(1.5), 'slow'")
    short, short_out = _run_later(0.2, c.query, "SELECT 'short'", timeout=0.8)
    for t in (first, slow, short):
        t.join()
    assert isinstance(short_out.get("error"), client.QueryTimeout), short_out
    assert "waited behind another statement" in short_out["error"].msg
    assert short_out["seconds"] < 1.4  # answered at its deadline, not after the slow
    assert slow_out["value"].rows == [(0, "slow")]
    assert _pipelined(c) >= 1
    assert c.query("SELECT 'after'").scalar() == "after"  # the connection serves on


def test_piped_reads_fail_cleanly_when_their_connection_dies(make_broker, direct):
    b = make_broker(max_size=1, pipeline_depth=4)
    c = b.client()
    conn_id = c.query("SELECT CONNECTION_ID()").scalar()
    first, _ = _run_later(0, c.query, "SELECT SLEEP(0.4)")
    slow, slow_out = _run_later(0.1, c.query, "SELECT SLEEP(5)")
    piped, piped_out = _run_later(0.2, c.query, "SELECT 'piped'")
    first.join()
    time.sleep(0.3)
    assert _pipelined(c) >= 1
    with direct.cursor() as cur:
        cur.execute(f"KILL CONNECTION {int(conn_id)}")
    slow.join()
    piped.join()
    for out in (slow_out, piped_out):
        assert isinstance(out.get("error"), client.OperationalError), out
        assert "Lost connection" in out["error"].msg
        assert out["seconds"] < 3.0
    assert c.query("SELECT 'again'").scalar() == "again"  # a new connection


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_serves_and_sleeps_when_traffic_stops(
    make_broker, mysql_dsn, password_file
):
    b = make_broker(max_size=2, pipeline_depth=4, broker={"busy_poll_us": 2000})
    c = b.client()
    assert c.stats()["busy_poll_us"] == 2000
    values = [c.query("SELECT %s", (i,)).scalar() for i in range(300)]
    assert values == list(range(300))
    time.sleep(0.2)
    before = _cpu_seconds(b.proc.pid)
    time.sleep(1.0)  # no traffic: the spin ends 2 ms after the last event
    assert _cpu_seconds(b.proc.pid) - before < 0.05
    b.write_config(mysql_dsn, str(password_file), {"max_size": 2}, {})
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while c.stats()["busy_poll_us"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.stats()["busy_poll_us"] == 0  # live on reload
    assert c.stats()["pools"]["default"]["pipeline_depth"] == 1
