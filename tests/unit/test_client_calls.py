"""Every client operation against a scripted broker, through both drivers.

Each test runs twice, once through the sync driver (`client.driver`) and once
through the asyncio driver (`client.aio_driver`), over the real links and
wire, so a behaviour that drifts between the two fails here. In process: no
MariaDB, no subprocess.
"""

import asyncio
import os
import threading

import pytest
from scripted_link import (
    LONGLONG,
    VAR_STRING,
    ScriptedBroker,
    error,
    error_packet,
    late_then,
    ok_packet,
    reply,
    result_set,
    silence,
    stream_chunks,
)

import client
from client import aio, aio_driver, calls, driver, pins
from client.wire.protocol import Op, Status

pytestmark = pytest.mark.timeout(20)

ROW = {"a": LONGLONG, "b": VAR_STRING}


@pytest.fixture
def broker():
    path = f"/tmp/scripted-{os.getpid()}-{threading.get_ident()}.sock"
    if os.path.exists(path):
        os.unlink(path)
    b = ScriptedBroker(path)
    yield b
    b.close()
    if os.path.exists(path):
        os.unlink(path)


class Sync:
    """Runs operations through a sync Client's driver."""

    per_thread = True

    def __init__(self, endpoint, timeout):
        self.client = client.Client(endpoint, timeout=timeout)

    def run(self, make):
        d = self.client.driver()
        return d.run(make(d.scope))

    def close(self):
        self.client.close()


class Async:
    """Runs operations through an asyncio Client's driver, on a private loop."""

    per_thread = False

    def __init__(self, endpoint, timeout):
        self.client = aio.Client(endpoint, timeout=timeout)
        self.loop = asyncio.new_event_loop()

    def run(self, make):
        async def main():
            d = self.client.driver()
            return await d.run(make(d.scope))

        return self.loop.run_until_complete(main())

    def close(self):
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def drive(request, broker, monkeypatch):
    # The grace past a deadline, 2 s in real use, would make timeouts slow here.
    monkeypatch.setattr(driver, "GRACE", 0.05)
    monkeypatch.setattr(aio_driver, "GRACE", 0.05)
    runner = (Sync if request.param == "sync" else Async)(broker.endpoint, 2.0)
    yield runner
    runner.close()


def _query(sql, params=None, timeout=None):
    return lambda scope: calls.query(scope, sql, params, timeout)


def test_query_renders_params_and_decodes_rows(drive, broker):
    broker.script(reply(Status.PACKETS, result_set(ROW, [(1, "x"), (2, None)])))
    result = drive.run(_query("SELECT a, b FROM t WHERE b = %s", ("it's",)))
    assert result.rows == [(1, "x"), (2, None)]
    assert result.columns == ("a", "b")
    assert broker.ops() == [Op.HELLO, Op.QUERY]
    assert broker.requests[-1].body == b"SELECT a, b FROM t WHERE b = 'it\\'s'"


def test_hello_is_asked_once(drive, broker):
    broker.script(
        reply(Status.PACKETS, ok_packet(1)), reply(Status.PACKETS, ok_packet(2))
    )
    assert drive.run(_query("DELETE FROM t")).rowcount == 1
    assert drive.run(_query("DELETE FROM t")).rowcount == 2
    assert broker.ops() == [Op.HELLO, Op.QUERY, Op.QUERY]


def test_executemany_batches_and_totals(drive, broker):
    broker.script(reply(Status.BATCH, [ok_packet(2, 7)]))
    result = drive.run(
        lambda s: calls.executemany(
            s, "INSERT INTO t (a, b) VALUES (%s, %s)", [(1, "x"), (2, "y")], None
        )
    )
    assert result.rowcount == 2
    assert result.lastrowid == 7
    assert broker.requests[-1].op == Op.EXECUTEMANY
    assert broker.requests[-1].body == [
        b"INSERT INTO t (a, b) VALUES (1, 'x'),(2, 'y')"
    ]


def test_ping_and_stats_are_plain_values(drive, broker):
    broker.script(reply(Status.VALUE, "1.0"), reply(Status.VALUE, {"pools": {}}))
    assert drive.run(lambda s: calls.value(s, Op.PING, None)) == "1.0"
    assert drive.run(lambda s: calls.value(s, Op.STATS, None)) == {"pools": {}}
    assert broker.ops() == [Op.PING, Op.STATS]


