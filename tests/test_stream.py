"""Streams: rows in bounded memory, early exit frees the connection."""

import asyncio
import gc
import time

import pytest
from broker_fixtures import rss_kb

import client
from client import aio


@pytest.mark.timeout(180)
def test_million_rows_stream_in_bounded_broker_memory(broker, db):
    pid = db.stats()["pid"]
    before = rss_kb(pid)
    count = total = 0
    peak = before
    start = time.perf_counter()
    for seq, double in db.stream(
        "SELECT seq, seq*2 FROM seq_1_to_1000000", chunk_rows=5000
    ):
        count += 1
        total += double - seq
        if count % 100_000 == 0:
            peak = max(peak, rss_kb(pid))
    elapsed = time.perf_counter() - start
    assert count == 1_000_000
    assert total == 1_000_000 * 1_000_001 // 2
    assert peak - before < 100 * 1024, f"broker RSS grew {peak - before} kB"
    rate = count / elapsed
    print(f"streamed {count} rows in {elapsed:.2f} s ({rate:,.0f} rows/s)")
    print(f"broker RSS {before} -> {peak} kB")


def test_early_break_frees_the_only_connection(make_broker):
    b = make_broker(max_size=1, queue_timeout=2)
    c = b.client()
    for row in c.stream("SELECT seq FROM seq_1_to_1000000", chunk_rows=100):
        assert row == (1,)
        break
    gc.collect()
    assert c.query("SELECT 7").scalar() == 7
    stream = c.stream("SELECT seq FROM seq_1_to_1000000", chunk_rows=100)
    assert next(stream) == (1,)
    assert c.stats()["pins"][0]["kind"] == "stream"
    stream.close()
    assert c.query("SELECT 8").scalar() == 8
    assert c.stats()["pins"] == []


def test_stream_errors_and_empty_results(db):
    assert list(db.stream("SELECT 1 FROM dual WHERE 1 = 0")) == []
    with pytest.raises(client.ProgrammingError):
        list(db.stream("SELECT * FROM nowhere"))
    assert list(db.stream("SELECT %s, %s", (1, "a"))) == [(1, "a")]
    with db.stream("SELECT seq FROM seq_1_to_10", chunk_rows=3) as rows:
        assert [r[0] for r in rows] == list(range(1, 11))


def test_abandoned_stream_times_out_like_a_transaction(make_broker):
    b = make_broker(max_size=1, transaction_idle_timeout=1, queue_timeout=5)
    c = b.client()
    stream = c.stream("SELECT seq FROM seq_1_to_1000000", chunk_rows=10)
    assert next(stream) == (1,)
    time.sleep(2.5)
    assert c.query("SELECT 9").scalar() == 9
    with pytest.raises(client.OperationalError, match="transaction_idle_timeout"):
        list(stream)


def test_error_in_mid_stream_is_a_client_error(db):
    with pytest.raises(client.OperationalError) as exc:
        list(
            db.stream(
                "SELECT seq, (SELECT 1 UNION SELECT 2 FROM dual WHERE seq > 50) "
                "FROM seq_1_to_100",
                chunk_rows=10,
            )
        )
    assert exc.value.errno == 1242


@pytest.fixture
def no_gc():
    """Turn the cyclic garbage collector off, so only reference counting frees."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.timeout(60)
def test_breaking_out_frees_the_connection_without_gc(make_broker, no_gc):
    b = make_broker(max_size=1, queue_timeout=2)
    c = b.client()
    for i, row in enumerate(c.stream("SELECT seq FROM seq_1_to_100000", chunk_rows=10)):
        assert row == (i + 1,)
        if i == 20:  # past the first chunk: the refill path has run
            break
    assert c.query("SELECT 7").scalar() == 7
    assert c.stats()["pins"] == []


@pytest.mark.timeout(60)
def test_async_stream_dropped_in_a_loop_frees_the_connection_without_gc(
    make_broker, no_gc
):
    b = make_broker(max_size=1, queue_timeout=2)

    async def main():
        async with aio.Client(endpoint=b.endpoint, timeout=10) as c:
            n = 0
            async for row in c.stream("SELECT seq FROM seq_1_to_100000", chunk_rows=10):
                n += 1
                assert row == (n,)
                if n == 25:
                    break
            assert (await c.query("SELECT 8")).scalar() == 8
            return (await c.stats())["pins"]

    assert asyncio.run(main()) == []
