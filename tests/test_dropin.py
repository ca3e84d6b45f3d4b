"""Code moved from pymysql: FOUND_ROWS, counts after close, XA, nextset, pymysql's API.

Each test runs the same thing through ``client.dbapi`` and, where the answer is
pymysql's to give, through a plain pymysql connection to the same server.
"""

import datetime
import functools

import pymysql
import pytest
from pymysql.constants import CLIENT, FIELD_TYPE

import client
from client import dbapi


@pytest.fixture
def connect(connect, broker):
    """The shared dbapi.connect, aimed at the test broker."""
    return functools.partial(connect, endpoint=broker.endpoint, timeout=10)


@pytest.fixture
def table(table, db):
    """The shared table t, with three rows."""
    db.query("INSERT INTO t (name, n) VALUES ('a', 1), ('b', 2), ('c', 3)")
    return table


def _direct(mysql_server, database, **kwargs):
    return pymysql.connect(
        host=mysql_server.host,
        port=mysql_server.port,
        user=mysql_server.user,
        password=mysql_server.password,
        database=database,
        autocommit=True,
        **kwargs,
    )


UPDATES = [
    "UPDATE t SET n = n WHERE id = 1",  # matched 1, changed 0
    "UPDATE t SET n = 1 WHERE id IN (1, 2)",  # matched 2, changed 1
    "UPDATE t SET n = n WHERE id = 99",  # matched 0
    "UPDATE t t1 JOIN t t2 ON t1.id = t2.id SET t1.n = t2.n",  # multi-table
    "INSERT INTO t (name, n) VALUES ('a', 5), ('z', 9) ON DUPLICATE KEY UPDATE n = 5",
    "REPLACE INTO t (id, name, n) VALUES (3, 'c', 30)",
    "DELETE FROM t WHERE id = 2",
]


# --- 1: CLIENT.FOUND_ROWS ----------------------------------------------------------


@pytest.mark.parametrize("found_rows", [False, True])
def test_rowcounts_match_pymysql_with_and_without_found_rows(
    connect, mysql_server, database, table, found_rows
):
    flag = CLIENT.FOUND_ROWS if found_rows else 0
    conn = connect(client_flag=flag)
    direct = _direct(mysql_server, database, client_flag=flag)
    try:
        for sql in UPDATES:
            cur, dcur = conn.cursor(), direct.cursor()
            dcur.execute("BEGIN")
            expected = dcur.execute(sql)
            dcur.execute("ROLLBACK")
            assert cur.execute(sql) == expected, sql
            assert cur.rowcount == expected == conn.affected_rows(), sql
            conn.rollback()
    finally:
        direct.close()


def test_found_rows_totals_matched_rows_of_executemany(connect, table):
    conn = connect(client_flag=CLIENT.FOUND_ROWS)
    cur = conn.cursor()
    sql = "UPDATE t SET n = n WHERE name = %s"
    assert cur.executemany(sql, [("a",), ("b",), ("nope",)]) == 2
    conn.rollback()
    plain = connect()
    assert plain.cursor().executemany(sql, [("a",), ("b",)]) == 0


def test_plain_query_counts_changed_rows_and_shows_matched(db, table):
    r = db.query("UPDATE t SET n = 1 WHERE id IN (1, 2)")
    assert (r.rowcount, r.matched) == (1, 2)
    assert r.info.startswith("Rows matched: 2  Changed: 1")
    assert db.query("SELECT 1").matched is None
    total = db.executemany("UPDATE t SET n = n WHERE id = %s", [(1,), (2,)])
    assert (total.rowcount, total.matched) == (0, 2)


# --- 2: counts stay readable after close --------------------------------------------


def test_lastrowid_rowcount_description_survive_close(connect, table):
    cur = connect().cursor()
    cur.execute("INSERT INTO t (name, n) VALUES ('d', 4)")
    cur.close()
    assert (cur.lastrowid, cur.rowcount) == (4, 1)
    cur = connect().cursor()
    cur.execute("SELECT name FROM t WHERE id = 1")
    cur.close()
    assert cur.description[0][0] == "name"
    assert cur.rowcount == 1


# --- 3: XA --------------------------------------------------------------------------


def test_xa_transaction_runs_outside_begin_and_commits(connect, db, table):
    conn = connect()
    cur = conn.cursor()
    cur.execute("XA START 'x1'")
    assert [p["kind"] for p in db.stats()["pins"]] == ["session"]
    cur.execute("INSERT INTO t (name, n) VALUES ('xa', 7)")
    cur.execute("XA END 'x1'")
    cur.execute("XA PREPARE 'x1'")
    other = connect(autocommit=True).cursor()
    other.execute("XA RECOVER")
    assert [row[3] for row in other.fetchall()] == [b"x1"]
    cur.execute("XA COMMIT 'x1'")
    assert db.stats()["pins"] == []
    assert db.query("SELECT n FROM t WHERE name = 'xa'").scalar() == 7
    cur.execute("SELECT COUNT(*) FROM t")  # an ordinary transaction again
    assert [p["kind"] for p in db.stats()["pins"]] == ["transaction"]
    conn.rollback()


