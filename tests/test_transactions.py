"""Pinned transactions and sessions: commit, rollback, isolation, state, abandonment."""

import os
import signal
import threading
import time

import pytest

import client


@pytest.fixture
def accounts(db):
    db.query("CREATE TABLE acct (id INT PRIMARY KEY, bal INT) ENGINE=InnoDB")
    db.query("INSERT INTO acct VALUES (1, 100), (2, 100)")
    return db


def test_commit_on_clean_exit(accounts):
    with accounts.transaction() as tx:
        tx.query("UPDATE acct SET bal = bal - %s WHERE id = %s", (5, 1))
        tx.query("UPDATE acct SET bal = bal + %s WHERE id = %s", (5, 2))
        assert tx.query("SELECT bal FROM acct WHERE id = 1").scalar() == 95
    assert accounts.query("SELECT bal FROM acct ORDER BY id").rows == [(95,), (105,)]


def test_rollback_on_exception(accounts):
    def fail_midway() -> None:
        with accounts.transaction() as tx:
            tx.query("UPDATE acct SET bal = 0")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_midway()
    assert accounts.query("SELECT SUM(bal) FROM acct").scalar() == 200


def test_explicit_commit_and_rollback(accounts):
    tx = accounts.transaction()
    tx.begin()
    tx.query("UPDATE acct SET bal = 1 WHERE id = 1")
    tx.rollback()
    with pytest.raises(client.InterfaceError):
        tx.query("SELECT 1")
    with accounts.transaction() as tx:
        tx.executemany("UPDATE acct SET bal = %s WHERE id = %s", [(7, 1), (8, 2)])
        tx.commit()
    assert accounts.query("SELECT bal FROM acct ORDER BY id").rows == [(7,), (8,)]


def test_uncommitted_changes_are_invisible_to_other_clients(broker, accounts):
    other = broker.client()
    with accounts.transaction() as tx:
        tx.query("UPDATE acct SET bal = 0 WHERE id = 1")
        assert other.query("SELECT bal FROM acct WHERE id = 1").scalar() == 100
    assert other.query("SELECT bal FROM acct WHERE id = 1").scalar() == 0


def test_isolation_level_and_readonly(accounts):
    with accounts.transaction(isolation="read committed") as tx:
        assert (
            tx.query("SELECT @@tx_isolation").scalar() == "REPEATABLE-READ"
        )  # session
        level = tx.query(
            "SELECT TRX_ISOLATION_LEVEL FROM information_schema.INNODB_TRX "
            "WHERE TRX_MYSQL_THREAD_ID = CONNECTION_ID()"
        ).scalar()
        assert level in (None, "READ COMMITTED")
    with (
        pytest.raises(client.OperationalError, match="READ ONLY"),
        accounts.transaction(readonly=True) as tx,
    ):
        tx.query("UPDATE acct SET bal = 3")
    with pytest.raises(client.ProgrammingError):
        accounts.transaction(isolation="SOMETIMES")


def test_query_never_joins_an_open_transaction(broker, accounts):
    with accounts.transaction() as tx:
        tx.query("UPDATE acct SET bal = 50 WHERE id = 1")
        assert accounts.query("SELECT bal FROM acct WHERE id = 1").scalar() == 100
        tx.rollback()


def test_session_state_lives_in_the_session_only(make_broker):
    b = make_broker(max_size=1)
    c = b.client()
    with c.session() as s:
        s.query("SET @n = 1")
        s.query("CREATE TEMPORARY TABLE tmp (a INT)")
        s.query("INSERT INTO tmp VALUES (42)")
        s.query("SET SESSION sql_mode = 'ANSI_QUOTES'")
        assert s.query("SELECT @n").scalar() == 1
        assert s.query("SELECT a FROM tmp").scalar() == 42
        conn = s.query("SELECT CONNECTION_ID()").scalar()
    # max_size=1: the next caller gets the same MySQL connection, reset.
    assert c.query("SELECT CONNECTION_ID()").scalar() == conn
    assert c.query("SELECT @n").scalar() is None
    with pytest.raises(client.ProgrammingError):
        c.query("SELECT a FROM tmp")
    assert "ANSI_QUOTES" not in c.query("SELECT @@SESSION.sql_mode").scalar()


