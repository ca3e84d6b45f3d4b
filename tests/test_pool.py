"""Pool limits and queueing, counted on the real server."""

import os
import threading
import time

import pytest
from broker_fixtures import broker_connections

import client


@pytest.mark.timeout(120)
def test_pool_cap_holds_with_32_forked_clients(make_broker, direct):
    b = make_broker(max_size=4, queue_timeout=30)
    c = b.client()
    assert c.query("SELECT 1").scalar() == 1
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], broker_connections(direct))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    pids = []
    for n in range(32):
        pid = os.fork()
        if pid == 0:
            try:
                ok = all(
                    c.query("SELECT %s, SLEEP(0.002)", (f"{n}-{i}",)).scalar()
                    == f"{n}-{i}"
                    for i in range(50)
                )
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    stop.set()
    watcher.join()
    assert codes == [0] * 32
    assert 1 <= peak[0] <= 4
    stats = c.stats()["pools"]["default"]
    assert stats["size"] <= 4
    assert stats["served"] >= 32 * 50


@pytest.mark.timeout(60)
def test_pool_timeout_when_the_only_connection_is_busy(make_broker):
    b = make_broker(max_size=1, queue_timeout=0.5)
    holder = b.client()
    waiter = b.client()
    result = []
    t = threading.Thread(
        target=lambda: result.append(holder.query("SELECT SLEEP(2)").scalar())
    )
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    with pytest.raises(client.PoolTimeout, match="queue_timeout"):
        waiter.query("SELECT 1")
    waited = time.monotonic() - start
    assert 0.4 <= waited < 2.5
    t.join()
    assert result == [0]
    assert waiter.query("SELECT 1").scalar() == 1
    assert waiter.stats()["pools"]["default"]["pool_timeouts"] == 1
