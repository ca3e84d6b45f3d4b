"""client.aio: awaitable queries, transactions, streams; concurrency; cancellation."""

import asyncio
import os
import threading
import time

import pytest
from broker_fixtures import start_on_tcp

import client
from client import aio
from client.aio_links import ZmqLink


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def table(db):
    db.query("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20) UNIQUE)")
    return "t"


def test_query_executemany_ping_stats(broker, table):
    async def main():
        async with aio.Client(endpoint=broker.endpoint, timeout=10) as c:
            r = await c.query("SELECT %s, %s", ("a", 1))
            assert r.rows == [("a", 1)]
            assert r.columns == ("a", "1")
            many = await c.executemany(
                "INSERT INTO t (v) VALUES (%s)", [(f"v{i}",) for i in range(20)]
            )
            assert many.rowcount == 20
            r = await c.query("SELECT COUNT(*) FROM t")
            assert r.scalar() == 20
            assert 0 < await c.ping() < 5
            stats = await c.stats()
            assert stats["pools"]["default"]["max_size"] == 4

    run(main())


def test_module_functions_use_the_default_client(broker, table, monkeypatch):
    monkeypatch.setenv("BROKER_ENDPOINT", broker.endpoint)
    monkeypatch.setattr(aio, "_default", None)

    async def main():
        await aio.executemany("INSERT INTO t (v) VALUES (%s)", [("a",), ("b",)])
        async with aio.transaction() as tx:
            await tx.query("INSERT INTO t (v) VALUES ('c')")
        async with aio.session() as s:
            await s.query("SET @x = 7")
            assert (await s.query("SELECT @x")).scalar() == 7
        rows = [row async for row in aio.stream("SELECT v FROM t ORDER BY v")]
        assert rows == [("a",), ("b",), ("c",)]
        assert (await aio.query("SELECT COUNT(*) FROM t")).scalar() == 3

    async def again():
        # A second asyncio.run: a new connection on the new loop; the finished
        # loop's connection is closed on the way.
        assert (await aio.query("SELECT 5")).scalar() == 5
        assert len(aio.default_client()._drivers) == 1
        await aio.default_client().close()

    run(main())
    assert aio.default_client().endpoint == broker.endpoint
    run(again())


def test_200_tasks_on_one_loop_share_a_pool_of_4(make_broker):
    b = make_broker(max_size=4, queue_timeout=30)
    tasks = 200

    async def one(c, n):
        r = await c.query("SELECT %s, SLEEP(0.01)", (f"task-{n}",))
        return r.rows[0][0]

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=30) as c:
            start = time.monotonic()
            got = await asyncio.gather(*(one(c, n) for n in range(tasks)))
            elapsed = time.monotonic() - start
            assert got == [f"task-{n}" for n in range(tasks)]
            assert len(c._drivers) == 1  # one connection carried them all
            stats = (await c.stats())["pools"]["default"]
            return elapsed, stats

    elapsed, stats = run(main())
    assert stats["size"] <= 4
    assert stats["served"] >= tasks
    # 200 sleeps of 10 ms on 4 connections: about 0.5 s when they overlap, 2 s not.
    assert elapsed < 1.8


def test_concurrent_transactions_are_isolated(make_broker, table):
    b = make_broker(max_size=4, queue_timeout=30, max_pins_per_client=0)

    async def one(c, n):
        async with c.transaction() as tx:
            await tx.query("INSERT INTO t (v) VALUES (%s)", (f"tx{n}",))
            mine = await tx.query("SELECT v FROM t WHERE v = %s", (f"tx{n}",))
            if n % 2:
                raise ZeroDivisionError  # rolled back
            return mine.rows

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=30) as c:
            results = await asyncio.gather(
                *(one(c, n) for n in range(40)), return_exceptions=True
            )
            for n, result in enumerate(results):
                if n % 2:
                    assert isinstance(result, ZeroDivisionError)
                else:
                    assert result == [(f"tx{n}",)]
            rows = await c.query("SELECT v FROM t ORDER BY id")
            assert sorted(v for (v,) in rows) == sorted(
                f"tx{n}" for n in range(0, 40, 2)
            )
            assert (await c.stats())["pins"] == []

    run(main())