def test_unpinned_state_changes_do_not_reach_the_next_caller(make_broker):
    b = make_broker(max_size=1, init_sql=["SET time_zone = '+00:00'"])
    c = b.client()
    conn = c.query("SELECT CONNECTION_ID()").scalar()
    c.query("SET @leak = 'x'")
    c.query("SET time_zone = '+05:00'")
    c.query("BEGIN")
    c.query("SELECT GET_LOCK('bk', 0)")
    assert c.query("SELECT CONNECTION_ID()").scalar() == conn
    assert c.query("SELECT @leak").scalar() is None
    assert c.query("SELECT @@time_zone").scalar() == "+00:00"
    assert c.query("SELECT @@in_transaction").scalar() == 0
    assert c.query("SELECT IS_USED_LOCK('bk')").scalar() is None


def test_silent_transaction_is_rolled_back(make_broker, direct):
    b = make_broker(max_size=1, transaction_idle_timeout=1)
    c = b.client()
    c.query("CREATE TABLE t (a INT)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            tx = c.transaction()
            tx.begin()
            tx.query("INSERT INTO t VALUES (1)")
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    assert os.read(r, 1) == b"x"
    stats = c.stats()
    assert [p["kind"] for p in stats["pins"]] == ["transaction"]
    assert stats["pins"][0]["who"]["pid"] == pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 10
    while c.stats()["pins"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = c.stats()
    assert stats["pins"] == []
    assert stats["pools"]["default"]["abandoned"] == 1
    # The pool is whole again: its only connection serves, and the row never landed.
    assert c.query("SELECT COUNT(*) FROM t").scalar() == 0
    with direct.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone()[0] == 0


def test_deadlock_surfaces_as_pymysql_does(broker, accounts):
    a, b = broker.client(), broker.client()
    barrier = threading.Barrier(2)
    outcomes = {}

    def run(name, c, first, second):
        try:
            with c.transaction() as tx:
                tx.query("SELECT bal FROM acct WHERE id = %s FOR UPDATE", (first,))
                barrier.wait()
                tx.query("UPDATE acct SET bal = bal + 1 WHERE id = %s", (second,))
            outcomes[name] = "committed"
        except client.OperationalError as err:
            outcomes[name] = err

    threads = [
        threading.Thread(target=run, args=("a", a, 1, 2)),
        threading.Thread(target=run, args=("b", b, 2, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errs = [o for o in outcomes.values() if o != "committed"]
    assert len(errs) == 1
    assert type(errs[0]) is client.OperationalError
    assert errs[0].errno == 1213
    assert errs[0].sqlstate == "40001"
    assert accounts.query("SELECT SUM(bal) FROM acct").scalar() == 201


def test_lock_wait_timeout_rolls_back_only_the_statement(broker, accounts):
    holder, waiter = broker.client(), broker.client()
    with holder.transaction() as hold:
        hold.query("SELECT bal FROM acct WHERE id = 1 FOR UPDATE")
        with waiter.transaction() as tx:
            tx.query("SET SESSION innodb_lock_wait_timeout = 1")
            tx.query("UPDATE acct SET bal = 7 WHERE id = 2")
            with pytest.raises(client.OperationalError) as exc:
                tx.query("UPDATE acct SET bal = 8 WHERE id = 1")
            assert exc.value.errno == 1205
            assert exc.value.sqlstate == "HY000"
            # As MySQL leaves it: the transaction and its first update live on.
            assert tx.query("SELECT bal FROM acct WHERE id = 2").scalar() == 7
            hold.rollback()
    assert accounts.query("SELECT bal FROM acct ORDER BY id").rows == [(100,), (7,)]


def test_transaction_begins_with_its_first_statement(accounts):
    with accounts.transaction() as tx:
        assert accounts.stats()["pins"] == []  # nothing sent yet
        with pytest.raises(client.ProgrammingError):
            tx.query("SELECT * FROM nowhere")  # the first statement fails ...
        assert accounts.stats()["pins"][0]["kind"] == "transaction"  # ... it is open
        tx.query("UPDATE acct SET bal = 1 WHERE id = 1")
    assert accounts.query("SELECT bal FROM acct WHERE id = 1").scalar() == 1
    with accounts.transaction():
        pass  # no statement, no round trip, nothing pinned
    assert accounts.stats()["pins"] == []
