"""What a client is told when the broker dies or freezes at the worst moment.

Each fault lands at a known point: after MySQL shows the statement running
(it reached the broker and MySQL), or while the request sits unread in a
stopped broker's socket. The row count on the server is the judge.
"""

import asyncio
import re
import signal
import threading
import time

import pytest

import client
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
    c = b.client(timeout=1)
    c.query("CREATE TABLE t (a INT)")
    start = time.monotonic()
    thread, out = _in_thread(lambda: c.query(SLOW_INSERT, timeout=1))
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
        assert elapsed < 2.5  # the closed socket is noticed, not waited out
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
    assert time.monotonic() - start < 1.5
    assert c.stats()["pools"]["default"]["connect_failures"] >= 3