def test_errors_are_the_client_classes(broker, table):
    async def main():
        async with aio.Client(endpoint=broker.endpoint, timeout=10) as c:
            with pytest.raises(client.ProgrammingError) as info:
                await c.query("SELECT * FROM missing")
            assert info.value.errno == 1146
            await c.query("INSERT INTO t (v) VALUES ('x')")
            with pytest.raises(client.IntegrityError) as info:
                await c.query("INSERT INTO t (v) VALUES ('x')")
            assert info.value.errno == 1062
            with pytest.raises(client.ProgrammingError):
                await c.query("SELECT %s, %s", (1,))
            async with aio.Client(endpoint=broker.endpoint, pool="nope") as other:
                with pytest.raises(client.ProgrammingError, match="unknown pool"):
                    await other.query("SELECT 1")

    run(main())


def test_timeout_cancels_the_statement_on_the_server(make_broker):
    b = make_broker(max_size=1, queue_timeout=5)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=10) as c:
            start = time.monotonic()
            with pytest.raises(client.QueryTimeout):
                await c.query("SELECT SLEEP(10)", timeout=0.5)
            assert time.monotonic() - start < 2
            assert (await c.query("SELECT 1")).scalar() == 1

    run(main())


def test_cancelling_the_task_kills_the_query(make_broker, direct):
    b = make_broker(max_size=1, queue_timeout=5)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=30) as c:
            task = asyncio.create_task(c.query("SELECT SLEEP(20) AS marker"))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            start = time.monotonic()
            # Pool of one: this waits for the cancelled statement's connection.
            assert (await c.query("SELECT 2")).scalar() == 2
            waited = time.monotonic() - start
            stats = (await c.stats())["pools"]["default"]
            return waited, stats

    waited, stats = run(main())
    assert waited < 3
    assert stats["query_timeouts"] >= 1
    with direct.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.processlist"
            " WHERE info LIKE 'SELECT SLEEP(20)%'"
        )
        assert cur.fetchone() == (0,)


def test_asyncio_timeout_cancels_inside_a_transaction(make_broker, table):
    b = make_broker(max_size=1, queue_timeout=5)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=30) as c:

            async def slow_transaction():
                async with asyncio.timeout(0.5), c.transaction() as tx:
                    await tx.query("INSERT INTO t (v) VALUES ('gone')")
                    await tx.query("SELECT SLEEP(20)")

            with pytest.raises(TimeoutError):
                await slow_transaction()
            start = time.monotonic()
            assert (await c.query("SELECT COUNT(*) FROM t")).scalar() == 0
            assert time.monotonic() - start < 3
            assert (await c.stats())["pins"] == []

    run(main())


def test_cancelled_begin_does_not_leak_its_pin(make_broker):
    b = make_broker(max_size=2, queue_timeout=5)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=30) as c:
            for _ in range(10):
                tx = c.transaction()
                task = asyncio.create_task(tx.begin())
                await asyncio.sleep(0)  # sent, not yet answered
                await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            # Late replies arrive and their pins are freed; a loaded machine
            # may take a while, a leak never ends.
            deadline = time.monotonic() + 5
            while (pins := (await c.stats())["pins"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return pins

    assert run(main()) == []


def test_stream_rows_early_close_and_errors(make_broker):
    b = make_broker(max_size=1, queue_timeout=10)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=10) as c:
            stream = c.stream(
                "SELECT seq, REPEAT('x', 5) FROM seq_1_to_5000", chunk_rows=100
            )
            rows = [row async for row in stream]
            assert len(rows) == 5000
            assert rows[0] == (1, "xxxxx")
            assert rows[-1] == (5000, "xxxxx")
            assert stream.description[0][0] == "seq"

            async with c.stream("SELECT seq FROM seq_1_to_100000", chunk_rows=10) as s:
                first = [await s.__anext__() for _ in range(3)]
                assert first == [(1,), (2,), (3,)]
                assert [p["kind"] for p in (await c.stats())["pins"]] == ["stream"]
            # Pool of one: the closed stream gave its connection back.
            assert (await c.query("SELECT 3")).scalar() == 3

            bad = c.stream(
                "SELECT seq, IF(seq = 50, (SELECT 1 UNION SELECT 2), seq)"
                " FROM seq_1_to_100",
                chunk_rows=10,
            )
            seen = []

            async def read_all():
                async for row in bad:
                    seen.append(row)

            with pytest.raises(client.DatabaseError) as info:
                await read_all()
            assert info.value.errno == 1242  # subquery returns more than 1 row
            assert len(seen) == 49
            assert (await c.query("SELECT 4")).scalar() == 4

    run(main())


def test_no_broker_is_broker_unavailable():
    async def main():
        c = aio.Client(endpoint="ipc:///tmp/no-such-broker-here.sock", timeout=0.2)
        start = time.monotonic()
        with pytest.raises(
            client.BrokerUnavailable, match=r"cannot reach a broker.*not sent"
        ):
            await c.query("SELECT 1")
        return time.monotonic() - start

    assert run(main()) < 4


def test_broker_restart_fails_waiting_requests_then_recovers(make_broker):
    b = make_broker(max_size=1)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=20) as c:
            assert (await c.query("SELECT 1")).scalar() == 1
            task = asyncio.create_task(c.query("SELECT SLEEP(10)"))
            await asyncio.sleep(0.3)
            b.kill()
            with pytest.raises(client.BrokerUnavailable):
                await task
            b.start()
            assert (await c.query("SELECT 2")).scalar() == 2

    run(main())