def test_transaction_sends_begin_with_its_first_statement(drive, broker):
    broker.script(
        reply(Status.VALUE, [41, ok_packet(1)]),
        reply(Status.PACKETS, ok_packet(1)),
        reply(Status.PACKETS, ok_packet()),
    )
    tx = pins.TransactionState("read committed", False, None, drive.per_thread)
    drive.run(lambda s: tx.query(s, "UPDATE t SET a = %s", (1,), None))
    begin = broker.requests[-1]
    assert (begin.op, begin.pin) == (Op.BEGIN, 0)
    assert begin.body["sql"] == b"UPDATE t SET a = 1"
    assert begin.body["isolation"] == "READ COMMITTED"
    assert tx.pin == 41
    drive.run(lambda s: tx.query(s, "UPDATE t SET a = 2", None, None))
    assert (broker.requests[-1].op, broker.requests[-1].pin) == (Op.QUERY, 41)
    drive.run(lambda s: tx.end(s, Op.COMMIT, None))
    assert (broker.requests[-1].op, broker.requests[-1].pin) == (Op.COMMIT, 41)
    assert tx.pin == 0
    with pytest.raises(client.InterfaceError, match="not open"):
        drive.run(lambda s: tx.query(s, "SELECT 1", None, None))


def test_rollback_on_leaving_with_an_exception(drive, broker):
    broker.script(
        reply(Status.VALUE, [5, ok_packet(1)]), reply(Status.PACKETS, ok_packet())
    )
    tx = pins.TransactionState(None, False, None, drive.per_thread)
    drive.run(lambda s: tx.query(s, "DELETE FROM t", None, None))
    drive.run(lambda s: tx.leave(s, True))
    assert (broker.requests[-1].op, broker.requests[-1].pin) == (Op.ROLLBACK, 5)


def test_transaction_that_runs_nothing_sends_nothing(drive, broker):
    tx = pins.TransactionState(None, False, None, drive.per_thread)
    drive.run(lambda s: tx.leave(s, False))
    other = pins.TransactionState(None, False, None, drive.per_thread)
    drive.run(lambda s: other.end(s, Op.COMMIT, None))
    assert broker.ops() == []


def test_executemany_in_a_transaction_begins_first(drive, broker):
    broker.script(reply(Status.VALUE, 9), reply(Status.BATCH, [ok_packet(1)]))
    tx = pins.TransactionState(None, True, None, drive.per_thread)
    drive.run(lambda s: tx.executemany(s, "DELETE FROM t WHERE a = %s", [(1,)], None))
    assert [(r.op, r.pin) for r in broker.requests if r.op != Op.HELLO] == [
        (Op.BEGIN, 0),
        (Op.EXECUTEMANY, 9),
    ]
    assert "sql" not in broker.requests[0].body
    assert broker.requests[0].body["readonly"] is True


def test_session_open_query_close(drive, broker):
    broker.script(
        reply(Status.VALUE, 3),
        reply(Status.PACKETS, result_set({"@n": LONGLONG}, [(1,)])),
        reply(Status.VALUE, None),
    )
    session = pins.SessionState(None, drive.per_thread)
    drive.run(session.open)
    assert drive.run(lambda s: session.query(s, "SELECT @n", None, None)).scalar() == 1
    drive.run(lambda s: session.close(s, None))
    assert [(r.op, r.pin) for r in broker.requests] == [
        (Op.SESSION_OPEN, 0),
        (Op.HELLO, 0),
        (Op.QUERY, 3),
        (Op.SESSION_CLOSE, 3),
    ]
    assert session.pin == 0


def test_stream_reads_rows_across_chunks(drive, broker):
    rows = [(n, f"r{n}") for n in range(1, 8)]
    first, *rest = stream_chunks(ROW, rows, 3)
    broker.script(
        reply(Status.CHUNK, [12, False, first]),
        *(reply(Status.CHUNK, [12, i == len(rest) - 1, c]) for i, c in enumerate(rest)),
    )
    stream = pins.StreamState(
        "SELECT a, b FROM t",
        None,
        chunk_rows=3,
        timeout=None,
        replica=False,
        per_thread=drive.per_thread,
    )
    got = []
    while (row := drive.run(stream.next_row)) is not None:
        got.append(row)
    assert got == rows
    assert stream.served_by == "primary"
    assert [r.op for r in broker.requests if r.op != Op.HELLO] == [
        Op.STREAM_OPEN,
        Op.STREAM_NEXT,
        Op.STREAM_NEXT,
    ]
    assert broker.requests[1].body[1] == 3
    assert stream.pin == 0  # the last chunk freed it


