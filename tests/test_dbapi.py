"""client.dbapi against PEP 249's text: module, errors, types, connection, cursor.

Every attribute and method the PEP names is checked here, as the old dbapi20
compliance suite did, plus what the broker adds: the lazy transaction pin, and
the unbuffered cursor streaming.
"""

import datetime
import decimal
import gc
import os
import time

import pymysql
import pytest
from broker_fixtures import PEP249_ERRORS

import client
from client import dbapi


@pytest.fixture
def conn(broker):
    c = dbapi.connect(endpoint=broker.endpoint, timeout=10)
    yield c
    c.close()


def _pinned(db):
    return [p["kind"] for p in db.stats()["pins"]]


# --- module ----------------------------------------------------------------------


def test_module_globals():
    assert dbapi.apilevel == "2.0"
    assert dbapi.threadsafety == 1
    assert dbapi.paramstyle == "pyformat"


def test_exceptions_are_the_client_classes_in_the_pep_hierarchy():
    for name in PEP249_ERRORS:
        assert getattr(dbapi, name) is getattr(client, name)
        assert getattr(dbapi.Connection, name) is getattr(client, name)
    assert issubclass(dbapi.Warning, Exception)
    assert issubclass(dbapi.Error, Exception)
    assert not issubclass(dbapi.Warning, dbapi.Error)
    for name in ("InterfaceError", "DatabaseError"):
        assert issubclass(getattr(dbapi, name), dbapi.Error)
    for name in PEP249_ERRORS[3:-1]:  # DataError .. NotSupportedError
        assert issubclass(getattr(dbapi, name), dbapi.DatabaseError)
    assert issubclass(client.QueryTimeout, dbapi.OperationalError)


def test_type_constructors():
    assert dbapi.Date(2024, 2, 29) == datetime.date(2024, 2, 29)
    assert dbapi.Time(13, 14, 15) == datetime.time(13, 14, 15)
    assert dbapi.Timestamp(2024, 2, 29, 13, 14, 15) == datetime.datetime(
        2024, 2, 29, 13, 14, 15
    )
    ticks = time.mktime((2024, 2, 29, 13, 14, 15, 0, 0, -1))
    assert dbapi.DateFromTicks(ticks) == datetime.date(2024, 2, 29)
    assert dbapi.TimeFromTicks(ticks) == datetime.time(13, 14, 15)
    assert dbapi.TimestampFromTicks(ticks) == datetime.datetime(2024, 2, 29, 13, 14, 15)
    assert dbapi.Binary(bytearray(b"\x00\xff")) == b"\x00\xff"


def test_description_matches_pymysql_and_type_objects(conn, db, direct):
    db.query(
        "CREATE TABLE ty (i INT, v VARCHAR(10), c CHAR(3), d DECIMAL(5,2), f DOUBLE,"
        " dt DATETIME, da DATE, ti TIME, b BLOB, e ENUM('x','y'))"
    )
    db.query(
        "INSERT INTO ty VALUES (1, 'a', 'b', 1.50, 2.5, '2024-01-02 03:04:05',"
        " '2024-01-02', '01:02:03', x'00ff', 'x')"
    )
    sql = "SELECT * FROM ty"
    cur = conn.cursor()
    cur.execute(sql)
    with direct.cursor() as dcur:
        dcur.execute(sql)
        assert cur.description == dcur.description
        assert cur.fetchall() == dcur.fetchall()
    assert all(len(d) == 7 for d in cur.description)
    codes = {d[0]: d[1] for d in cur.description}
    assert codes["i"] == dbapi.NUMBER
    assert codes["d"] == dbapi.NUMBER
    assert codes["f"] == dbapi.NUMBER
    assert codes["v"] == dbapi.STRING
    assert codes["c"] == dbapi.STRING
    assert codes["e"] == dbapi.STRING
    assert codes["dt"] == dbapi.DATETIME
    assert codes["da"] == dbapi.DATE
    assert codes["ti"] == dbapi.TIME
    assert codes["b"] == dbapi.BINARY
    assert codes["i"] != dbapi.STRING
    assert codes["v"] != dbapi.NUMBER


# --- connection ----------------------------------------------------------------