def test_tcp_endpoint_uses_zmq_asyncio(make_broker, mysql_dsn, password_file):
    b = start_on_tcp(make_broker, mysql_dsn, password_file, {"max_size": 2})

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=10) as c:
            got = await asyncio.gather(*(c.query("SELECT %s", (n,)) for n in range(50)))
            assert [r.scalar() for r in got] == list(range(50))
            assert isinstance(next(iter(c._drivers.values())).link, ZmqLink)
            rows = [
                r async for r in c.stream("SELECT seq FROM seq_1_to_300", chunk_rows=50)
            ]
            assert len(rows) == 300
            task = asyncio.create_task(c.query("SELECT SLEEP(20)"))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert (await c.query("SELECT 7")).scalar() == 7

    run(main())


def test_client_made_before_fork_works_in_the_child(broker):
    c = aio.Client(endpoint=broker.endpoint, timeout=10)

    async def ask(n):
        return (await c.query("SELECT %s", (n,))).scalar()

    assert run(ask(1)) == 1
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if asyncio.run(ask(2)) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run(ask(3)) == 3

    async def close():
        await c.close()

    run(close())


def test_transaction_belongs_to_its_process(broker):
    async def main():
        async with aio.Client(endpoint=broker.endpoint, timeout=10) as c:
            tx = c.transaction()
            await tx.begin()
            tx._state.pid = -1  # as if inherited through fork
            with pytest.raises(client.InterfaceError, match="belongs to pid"):
                await tx.query("SELECT 1")
            tx._state.pid = os.getpid()
            await tx.rollback()
            with pytest.raises(client.InterfaceError, match="not open"):
                await tx.query("SELECT 1")

    run(main())


def test_one_client_serves_event_loops_in_several_threads(broker):
    c = aio.Client(endpoint=broker.endpoint, timeout=10)
    results: dict[int, list] = {}

    async def work(n):
        got = await asyncio.gather(
            *(c.query("SELECT %s", (f"{n}-{i}",)) for i in range(30))
        )
        results[n] = [r.scalar() for r in got]
        await c.close()

    threads = [threading.Thread(target=asyncio.run, args=(work(n),)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {n: [f"{n}-{i}" for i in range(30)] for n in range(3)}
    assert c._drivers == {}


def test_cancelling_a_queued_statement_never_runs_it(make_broker, direct):
    b = make_broker(max_size=1, queue_timeout=5)
    direct.query("CREATE TABLE q (v INT)")

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=10) as c:
            hold = asyncio.create_task(c.query("SELECT SLEEP(1)"))
            await asyncio.sleep(0.2)
            t = asyncio.create_task(c.query("INSERT INTO q VALUES (1)"))
            await asyncio.sleep(0.2)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            await hold
            assert (await c.query("SELECT COUNT(*) FROM q")).scalar() == 0

    asyncio.run(main())
