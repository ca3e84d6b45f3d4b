"""Real faults: killed connections, a killed and restarted MariaDB, a killed broker."""

import threading
import time

import pymysql
import pytest

import client


def _processlist(direct, pattern: str) -> list:
    with direct.cursor() as cur:
        cur.execute(
            "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE INFO LIKE %s "
            "AND ID <> CONNECTION_ID()",
            (pattern,),
        )
        return cur.fetchall()


def _kill_connection(direct, conn_id: int) -> None:
    with direct.cursor() as cur:
        cur.execute(f"KILL CONNECTION {int(conn_id)}")


def test_connection_killed_between_requests_is_replaced_quietly(make_broker, direct):
    b = make_broker(max_size=1, init_sql=["SET @init = 'done'"])
    c = b.client()
    first = c.query("SELECT CONNECTION_ID()").scalar()
    _kill_connection(direct, first)
    time.sleep(0.2)
    second = c.query("SELECT CONNECTION_ID()").scalar()
    assert second != first
    assert c.query("SELECT @init").scalar() == "done"  # init_sql ran again
    assert c.stats()["pools"]["default"]["lost"] >= 1


def test_query_timeout_cancels_the_statement_on_the_server(make_broker, direct):
    b = make_broker(max_size=1)
    c = b.client()
    conn = c.query("SELECT CONNECTION_ID()").scalar()
    start = time.monotonic()
    with pytest.raises(client.QueryTimeout, match="KILL QUERY"):
        c.query("SELECT SLEEP(10), 'bk-sleeper'", timeout=0.5)
    assert 0.45 <= time.monotonic() - start < 2.5
    deadline = time.monotonic() + 2
    while _processlist(direct, "%bk-sleeper%") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processlist(direct, "%bk-sleeper%") == ()
    assert c.query("SELECT CONNECTION_ID()").scalar() == conn  # same connection, usable


def test_pool_query_timeout_is_the_default_deadline(make_broker):
    b = make_broker(query_timeout=0.5)
    c = b.client()
    start = time.monotonic()
    with pytest.raises(client.QueryTimeout):
        c.query("SELECT SLEEP(5)")
    assert time.monotonic() - start < 2.5
    assert c.query("SELECT 1").scalar() == 1


def test_request_whose_deadline_passes_in_the_queue_is_never_sent(make_broker, direct):
    b = make_broker(max_size=1, queue_timeout=10)
    c = b.client()
    c.query("CREATE TABLE t (a INT)")
    holder = threading.Thread(target=lambda: b.client().query("SELECT SLEEP(1.5)"))
    holder.start()
    time.sleep(0.3)
    with pytest.raises(client.QueryTimeout, match="not sent"):
        c.query("INSERT INTO t VALUES (1)", timeout=0.5)
    holder.join()
    time.sleep(0.2)
    assert c.query("SELECT COUNT(*) FROM t").scalar() == 0


@pytest.mark.timeout(90)
def test_mysql_restart_fails_fast_then_recovers_without_broker_restart(
    make_broker, faulty_mysql
):
    b = make_broker(dsn=faulty_mysql.dsn(user="broker", database="broker"), max_size=2)
    c = b.client(timeout=3)
    assert c.query("SELECT 1").scalar() == 1
    faulty_mysql.kill()
    for _ in range(5):
        start = time.monotonic()
        with pytest.raises(client.OperationalError) as exc:
            c.query("SELECT 1")
        assert time.monotonic() - start < 3 + 2.5
        assert not isinstance(exc.value, client.BrokerUnavailable)
    faulty_mysql.restart()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert c.query("SELECT 2").scalar() == 2
            break
        except client.OperationalError:
            assert time.monotonic() < deadline, "no recovery within 15 s"
            time.sleep(0.2)
    pool = c.stats()["pools"]["default"]
    assert pool["lost"] >= 1
    assert pool["connect_failures"] >= 1
    assert pool["unreachable"] is False


