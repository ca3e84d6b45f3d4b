"""Dispatch and pool state transitions, in process, against a fake MySQL server.

No MariaDB and no broker subprocess: `fake_mysql.Harness` builds a real
`Pool` and `Dispatch` over backends whose sockets lead to scripted servers,
and plays the connector threads itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fake_mysql import Harness, err, ok, result

from broker.backend import State
from broker.janitor import Janitor
from broker.systemd import Notifier
from client import errors
from client.wire.protocol import Op, Status

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    """Build Harnesses with pool settings; close them all at teardown."""
    made: list[Harness] = []

    def make(**pool_settings: object) -> Harness:
        made.append(Harness(**pool_settings))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def _error(reply: tuple) -> errors.Error:
    status, body = reply
    assert status == Status.ERROR
    return errors.from_wire(body)


def _janitor(h: Harness) -> Janitor:
    return Janitor(h.dispatch, None, h.connector, Notifier(environ={}))  # type: ignore[arg-type]


def test_idle_backend_is_assigned_and_the_reply_travels_through_the_request(h):
    (backend,) = h.backends(1)
    assert backend.state is State.IDLE
    assert h.pool.idle == 1
    req = h.request(1, Op.QUERY, b"SELECT 1")
    h.dispatch.acquire(req)
    assert backend.state is State.BUSY
    assert backend.request is req
    assert h.pool.idle == 0
    h.pump(h.answered(1))
    status, data = h.sink.replies[1]
    assert status == Status.PACKETS
    assert data.endswith(b"\xfe\x00\x00\x02\x00")  # the result's closing EOF
    assert h.fake(backend).sql() == [b"SELECT 1"]
    assert backend.state is State.IDLE
    assert backend.request is None
    assert h.pool.idle == 1
    assert h.pool.metrics.served == 1


def test_request_waits_in_the_queue_until_a_backend_opens(h):
    req = h.request(1, Op.QUERY, b"SELECT 1")
    h.dispatch.acquire(req)
    assert list(h.pool.queue) == [req]
    assert len(h.connector.opens) == 1  # the pool asked for a connection
    (backend,) = h.fulfil()
    assert not h.pool.queue
    assert backend.request is req
    h.pump(h.answered(1))
    assert h.sink.replies[1][0] == Status.PACKETS
    assert backend.state is State.IDLE


def test_release_hands_the_backend_to_the_next_waiting_request(make_harness):
    h = make_harness(max_size=1)
    (backend,) = h.backends(1)
    first = h.request(1, Op.QUERY, b"SELECT 1")
    second = h.request(2, Op.QUERY, b"SELECT 2")
    h.dispatch.acquire(first)
    h.dispatch.acquire(second)
    assert list(h.pool.queue) == [second]
    h.pump(h.answered(1))
    assert backend.request is second  # straight from the queue, never idle
    h.pump(h.answered(1, 2))
    assert h.fake(backend).sql() == [b"SELECT 1", b"SELECT 2"]
    assert not h.pool.queue
    assert backend.state is State.IDLE
    assert h.pool.metrics.served == 2


def test_a_transaction_pins_its_backend_until_commit(make_harness):
    h = make_harness(max_size=1)
    (backend,) = h.backends(1)
    h.dispatch.acquire(h.request(1, Op.BEGIN, {}))
    h.pump(h.answered(1))
    status, pin_id = h.sink.replies[1]
    assert status == Status.VALUE
    assert backend.state is State.PINNED
    assert backend.pin.id == pin_id
    outsider = h.request(2, Op.QUERY, b"SELECT 1")
    h.dispatch.acquire(outsider)
    assert list(h.pool.queue) == [outsider]  # the only backend is pinned
    h.dispatch.pinned(h.request(3, Op.QUERY, b"UPDATE t SET a = 1", pin=pin_id))
    assert backend.state is State.BUSY
    h.pump(h.answered(3))
    assert backend.state is State.PINNED  # back to its pin, not to the queue
    assert 2 not in h.sink.replies
    h.dispatch.pinned(h.request(4, Op.COMMIT, None, pin=pin_id))
    h.pump(h.answered(4, 2))
    assert backend.pin is None
    assert pin_id not in h.dispatch.pins.open
    assert h.fake(backend).sql() == [
        b"START TRANSACTION",
        b"UPDATE t SET a = 1",
        b"COMMIT",
        b"SELECT 1",
    ]
    assert backend.state is State.IDLE


def test_a_request_for_an_ended_pin_hears_why(h):
    h.backends(1)
    h.dispatch.acquire(h.request(1, Op.BEGIN, {}))
    h.pump(h.answered(1))
    pin_id = h.sink.replies[1][1]
    h.dispatch.pinned(h.request(2, Op.ROLLBACK, None, pin=pin_id))
    h.pump(h.answered(2))
    h.dispatch.pinned(h.request(3, Op.QUERY, b"SELECT 1", pin=pin_id))
    failure = _error(h.sink.replies[3])
    assert failure.errno == errors.ER_BAD_PIN
    assert "ended by commit or rollback" in failure.msg


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        (b"SELECT 1", errors.OperationalError),  # a read: it changed nothing
        (b"INSERT INTO t VALUES (1)", errors.OutcomeUnknown),
    ],
)
def test_a_backend_lost_mid_statement_answers_the_error_and_is_forgotten(h, sql, kind):
    (backend,) = h.backends(1)
    fake = h.fake(backend)
    fake.hold = True
    h.dispatch.acquire(h.request(1, Op.QUERY, sql))
    h.pump(lambda: bool(fake.held))
    fake.die()
    h.pump(h.answered(1))
    failure = _error(h.sink.replies[1])
    assert type(failure) is kind
    if kind is errors.OperationalError:
        assert failure.errno == errors.CR_SERVER_LOST
    assert backend.state is State.CLOSED
    assert backend not in h.pool.backends
    assert backend.fd not in h.dispatch.backends
    assert h.pool.metrics.lost == 1


def test_a_cancelled_queued_request_is_never_sent(make_harness):
    h = make_harness(max_size=1)
    (backend,) = h.backends(1)
    h.fake(backend).hold = True
    h.dispatch.acquire(h.request(1, Op.QUERY, b"SELECT 1"))
    h.dispatch.acquire(h.request(2, Op.QUERY, b"SELECT 2"))
    found = h.dispatch.canceller.cancel_request(
        b"peer", 2, h.dispatch.backends.values(), h.dispatch.all_pools(), 0.0
    )
    assert found
    assert not h.pool.queue
    failure = _error(h.sink.replies[2])
    assert type(failure) is errors.QueryTimeout
    assert "before it was sent" in failure.msg
    h.fake(backend).release()
    h.pump(h.answered(1))
    assert h.fake(backend).sql() == [b"SELECT 1"]


def test_the_janitor_expires_queued_requests_unsent(make_harness):
    h = make_harness(max_size=1, queue_timeout=1.0)
    (backend,) = h.backends(1)
    h.fake(backend).hold = True
    h.dispatch.acquire(h.request(1, Op.QUERY, b"SELECT 1", timeout=30))
    h.dispatch.acquire(h.request(2, Op.QUERY, b"SELECT 2", timeout=0.5))
    h.dispatch.acquire(h.request(3, Op.QUERY, b"SELECT 3", timeout=30))
    janitor = _janitor(h)
    janitor.deadlines(time.monotonic() + 0.7)  # past 2's deadline only
    assert type(_error(h.sink.replies[2])) is errors.QueryTimeout
    assert 3 not in h.sink.replies
    janitor.deadlines(time.monotonic() + 1.5)  # past queue_timeout
    assert type(_error(h.sink.replies[3])) is errors.PoolTimeout
    assert not h.pool.queue
    assert h.pool.metrics.pool_timeouts == 1
    assert h.pool.metrics.query_timeouts == 1
    assert 1 not in h.sink.replies  # the running one is not the queue's


def test_a_statement_past_its_deadline_is_killed_then_the_backend_reset(h):
    (backend,) = h.backends(1)
    fake = h.fake(backend)
    fake.hold = True
    h.dispatch.acquire(h.request(1, Op.QUERY, b"SELECT SLEEP(10)", timeout=0.2))
    h.pump(lambda: bool(fake.held))
    _janitor(h).deadlines(time.monotonic() + 0.3)
    assert h.connector.kills == [backend.thread_id]
    assert backend.cancelling
    assert type(_error(h.sink.replies[1])) is errors.QueryTimeout  # a read: at once
    fake.release(err(1317, "Query execution was interrupted", "70100"))
    h.pump(lambda: not backend.running)
    assert backend.state is State.BUSY  # held until MySQL answers the KILL
    h.kill_answered(backend)
    h.pump(lambda: backend.state is State.IDLE)
    assert h.pool.metrics.resets == 1  # what the killed command left is cleared
    assert h.pool.metrics.query_timeouts == 1


def test_closing_a_session_resets_its_backend(h):
    (backend,) = h.backends(1)
    h.dispatch.acquire(h.request(1, Op.SESSION_OPEN, {}))
    status, pin_id = h.sink.replies[1]
    assert status == Status.VALUE
    assert backend.state is State.PINNED
    h.dispatch.pinned(h.request(2, Op.QUERY, b"SET @n = 1", pin=pin_id))
    h.pump(h.answered(2))
    h.dispatch.pinned(h.request(3, Op.SESSION_CLOSE, None, pin=pin_id))
    assert h.sink.replies[3] == (Status.VALUE, None)
    assert backend.state is State.RESETTING
    h.pump(lambda: backend.state is State.IDLE)
    fake = h.fake(backend)
    assert (0x1F, b"") in fake.received  # COM_RESET_CONNECTION
    assert fake.sql()[-1] == b"SET autocommit=1"
    assert h.pool.metrics.resets == 1


def test_a_stream_pauses_between_chunks_and_frees_its_backend_at_the_end(h):
    (backend,) = h.backends(1)
    rows = [(i,) for i in range(5)]
    h.fake(backend).script[b"SELECT n FROM t"] = result(["n"], rows)
    h.dispatch.acquire(h.request(1, Op.STREAM_OPEN, [b"SELECT n FROM t", 2, {}]))
    h.pump(h.answered(1))
    status, (pin_id, done, _) = h.sink.replies[1]
    assert (status, done) == (Status.CHUNK, False)
    assert backend.paused
    assert backend.deadline == 0.0  # paused: the pin's idle timeout applies
    assert backend.state is State.BUSY  # the rest of the result is still coming
    assert backend.pin.id == pin_id
    for req_id in (2, 3):
        h.dispatch.pinned(h.request(req_id, Op.STREAM_NEXT, None, pin=pin_id))
        h.pump(h.answered(req_id))
    assert [h.sink.replies[i][1][1] for i in (2, 3)] == [False, True]
    assert backend.pin is None
    assert pin_id not in h.dispatch.pins.open
    assert backend.state is State.IDLE


def test_a_failing_reset_replaces_the_connection(h):
    (backend,) = h.backends(1)
    fake = h.fake(backend)
    h.dispatch.acquire(h.request(1, Op.SESSION_OPEN, {}))
    pin_id = h.sink.replies[1][1]
    fake.script[b"SET autocommit=1"] = err(1193, "Unknown system variable")
    h.dispatch.pinned(h.request(2, Op.SESSION_CLOSE, None, pin=pin_id))
    h.pump(lambda: backend.state is State.CLOSED)
    assert backend not in h.pool.backends
    assert h.connector.opens  # a replacement was asked for


def test_an_executemany_reports_each_statement(h):
    h.backends(1)
    h.dispatch.acquire(
        h.request(1, Op.EXECUTEMANY, [b"INSERT INTO t VALUES (1)", b"INSERT 2"])
    )
    h.pump(h.answered(1))
    status, replies = h.sink.replies[1]
    assert status == Status.BATCH
    assert len(replies) == 2


def test_a_read_is_pipelined_behind_a_fresh_read(make_harness):
    h = make_harness(max_size=1, pipeline_depth=2)
    (backend,) = h.backends(1)
    first = h.request(1, Op.QUERY, b"SELECT 1")
    second = h.request(2, Op.QUERY, b"SELECT 2")
    h.dispatch.acquire(first)
    h.dispatch.acquire(second)
    assert list(backend.piped) == [second]  # on the wire, not in the queue
    assert not h.pool.queue
    h.pump(h.answered(1, 2))
    assert h.sink.replies[1][0] == h.sink.replies[2][0] == Status.PACKETS
    assert h.fake(backend).sql() == [b"SELECT 1", b"SELECT 2"]
    assert h.pool.metrics.pipelined == 1
    assert backend.state is State.IDLE
    assert not backend.piped


def test_no_read_is_piped_onto_a_backend_whose_write_failed(make_harness):
    h = make_harness(max_size=1, pipeline_depth=2)
    (backend,) = h.backends(1)
    fake = h.fake(backend)
    fake.hold = True
    h.dispatch.acquire(h.request(1, Op.QUERY, b"UPDATE t SET a = 1"))
    h.dispatch.acquire(h.request(2, Op.QUERY, b"SELECT 2"))
    third = h.request(3, Op.QUERY, b"SELECT 3")
    h.dispatch.acquire(third)
    assert len(h.pool.queue) == 2  # nothing pipes behind a write
    h.pump(lambda: bool(fake.held))
    fake.release()
    fake.die()  # the write of SELECT 2 fails
    h.pump(h.answered(1, 2))
    assert h.sink.replies[1][0] == Status.PACKETS
    assert type(_error(h.sink.replies[2])) is errors.OperationalError
    assert backend.state is State.CLOSED
    assert list(h.pool.queue) == [third]  # waits for a new connection


def test_a_draining_broker_refuses_new_work(h):
    h.backends(1)
    h.dispatch.draining = True
    h.dispatch.acquire(h.request(1, Op.QUERY, b"SELECT 1"))
    assert type(_error(h.sink.replies[1])) is errors.BrokerUnavailable
    assert h.dispatch.metrics.refused_draining == 1


# The pool's verbs ----------------------------------------------------------------


def test_take_idle_is_lifo_and_check_in_makes_idle(h):
    first, second = h.backends(2)
    assert h.pool.take_idle() is second  # the most recently used first
    assert h.pool.take_idle() is first
    assert (first.state, second.state) == (State.BUSY, State.BUSY)
    h.pool.check_in(first)
    h.pool.check_in(second)
    assert second.state is State.IDLE
    assert h.pool.idle == 2
    assert h.pool.take_idle() is second


def test_take_idle_with_none_idle_opens_one_for_what_waits(h):
    assert h.pool.take_idle() is None
    assert h.connector.opens == []  # min_size 0 and nothing waits
    h.pool.enqueue(h.request(1, Op.QUERY, b"SELECT 1"))
    assert h.pool.take_idle() is None
    assert len(h.connector.opens) == 1
    assert h.pool.size == 1  # counted while it opens


def test_forget_closes_and_drops_an_idle_backend(h):
    (backend,) = h.backends(1)
    h.dispatch.forget(backend)
    assert backend.state is State.CLOSED
    assert backend.closed
    assert h.pool.idle == 0
    assert h.pool.take_idle() is None
    assert len(h.connector.opens) == 1  # a replacement, for min_size
    assert h.pool.size == 1  # the one opening


def test_a_backend_closed_while_idle_is_forgotten(h):
    (backend,) = h.backends(1)
    h.fake(backend).sock.sendall(b"\x07\x00\x00\x00" + ok()[0])  # unasked for
    h.pump(lambda: backend.state is State.CLOSED)
    assert h.pool.metrics.lost == 1
    assert h.pool.idle == 0