def test_stream_closed_early_frees_its_pin(drive, broker):
    rows = [(n, "x") for n in range(10)]
    broker.script(
        reply(Status.CHUNK, [4, False, stream_chunks(ROW, rows, 2)[0]]),
        reply(Status.VALUE, None),
    )
    stream = pins.StreamState(
        "SELECT a, b FROM t",
        None,
        chunk_rows=2,
        timeout=None,
        replica=False,
        per_thread=drive.per_thread,
    )
    assert drive.run(stream.next_row) == (0, "x")
    drive.run(stream.close)
    assert (broker.requests[-1].op, broker.requests[-1].pin) == (Op.STREAM_CLOSE, 4)
    assert drive.run(stream.next_row) is None


@pytest.mark.parametrize(
    ("answer", "cls", "errno"),
    [
        (
            error("IntegrityError", 1062, "Duplicate entry", "23000"),
            client.IntegrityError,
            1062,
        ),
        (error("PoolTimeout", 2901, "no connection"), client.PoolTimeout, 2901),
        (error("NoSuchClass", 1, "what"), client.InternalError, 1),
        (
            reply(Status.PACKETS, error_packet(1146, "42S02", "no table")),
            client.ProgrammingError,
            1146,
        ),
    ],
)
def test_errors_are_the_client_classes(drive, broker, answer, cls, errno):
    broker.script(answer)
    with pytest.raises(cls) as info:
        drive.run(_query("SELECT * FROM t"))
    assert info.value.errno == errno


def test_a_reply_with_a_stale_request_id_is_dropped(drive, broker):
    broker.script(late_then(Status.PACKETS, result_set({"a": LONGLONG}, [(5,)])))
    assert drive.run(_query("SELECT 5")).scalar() == 5


def test_no_reply_to_a_read_is_broker_unavailable(drive, broker):
    broker.script(silence)
    with pytest.raises(client.BrokerUnavailable, match="no reply") as info:
        drive.run(_query("SELECT 1", timeout=0.1))
    assert not isinstance(info.value, client.OutcomeUnknown)


def test_no_reply_to_a_write_is_reply_lost(drive, broker):
    broker.script(silence)
    with pytest.raises(client.ReplyLost, match="may or may not"):
        drive.run(_query("UPDATE t SET a = 1", timeout=0.1))


def test_no_broker_is_unavailable_and_not_sent(drive, broker):
    broker.close()
    os.unlink(broker.endpoint[len("ipc://") :])
    with pytest.raises(client.BrokerUnavailable, match="not sent"):
        drive.run(_query("SELECT 1", timeout=0.2))


def test_the_client_recovers_after_a_timeout(drive, broker):
    broker.script(silence, reply(Status.PACKETS, result_set({"a": LONGLONG}, [(2,)])))
    with pytest.raises(client.BrokerUnavailable):
        drive.run(_query("SELECT 1", timeout=0.1))
    assert drive.run(_query("SELECT 2")).scalar() == 2


def test_a_request_over_the_broker_limit_is_not_sent(drive, broker):
    broker.script(reply(Status.PACKETS, ok_packet()))
    drive.run(_query("DO 1"))
    with pytest.raises(client.InterfaceError, match="max_message_bytes"):
        drive.run(_query("SELECT %s", ("x" * (1 << 20),)))
    assert broker.ops() == [Op.HELLO, Op.QUERY]


def test_a_pinned_object_belongs_to_its_process(drive, broker):
    tx = pins.TransactionState(None, False, None, drive.per_thread)
    tx.pid = -1
    with pytest.raises(client.InterfaceError, match="belongs to pid"):
        drive.run(lambda s: tx.query(s, "SELECT 1", None, None))
    assert broker.ops() == []


def test_cancelling_a_task_sends_cancel_and_frees_a_late_pin(broker):
    async def main():
        c = aio.Client(broker.endpoint, timeout=5)
        broker.script(silence)
        task = asyncio.create_task(c.query("SELECT SLEEP(9)"))
        while Op.QUERY not in broker.ops():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while Op.CANCEL not in broker.ops():
            await asyncio.sleep(0.01)
        query = next(r for r in broker.requests if r.op == Op.QUERY)
        cancel = next(r for r in broker.requests if r.op == Op.CANCEL)
        assert cancel.body == query.req_id
        await c.close()

    asyncio.run(main())