def test_connect_sends_nothing_and_idle_connection_pins_nothing(conn, db, table):
    assert _pinned(db) == []
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES (%s)", ("a",))
    assert _pinned(db) == ["transaction"]
    conn.commit()
    assert _pinned(db) == []
    cur.execute("SELECT name FROM t")
    assert _pinned(db) == ["transaction"]
    conn.rollback()
    assert _pinned(db) == []


def test_uncommitted_work_is_invisible_and_rollback_discards_it(conn, direct, table):
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('a')")
    assert cur.execute("SELECT COUNT(*) FROM t") == 1
    assert cur.fetchone() == (1,)
    with direct.cursor() as dcur:
        dcur.execute("SELECT COUNT(*) FROM t")
        assert dcur.fetchone() == (0,)
    conn.rollback()
    cur.execute("SELECT COUNT(*) FROM t")
    assert cur.fetchone() == (0,)


def test_commit_makes_work_visible(conn, direct, table):
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('a')")
    conn.commit()
    with direct.cursor() as dcur:
        dcur.execute("SELECT name FROM t")
        assert dcur.fetchall() == (("a",),)


def test_commit_and_rollback_without_a_transaction_do_nothing(conn, db):
    conn.commit()
    conn.rollback()
    assert _pinned(db) == []


def test_an_open_transaction_holds_its_connection_until_commit(make_broker, connect):
    b = make_broker(max_size=1, queue_timeout=0.3)
    c1 = connect(endpoint=b.endpoint)
    c2 = connect(endpoint=b.endpoint)
    c1.cursor().execute("SELECT 1")
    with pytest.raises(client.PoolTimeout):
        c2.cursor().execute("SELECT 2")
    c1.commit()
    cur = c2.cursor()
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)


def test_autocommit_runs_each_statement_on_its_own(conn, db, direct, table):
    assert conn.autocommit == False  # noqa: E712  a bool-like value, as pymysql's
    conn.autocommit = True
    assert conn.get_autocommit() is True
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('a')")
    assert _pinned(db) == []
    with direct.cursor() as dcur:
        dcur.execute("SELECT COUNT(*) FROM t")
        assert dcur.fetchone() == (1,)
    conn.rollback()  # nothing to roll back
    cur.execute("SELECT COUNT(*) FROM t")
    assert cur.fetchone() == (1,)


def test_switching_autocommit_on_commits_the_open_transaction(conn, direct, table):
    conn.cursor().execute("INSERT INTO t (name) VALUES ('a')")
    conn.autocommit = True
    assert not conn.in_transaction
    with direct.cursor() as dcur:
        dcur.execute("SELECT COUNT(*) FROM t")
        assert dcur.fetchone() == (1,)


def test_close_rolls_back_and_forbids_further_use(broker, direct, table):
    c = dbapi.connect(endpoint=broker.endpoint)
    cur = c.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('a')")
    c.close()
    c.close()  # closing twice is harmless
    assert not c.open
    with direct.cursor() as dcur:
        dcur.execute("SELECT COUNT(*) FROM t")
        assert dcur.fetchone() == (0,)
    with pytest.raises(dbapi.Error):
        cur.execute("SELECT 1")
    with pytest.raises(dbapi.Error):
        c.cursor()
    with pytest.raises(dbapi.Error):
        c.commit()


def test_connection_context_manager_closes(broker):
    with dbapi.connect(endpoint=broker.endpoint) as c:
        assert c.open
    assert not c.open


def test_connections_share_one_client_per_endpoint(broker):
    a = dbapi.connect(endpoint=broker.endpoint)
    b = dbapi.connect(endpoint=broker.endpoint)
    other = dbapi.connect(endpoint=broker.endpoint, name="other")
    assert a.client is b.client
    assert other.client is not a.client
    mine = client.Client(endpoint=broker.endpoint)
    assert dbapi.connect(client=mine).client is mine
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect(client=mine, pool="other")


def test_dropped_connection_frees_its_transaction_at_once(make_broker, connect):
    b = make_broker(max_size=1, queue_timeout=2)
    c1 = dbapi.connect(endpoint=b.endpoint)
    c1.cursor().execute("SELECT 1")
    del c1
    gc.collect()
    c2 = connect(endpoint=b.endpoint)
    start = time.monotonic()
    c2.cursor().execute("SELECT 2")
    assert time.monotonic() - start < 2.5