@pytest.mark.timeout(90)
def test_insert_in_flight_when_mysql_dies_exists_at_most_once(
    make_broker, faulty_mysql
):
    b = make_broker(dsn=faulty_mysql.dsn(user="broker", database="broker"), max_size=1)
    c = b.client(timeout=10)
    c.query("CREATE TABLE landed (a INT)")
    outcome = []

    def write() -> None:
        try:
            c.query("INSERT INTO landed SELECT 1 FROM (SELECT SLEEP(2)) AS s")
            outcome.append("ok")
        except client.Error as err:
            outcome.append(err)

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.5)
    faulty_mysql.kill()
    t.join()
    assert len(outcome) == 1
    assert isinstance(outcome[0], client.OutcomeUnknown)
    assert outcome[0].errno == client.errors.ER_OUTCOME_UNKNOWN
    faulty_mysql.restart()
    admin = pymysql.connect(
        unix_socket=faulty_mysql.unix_socket, user="root", database="broker"
    )
    time.sleep(1.0)  # give a (wrong) silent re-run every chance to happen
    with admin.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM landed")
        assert cur.fetchone()[0] <= 1
    admin.close()


def test_same_client_works_after_the_broker_is_killed_and_restarted(broker):
    c = broker.client(timeout=1)
    assert c.query("SELECT 1").scalar() == 1
    broker.kill()
    start = time.monotonic()
    with pytest.raises(client.BrokerUnavailable):
        c.query("SELECT 1")
    assert time.monotonic() - start < 1 + 2.5
    broker.start()
    assert c.query("SELECT 2", timeout=5).scalar() == 2


def test_read_on_a_connection_killed_mid_statement_is_an_operational_error(
    make_broker, direct
):
    b = make_broker(max_size=1)
    c = b.client()
    conn = c.query("SELECT CONNECTION_ID()").scalar()
    threading.Timer(0.4, _kill_connection, (direct, conn)).start()
    with pytest.raises(client.OperationalError) as exc:
        c.query("SELECT SLEEP(3)")
    assert not isinstance(exc.value, client.OutcomeUnknown)
    assert exc.value.errno == 2013
    assert c.query("SELECT 1").scalar() == 1


def test_interrupted_call_cancels_its_statement(make_broker, direct):
    import signal as _signal

    b = make_broker(max_size=1)
    c = b.client()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = _signal.signal(_signal.SIGALRM, interrupt)
    try:
        _signal.setitimer(_signal.ITIMER_REAL, 0.4)
        with pytest.raises(KeyboardInterrupt):
            c.query("SELECT SLEEP(10), 'bk-interrupted'")
    finally:
        _signal.signal(_signal.SIGALRM, old)
    deadline = time.monotonic() + 3
    while _processlist(direct, "%bk-interrupted%") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processlist(direct, "%bk-interrupted%") == ()
    assert c.query("SELECT 1").scalar() == 1
    assert c.stats()["pools"]["default"]["query_timeouts"] == 1


@pytest.mark.timeout(60)
def test_idle_connection_is_health_checked_before_use(make_broker):
    from broker.dispatch import PING_AFTER_IDLE

    b = make_broker(max_size=1)
    c = b.client()
    assert c.query("SELECT 1").scalar() == 1
    pings = c.stats()["pools"]["default"]["pings"]
    time.sleep(PING_AFTER_IDLE + 0.5)
    assert c.query("SELECT 2").scalar() == 2
    assert c.stats()["pools"]["default"]["pings"] == pings + 1
    assert c.query("SELECT 3").scalar() == 3  # busy again: no second ping
    assert c.stats()["pools"]["default"]["pings"] == pings + 1


def test_cancelled_write_waits_for_the_outcome_and_reports_it(make_broker, direct):
    b = make_broker(max_size=1)
    c = b.client()
    c.query("CREATE TABLE w (a INT)")
    start = time.monotonic()
    with pytest.raises(client.QueryTimeout, match="not applied"):
        c.query("INSERT INTO w SELECT 1 FROM (SELECT SLEEP(5)) AS s", timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert c.query("SELECT COUNT(*) FROM w").scalar() == 0
    assert b.log().count("cancelling the statement") == 1  # one KILL QUERY, not a storm


def test_a_pin_is_usable_only_by_the_process_that_opened_it(broker):
    import os

    from client.calls import Call
    from client.wire.protocol import Op, Status

    c = broker.client()
    with c.transaction() as tx:
        tx.query("SELECT 1")
        shown = c.stats()["pins"][0]["id"]
        assert isinstance(shown, str)
        assert len(shown) < 16  # status names pins for people, not usably
        pid = os.fork()
        if pid == 0:
            try:
                other = broker.client()
                status, body = other.driver().exchange(
                    Call(Op.QUERY, tx.pin, b"SELECT 2", 2)
                )
                ok = (
                    status == Status.ERROR
                    and body[0] == "OperationalError"
                    and "gone" in body[2]
                )
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert tx.query("SELECT 3").scalar() == 3