def test_xa_rolled_back_by_the_connection(connect, db, table):
    conn = connect()
    cur = conn.cursor()
    cur.execute("XA START 'x2'")
    cur.execute("INSERT INTO t (name, n) VALUES ('gone', 8)")
    conn.rollback()
    assert db.stats()["pins"] == []
    assert db.query("SELECT COUNT(*) FROM t WHERE name = 'gone'").scalar() == 0
    assert db.query("XA RECOVER").rows == []


# --- 5: several result sets ---------------------------------------------------------


@pytest.fixture
def two_sets(db):
    db.query(
        "CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 'x' AS b, 2 AS c; END"
    )


def test_nextset_walks_every_result_set_as_pymysql(
    connect, mysql_server, database, two_sets
):
    direct = _direct(mysql_server, database)
    try:
        for c in (connect(), direct):
            cur = c.cursor()
            cur.execute("CALL two_sets()")
            seen = [(cur.description and cur.description[0][0], cur.fetchall())]
            while cur.nextset():
                seen.append((cur.description and cur.description[0][0], cur.fetchall()))
            assert seen == [("a", ((1,),)), ("b", (("x", 2),)), (None, [])]
    finally:
        direct.close()


def test_query_result_chains_further_result_sets(db, two_sets):
    r = db.query("CALL two_sets()")
    assert r.rows == [(1,)]
    assert r.next_result.rows == [("x", 2)]
    assert r.next_result.columns == ("b", "c")
    assert r.next_result.next_result.columns == ()
    assert r.next_result.next_result.next_result is None


# --- 6: pymysql's API ---------------------------------------------------------------


def test_autocommit_is_a_method_and_a_value(connect, db, table):
    conn = connect()
    assert not conn.autocommit
    conn.autocommit(True)
    assert conn.autocommit
    assert conn.get_autocommit() is True
    conn.cursor().execute("UPDATE t SET n = 10 WHERE id = 1")
    assert db.stats()["pins"] == []
    conn.autocommit = False
    assert conn.autocommit == False  # noqa: E712


def test_callproc_backquotes_the_name(connect, db):
    db.query("CREATE PROCEDURE `odd name`(IN x INT) SELECT x + 1")
    cur = connect().cursor()
    cur.callproc("odd name", (41,))
    assert cur.fetchall() == ((42,),)
    assert cur._executed == "CALL `odd name`(@`_odd name_0`)"


def test_fetch_results_are_pymysqls(connect, mysql_server, database, table):
    direct = _direct(mysql_server, database)
    try:
        for c in (connect(autocommit=True), direct):
            cur = c.cursor()
            cur.execute("SELECT id FROM t ORDER BY id")
            assert cur.fetchall() == ((1,), (2,), (3,))
            cur.execute("UPDATE t SET n = 2 WHERE id = 1")
            assert cur.fetchone() is None
            assert cur.fetchmany() == ()
            assert cur.fetchall() == []
            cur.execute("SELECT CAST('x' AS SIGNED)")
            assert cur.warning_count == 1
    finally:
        direct.close()
    cur = connect().cursor()
    cur.close()
    with pytest.raises(dbapi.ProgrammingError, match="already closed"):
        cur.close()


@pytest.mark.parametrize(
    ("cursorclass", "rows"),
    [
        (pymysql.cursors.DictCursor, ({"id": 1, "t2.id": 1},)),
        (pymysql.cursors.SSDictCursor, [{"id": 1, "t2.id": 1}]),
        (dbapi.DictCursor, ({"id": 1, "t2.id": 1},)),
    ],
)
def test_dict_cursors_from_pymysqls_classes(
    connect, mysql_server, database, table, cursorclass, rows
):
    sql = "SELECT t.id, t2.id FROM t JOIN t AS t2 USING (id) WHERE t.id = 1"
    cur = connect(autocommit=True).cursor(cursorclass)
    cur.execute(sql)
    assert cur.fetchall() == rows
    direct = _direct(mysql_server, database, cursorclass=pymysql.cursors.DictCursor)
    try:
        with direct.cursor() as dcur:
            dcur.execute(sql)
            assert list(dcur.fetchall()) == list(rows)
    finally:
        direct.close()
    via_connect = connect(cursorclass=pymysql.cursors.DictCursor).cursor()
    via_connect.execute("SELECT 1 AS one")
    assert via_connect.fetchone() == {"one": 1}