def test_isolation_level_and_readonly_apply_to_each_transaction(
    broker, connect, direct, table
):
    direct.query("INSERT INTO t (name, n) VALUES ('a', 1)")
    c = connect(endpoint=broker.endpoint, isolation_level="read committed")
    assert c.isolation_level == "READ COMMITTED"
    cur = c.cursor()
    for expected in (1, 2):  # READ COMMITTED sees a commit made meanwhile
        cur.execute("SELECT n FROM t")
        assert cur.fetchone() == (expected,)
        direct.query("UPDATE t SET n = 2")
    c.rollback()
    c.isolation_level = None  # the server's REPEATABLE READ does not
    direct.query("UPDATE t SET n = 1")
    for _ in range(2):
        cur.execute("SELECT n FROM t")
        assert cur.fetchone() == (1,)
        direct.query("UPDATE t SET n = 2")
    c.rollback()
    with pytest.raises(dbapi.ProgrammingError):
        c.isolation_level = "CHAOS"
    ro = connect(endpoint=broker.endpoint, readonly=True)
    with pytest.raises(dbapi.DatabaseError, match="READ ONLY"):
        ro.cursor().execute("INSERT INTO t (name) VALUES ('b')")


def test_lost_transaction_must_be_rolled_back_before_going_on(make_broker, connect):
    b = make_broker(max_size=1, transaction_idle_timeout=0.5)
    c = connect(endpoint=b.endpoint)
    cur = c.cursor()
    cur.execute("SELECT 1")
    time.sleep(1.5)  # the broker rolls the silent transaction back
    with pytest.raises(dbapi.OperationalError, match="transaction_idle_timeout"):
        cur.execute("SELECT 2")
    with pytest.raises(dbapi.OperationalError, match="call rollback"):
        cur.execute("SELECT 3")
    c.rollback()
    cur.execute("SELECT 4")
    assert cur.fetchone() == (4,)


def test_commit_of_a_lost_transaction_raises(make_broker, connect):
    b = make_broker(max_size=1, transaction_idle_timeout=0.5)
    c = connect(endpoint=b.endpoint)
    c.cursor().execute("SELECT 1")
    time.sleep(1.5)
    with pytest.raises(dbapi.OperationalError):
        c.cursor().execute("SELECT 2")
    with pytest.raises(dbapi.OperationalError, match="cannot commit"):
        c.commit()
    assert not c.in_transaction


def test_ping_and_server_info(conn):
    assert 0 < conn.ping() < 5
    assert conn.character_set_name() == "utf8mb4"
    assert conn.get_server_info()
    assert conn.escape("it's") in ("'it\\'s'", "'it''s'")


def test_connection_made_before_fork_works_in_the_child(conn, table):
    conn.autocommit = True
    conn.cursor().execute("INSERT INTO t (name) VALUES ('parent')")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO t (name) VALUES ('child')")
            cur.execute("SELECT COUNT(*) FROM t")
            code = 0 if cur.fetchone() == (2,) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cur = conn.cursor()
    cur.execute("SELECT name FROM t ORDER BY id")
    assert cur.fetchall() == (("parent",), ("child",))


def test_transaction_open_at_fork_stays_the_parents(conn, table):
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('parent')")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                conn.cursor().execute("SELECT 1")
            except dbapi.InterfaceError:
                conn.rollback()  # forgets the parent's transaction, sends nothing
                c = conn.cursor()
                c.execute("SELECT COUNT(*) FROM t")
                code = 0 if c.fetchone() == (0,) else 3
                conn.rollback()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    conn.commit()
    cur.execute("SELECT name FROM t")
    assert cur.fetchall() == (("parent",),)


# --- cursor ----------------------------------------------------------------------


def test_cursor_attributes_before_execute(conn):
    cur = conn.cursor()
    assert cur.description is None
    assert cur.rowcount == -1
    assert cur.arraysize == 1
    assert cur.connection is conn
    with pytest.raises(dbapi.Error):
        cur.fetchone()
    cur.setinputsizes([10])
    cur.setoutputsize(10)
    cur.setoutputsize(10, 0)


