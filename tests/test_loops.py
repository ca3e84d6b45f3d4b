"""`[broker] loops = 2`: two I/O loop processes behind one endpoint, one cap."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from broker_fixtures import broker_connections

import client


def _running(direct, text: str) -> bool:
    with direct.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
            (f"%{text}%",),
        )
        return cur.fetchone()[0] > 1  # this probe's own statement matches too


def _loops_used(stats: dict) -> int:
    return sum(1 for loop in stats["loops"] if loop["requests"])


@pytest.mark.timeout(120)
def test_two_loops_keep_one_cap_and_add_up_in_status(make_broker, direct):
    b = make_broker(broker={"loops": 2}, max_size=4, queue_timeout=30)
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], broker_connections(direct))
            time.sleep(0.02)

    wrong: list = []
    done = [0]
    lock = threading.Lock()

    def work(i: int) -> None:
        with b.client() as c:
            for n in range(15):
                if c.query("SELECT %s, SLEEP(0.01)", (i * 100 + n,)).rows[0][0] != (
                    i * 100 + n
                ):
                    wrong.append((i, n))
                with lock:
                    done[0] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert wrong == []
    assert done[0] == 24 * 15
    assert 1 <= peak[0] <= 4

    with b.client() as c:
        deadline = time.monotonic() + 5
        while True:  # a loop's figures reach the others within an upkeep pass
            stats = c.stats()
            pool = stats["pools"]["default"]
            if pool["served"] >= done[0] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert [loop["loop"] for loop in stats["loops"]] == [0, 1]
    assert pool["max_size"] == 4
    assert pool["served"] >= done[0]
    assert _loops_used(stats) == 2  # 24 clients did not all land on one loop
    assert stats["pid"] == b.proc.pid


@pytest.mark.timeout(120)
def test_two_loops_pin_stream_cancel_reload_and_drain(
    make_broker, direct, mysql_dsn, password_file
):
    b = make_broker(broker={"loops": 2}, max_size=2, queue_timeout=10)
    with b.client() as c:
        with c.transaction() as tx:
            tx.query("CREATE TABLE t (id INT PRIMARY KEY)")
            tx.query("INSERT INTO t VALUES (1), (2)")
        assert c.query("SELECT COUNT(*) FROM t").scalar() == 2
        with c.session() as s:
            s.query("SET @x = 41")
            assert s.query("SELECT @x + 1").scalar() == 42
        assert sum(1 for _ in c.stream("SELECT * FROM seq_1_to_5000")) == 5000
        with pytest.raises(client.QueryTimeout):
            c.query("SELECT SLEEP(5)", timeout=0.5)
        assert c.query("SELECT 7").scalar() == 7  # the connection survived the KILL

    b.write_config(
        mysql_dsn,
        str(password_file),
        {"max_size": 4, "queue_timeout": 10},
        {"loops": 2},
    )
    b.signal(signal.SIGHUP)
    with b.client() as c:
        deadline = time.monotonic() + 10
        while c.stats()["pools"]["default"]["max_size"] != 4:
            assert time.monotonic() < deadline, "reload did not reach both loops"
            time.sleep(0.2)

        # SIGTERM drains: a running statement finishes, then the broker exits 0.
        result: list = []
        t = threading.Thread(
            target=lambda: result.append(c.query("SELECT SLEEP(1), 5").rows[0][1])
        )
        t.start()
        deadline = time.monotonic() + 10
        while not _running(direct, "SLEEP(1), 5"):  # on the server: now drain
            assert time.monotonic() < deadline, "the statement never started"
            time.sleep(0.02)
        b.signal(signal.SIGTERM)
        t.join()
    assert result == [5]
    assert b.proc.wait(30) == 0
    assert broker_connections(direct) == 0 or _wait_gone(direct)


def _wait_gone(direct) -> bool:
    deadline = time.monotonic() + 5
    while broker_connections(direct):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_loops_above_a_pools_max_size_is_a_config_error(tmp_path):
    from broker.config import ConfigError, load

    path = tmp_path / "b.toml"
    path.write_text(
        '[broker]\nloops = 3\n[pools.default]\ndsn = "mysql://u@h/db"\nmax_size = 2\n'
    )
    with pytest.raises(ConfigError, match=r"pools.default.max_size.*broker.loops"):
        load(str(path))


def test_loops_with_read_your_writes_on_a_replica_pool_is_a_config_error(tmp_path):
    from broker.config import ConfigError, load

    path = tmp_path / "b.toml"
    path.write_text(
        '[broker]\nloops = 2\n[pools.default]\ndsn = "mysql://u@h/db"\n'
        'replicas = ["mysql://u@r/db"]\n'
    )
    with pytest.raises(ConfigError, match=r"read_your_writes.*broker.loops = 1"):
        load(str(path))
    path.write_text(path.read_text() + 'read_your_writes = "off"\n')
    assert load(str(path)).broker.loops == 2