def test_connection_helpers_as_pymysql(connect, table):
    conn = connect()
    cur = conn.cursor()
    cur.execute("INSERT INTO t (name, n) VALUES (%s, %s)", ("it's", 5))
    assert conn.insert_id() == 4
    assert conn.affected_rows() == 1
    assert cur._executed == "INSERT INTO t (name, n) VALUES ('it\\'s', 5)"
    assert conn.encoding == "utf8"
    assert conn.literal("a'b") == "'a\\'b'"
    assert conn.literal(datetime.date(2024, 1, 2)) == "'2024-01-02'"
    for call, match in [
        (lambda: conn.select_db("other"), "select_db"),
        (conn.thread_id, "thread_id"),
        (lambda: conn.kill(1), "kill"),
    ]:
        with pytest.raises(dbapi.NotSupportedError, match=match):
            call()


# --- connect(): pymysql's keyword arguments -----------------------------------------


def test_connect_takes_what_django_and_sqlalchemy_pass(connect, table):
    conv = {**pymysql.converters.conversions, FIELD_TYPE.LONG: lambda v: f"<{v}>"}
    conn = connect(
        conv=conv,
        charset="utf8",
        use_unicode=True,
        client_flag=CLIENT.FOUND_ROWS | CLIENT.MULTI_RESULTS,
        connect_timeout=5,
        autocommit=None,
    )
    cur = conn.cursor()
    cur.execute("SELECT id FROM t WHERE id = %s", (1,))
    assert cur.fetchall() == (("<1>",),)
    assert cur.execute("UPDATE t SET n = n WHERE id = 1") == 1
    conn.rollback()
    raw = connect(use_unicode=False).cursor()
    raw.execute("SELECT name FROM t WHERE id = 1")
    assert raw.fetchall() == ((b"a",),)
    plain = connect().cursor()
    plain.execute("SELECT id FROM t WHERE id = 1")
    assert plain.fetchall() == ((1,),)  # the shared codec kept pymysql's decoders


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": "db.example"}, "host .*pool's dsn"),
        ({"database": "other", "user": "u"}, "database .*user"),
        ({"init_command": "SET sql_mode=''"}, "init_command .*init_sql"),
        ({"sql_mode": "ANSI"}, "sql_mode"),
        ({"client_flag": CLIENT.MULTI_STATEMENTS}, "MULTI_STATEMENTS"),
        ({"local_infile": True}, "local_infile"),
    ],
)
def test_connect_refuses_what_it_cannot_honour(kwargs, match):
    with pytest.raises(dbapi.NotSupportedError, match=match):
        dbapi.connect(endpoint="ipc:///nowhere", **kwargs)


def test_connect_refuses_unknown_keywords_and_other_charsets(connect):
    with pytest.raises(TypeError, match="nonsense"):
        dbapi.connect(endpoint="ipc:///nowhere", nonsense=1)
    cur = connect(charset="latin1").cursor()
    with pytest.raises(dbapi.NotSupportedError, match=r"latin1.*utf8mb4"):
        cur.execute("SELECT 1")


def test_load_data_local_is_refused_with_a_reason(db, connect, table):
    with pytest.raises(client.OperationalError) as caught:  # MySQL's own refusal
        db.query("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE t")
    assert caught.value.errno == 4166
    with pytest.raises(dbapi.NotSupportedError, match="LOAD DATA LOCAL"):
        connect().cursor().execute(
            "load data local infile '/etc/hostname' into table t"
        )


def test_connection_finishes_an_xa_transaction_it_leaves(connect, db, table):
    for finish, kept in [("close", 0), ("rollback", 0), ("commit", 1)]:
        conn = connect()
        cur = conn.cursor()
        cur.execute("XA START 'x3'")
        cur.execute("INSERT INTO t (name, n) VALUES ('later', 9)")
        cur.execute("XA END 'x3'")
        cur.execute("XA PREPARE 'x3'")
        getattr(conn, finish)()  # a prepared XA left on a reset connection
        assert db.stats()["pins"] == []  # would hold its locks: finished instead
        assert db.query("XA RECOVER").rows == []
        found = db.query("SELECT COUNT(*) FROM t WHERE name = 'later'").scalar()
        assert found == kept, finish
    conn = connect()
    conn.cursor().execute("XA START 'x4'")
    conn.cursor().execute("UPDATE t SET n = 99 WHERE id = 1")
    conn.commit()  # still active: XA END, then XA COMMIT ONE PHASE
    assert db.query("SELECT n FROM t WHERE id = 1").scalar() == 99


def test_conv_applies_to_streamed_rows_and_encoders_are_the_connections(connect, table):
    conv = {**pymysql.converters.conversions, FIELD_TYPE.LONG: lambda v: f"<{v}>"}
    conn = connect(conv=conv, autocommit=True)
    cur = conn.cursor(dbapi.SSCursor)
    cur.execute("SELECT id FROM t ORDER BY id")
    assert cur.fetchall() == [("<1>",), ("<2>",), ("<3>",)]
    plain = connect()
    assert plain.encoders[str] is pymysql.converters.escape_str
    plain.encoders[bool] = lambda v, mapping=None: "'yes'" if v else "'no'"
    assert plain.literal(True) == "'yes'"
    assert connect().literal(True) == "1"  # another connection: pymysql's