def test_execute_results_rowcount_and_lastrowid(conn, table):
    cur = conn.cursor()
    assert cur.execute("INSERT INTO t (name, n) VALUES (%s, %s)", ("a", 1)) == 1
    assert cur.rowcount == 1
    assert cur.lastrowid == 1
    assert cur.description is None
    assert cur.fetchone() is None  # no result set: None, as pymysql
    cur.execute(
        "INSERT INTO t (name, n) VALUES (%(name)s, %(n)s)", {"name": "b", "n": 2}
    )
    assert cur.lastrowid == 2
    assert cur.execute("UPDATE t SET n = n + 10") == 2
    cur.execute("SELECT name, n FROM t ORDER BY id")
    assert cur.rowcount == 2
    assert [d[0] for d in cur.description] == ["name", "n"]
    assert cur.fetchall() == (("a", 11), ("b", 12))


def test_fetch_semantics(conn):
    cur = conn.cursor()
    cur.execute("SELECT seq FROM seq_1_to_7")
    assert cur.fetchone() == (1,)
    assert cur.rownumber == 1
    assert cur.fetchmany() == ((2,),)  # arraysize rows, a tuple as pymysql's
    cur.arraysize = 2
    assert cur.fetchmany() == ((3,), (4,))
    assert cur.fetchmany(10) == ((5,), (6,), (7,))
    assert cur.fetchmany(3) == ()
    assert cur.fetchone() is None
    assert cur.fetchall() == ()
    cur.execute("SELECT seq FROM seq_1_to_3")
    assert list(cur) == [(1,), (2,), (3,)]
    cur.execute("SELECT seq FROM seq_1_to_3")
    cur.scroll(2, mode="absolute")
    assert cur.fetchone() == (3,)
    cur.scroll(-2)
    assert cur.fetchone() == (2,)
    with pytest.raises(IndexError):
        cur.scroll(5)
    cur.execute("SELECT 1 FROM DUAL WHERE 0")
    assert cur.description is not None
    assert cur.rowcount == 0
    assert cur.fetchall() == ()


def test_executemany_totals_rowcount(conn, table):
    cur = conn.cursor()
    rows = [(f"n{i}", i) for i in range(50)]
    assert cur.executemany("INSERT INTO t (name, n) VALUES (%s, %s)", rows) == 50
    assert cur.rowcount == 50
    params = [{"n": 1}, {"n": 2}, {"n": 99}]
    assert cur.executemany("DELETE FROM t WHERE n = %(n)s", params) == 2
    cur.execute("SELECT COUNT(*) FROM t")
    assert cur.fetchone() == (48,)


def test_closed_cursor_raises(conn):
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.close()
    with pytest.raises(dbapi.ProgrammingError, match="already closed"):
        cur.close()
    with pytest.raises(dbapi.Error):
        cur.execute("SELECT 1")
    with pytest.raises(dbapi.Error):
        cur.fetchall()


def test_cursor_context_manager_and_mogrify(conn):
    with conn.cursor() as cur:
        assert cur.mogrify("SELECT %s, %s", (1, "x'y")) in (
            "SELECT 1, 'x\\'y'",
            "SELECT 1, 'x''y'",
        )
    with pytest.raises(dbapi.Error):
        cur.execute("SELECT 1")


def test_database_errors_keep_the_transaction(conn, table):
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name) VALUES ('a')")
    with pytest.raises(dbapi.IntegrityError) as info:
        cur.execute("INSERT INTO t (name) VALUES ('a')")
    assert info.value.errno == 1062
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELEKT 1")
    assert info.value.errno == 1064
    with pytest.raises(dbapi.ProgrammingError):
        cur.execute("SELECT %s, %s", (1,))
    conn.commit()
    cur.execute("SELECT name FROM t")
    assert cur.fetchall() == (("a",),)


def test_callproc_in_and_out_parameters(conn, db):
    db.query(
        "CREATE PROCEDURE add_one(IN x INT, OUT y INT) BEGIN SET y = x + 1; "
        "SELECT x AS got; END"
    )
    cur = conn.cursor()
    assert cur.callproc("add_one", (41, None)) == (41, None)
    assert cur.fetchall() == ((41,),)
    assert cur.nextset() is True  # the CALL's own (empty) result, as pymysql
    assert cur.description is None
    assert cur.nextset() is None
    cur.execute("SELECT @_add_one_1")
    assert cur.fetchone() == (42,)
    conn.rollback()
    conn.autocommit = True
    cur.callproc("add_one", (1, None))
    assert cur.fetchall() == ((1,),)


# --- unbuffered cursor -----------------------------------------------------------


def test_sscursor_streams_in_autocommit(conn, db, direct):
    conn.autocommit = True
    cur = conn.cursor(dbapi.SSCursor)
    cur.chunk_rows = 100
    cur.execute("SELECT seq, REPEAT('x', 10) FROM seq_1_to_1000")
    assert cur.rowcount == -1
    assert [d[0] for d in cur.description] == ["seq", "REPEAT('x', 10)"]
    assert _pinned(db) == ["stream"]
    assert cur.fetchone() == (1, "x" * 10)
    assert len(cur.fetchmany(150)) == 150
    rest = cur.fetchall()
    assert len(rest) == 849
    assert rest[-1] == (1000, "x" * 10)
    assert cur.fetchone() is None
    assert _pinned(db) == []


def test_sscursor_closed_early_frees_the_connection(make_broker, connect):
    b = make_broker(max_size=1, queue_timeout=2)
    c = connect(endpoint=b.endpoint, autocommit=True)
    cur = c.cursor(dbapi.SSCursor)
    cur.chunk_rows = 10
    cur.execute("SELECT seq FROM seq_1_to_100000")
    assert cur.fetchmany(3) == [(1,), (2,), (3,)]
    cur.close()
    plain = c.cursor()
    plain.execute("SELECT 5")
    assert plain.fetchone() == (5,)


def test_sscursor_first_read_streams_then_a_transaction_buffers(conn, db, table):
    cur = conn.cursor(dbapi.SSCursor)
    cur.chunk_rows = 2
    cur.execute("SELECT seq FROM seq_1_to_5")
    assert _pinned(db) == ["stream"]
    assert cur.fetchall() == [(1,), (2,), (3,), (4,), (5,)]
    cur.execute("INSERT INTO t (name) VALUES ('a')")  # a write: in a transaction
    assert cur.rowcount == 1
    assert _pinned(db) == ["transaction"]
    cur.execute("SELECT name FROM t")  # sees the uncommitted row
    assert cur.fetchall() == [("a",)]
    conn.rollback()
    cur.execute("SELECT name FROM t FOR UPDATE")  # locks: in a transaction
    assert _pinned(db) == ["transaction"]
    assert cur.fetchall() == []
    conn.rollback()


def test_sscursor_write_in_autocommit_reports_rowcount(conn, table):
    conn.autocommit = True
    cur = conn.cursor(dbapi.SSCursor)
    assert cur.execute("INSERT INTO t (name) VALUES ('a'), ('b')") == 2
    assert cur.lastrowid == 1
    assert cur.description is None
    assert cur.fetchone() is None


def test_sscursor_errors_are_database_errors(conn):
    conn.autocommit = True
    cur = conn.cursor(dbapi.SSCursor)
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELECT * FROM no_such_table")
    assert info.value.errno == 1146


def test_sscursor_error_in_mid_stream_is_a_client_error(conn):
    conn.autocommit = True
    cur = conn.cursor(dbapi.SSCursor)
    cur.chunk_rows = 10
    cur.execute(
        "SELECT seq, IF(seq = 50, (SELECT 1 UNION SELECT 2), seq) FROM seq_1_to_100"
    )
    assert len(cur.fetchmany(40)) == 40
    with pytest.raises(dbapi.DatabaseError) as info:
        cur.fetchall()
    assert info.value.errno == 1242


def test_values_match_pymysql(conn, direct):
    sql = (
        "SELECT 1, 2.5, CAST(1.25 AS DECIMAL(4,2)), 'é', x'00', NULL,"
        " DATE '2024-01-02', TIMESTAMP '2024-01-02 03:04:05', TIME '-01:02:03'"
    )
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    with direct.cursor() as dcur:
        dcur.execute(sql)
        assert row == dcur.fetchone()
    assert row[2] == decimal.Decimal("1.25")
    assert isinstance(row[7], datetime.datetime)
    assert pymysql.paramstyle == dbapi.paramstyle
