"""End to end through client.query: rows, params, types, NULLs, errors."""

import datetime
import decimal

import pymysql
import pytest

import client

COLUMNS = """
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED,
    d DECIMAL(65,30), f FLOAT, dbl DOUBLE,
    txt VARCHAR(100) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4,
    bin VARBINARY(300), bl BLOB,
    dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), yr YEAR,
    bt BIT(8), en ENUM('a','b'), st SET('x','y','z'), js JSON
"""
ALL_BYTES = bytes(range(256))

ROWS = [
    (
        1,
        -128,
        255,
        -32768,
        65535,
        -8388608,
        16777215,
        -2147483648,
        4294967295,
        -9223372036854775808,
        18446744073709551615,
        decimal.Decimal(
            "-12345678901234567890123456789012345.123456789012345678901234567890"
        ),
        1.5,
        -2.2250738585072014e-308,
        "héllo wörld 🐍🎉",
        "ünïcode " * 50,
        ALL_BYTES,
        ALL_BYTES * 4,
        datetime.date(1000, 1, 1),
        datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime.datetime(2038, 1, 19, 3, 14, 7, 123456),
        datetime.timedelta(hours=-838, minutes=-59, seconds=-59),
        1901,
        b"\xa5",
        "b",
        "x,z",
        '{"k": [1, 2.5, "v", null]}',
    ),
    (
        2,
        127,
        0,
        32767,
        0,
        8388607,
        0,
        2147483647,
        0,
        9223372036854775807,
        0,
        decimal.Decimal("0.000000000000000000000000000001"),
        -3.25,
        1.7976931348623157e308,
        "",
        "",
        b"",
        b"\x00",
        datetime.date(9999, 12, 31),
        datetime.datetime(1000, 1, 1, 0, 0, 0, 0),
        datetime.datetime(1970, 1, 2, 0, 0, 0, 1),
        datetime.timedelta(hours=838, minutes=59, seconds=59, microseconds=999999),
        2155,
        b"\x00",
        "a",
        "",
        "[]",
    ),
    (3,) + (None,) * 26,
]


@pytest.fixture
def typed_table(direct):
    with direct.cursor() as cur:
        cur.execute(f"CREATE TABLE typed ({COLUMNS})")
        cur.execute("SET time_zone = '+00:00'")
        placeholders = ", ".join(["%s"] * len(ROWS[0]))
        cur.executemany(f"INSERT INTO typed VALUES ({placeholders})", ROWS)
    return "typed"


def _direct_rows(direct, sql, params=None):
    with direct.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall(), tuple(d[0] for d in cur.description)


def _assert_same(got, want):
    assert len(got) == len(want)
    for got_row, want_row in zip(got, want, strict=True):
        for g, w in zip(got_row, want_row, strict=True):
            assert type(g) is type(w), (g, w)
            assert g == w


def test_every_type_matches_a_direct_pymysql_cursor(db, direct, typed_table):
    sql = "SELECT * FROM typed ORDER BY id"
    want, want_columns = _direct_rows(direct, sql)
    got = db.query(sql)
    assert got.columns == want_columns
    _assert_same(got.rows, want)
    assert got.rowcount == 3
    assert got.rows[0][10] == 18446744073709551615
    assert got.rows[0][14] == "héllo wörld 🐍🎉"
    assert got.rows[0][16] == ALL_BYTES


def test_parameters_of_every_type_go_in_as_pymysql_sends_them(db, direct, typed_table):
    placeholders = ", ".join(["%s"] * len(ROWS[0]))
    for row in ROWS:
        db.query(f"INSERT INTO typed VALUES ({placeholders})", (row[0] + 100, *row[1:]))
    want, _ = _direct_rows(direct, "SELECT * FROM typed WHERE id < 100 ORDER BY id")
    got, _ = _direct_rows(direct, "SELECT * FROM typed WHERE id > 100 ORDER BY id")
    _assert_same([r[1:] for r in got], [r[1:] for r in want])


def test_mapping_parameters_and_percent_signs(db):
    r = db.query("SELECT %(a)s, %(b)s, '100%%'", {"a": "it's", "b": None})
    assert r.rows == [("it's", None, "100%")]
    assert db.query("SELECT '100%'").scalar() == "100%"


def test_result_api(db, direct):
    db.query("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20))")
    ins = db.query("INSERT INTO t (name) VALUES (%s), (%s)", ("a", "b"))
    assert ins.rowcount == 2
    assert ins.lastrowid == 1
    assert ins.columns == ()
    r = db.query("SELECT id, name FROM t ORDER BY id")
    assert len(r) == 2
    assert r[1] == (2, "b")
    assert list(r) == [(1, "a"), (2, "b")]
    assert r.scalar() == 1
    assert r.dicts() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert r.rowcount == 2
    assert db.query("SELECT id FROM t WHERE id > 5").scalar() is None


def test_executemany_totals_rowcount_and_batches_like_pymysql(db):
    db.query("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT)")
    r = db.executemany(
        "INSERT INTO t (a, b) VALUES (%s, %s)", [(i, i * 2) for i in range(1000)]
    )
    assert r.rowcount == 1000
    assert db.query("SELECT COUNT(*), SUM(b) FROM t").rows == [
        (1000, decimal.Decimal(999000))
    ]
    r = db.executemany("UPDATE t SET b = %s WHERE a = %s", [(0, 1), (0, 2), (0, 99999)])
    assert r.rowcount == 2


@pytest.mark.parametrize(
    ("sql", "cls", "errno", "sqlstate"),
    [
        ("INSERT INTO t VALUES (1)", client.IntegrityError, 1062, "23000"),
        ("SELEC 1", client.ProgrammingError, 1064, "42000"),
        ("SELECT * FROM no_such_table", client.ProgrammingError, 1146, "42S02"),
        (
            "SELECT 1/0 + CAST('x' AS SIGNED) FROM dual WHERE no_col",
            client.OperationalError,
            1054,
            "42S22",
        ),
    ],
)
def test_mysql_errors_keep_pymysql_class_errno_and_sqlstate(
    db, direct, sql, cls, errno, sqlstate
):
    db.query("CREATE TABLE t (id INT PRIMARY KEY)")
    db.query("INSERT INTO t VALUES (1)")
    with direct.cursor() as cur, pytest.raises(pymysql.MySQLError) as direct_exc:
        cur.execute(sql)
    with pytest.raises(client.Error) as exc:
        db.query(sql)
    assert type(exc.value).__name__ == type(direct_exc.value).__name__
    assert type(exc.value) is cls
    assert exc.value.errno == errno == direct_exc.value.args[0]
    assert exc.value.sqlstate == sqlstate
    assert exc.value.msg == direct_exc.value.args[1]
    assert db.query("SELECT 42").scalar() == 42


def test_wrong_parameter_count_is_a_programming_error(db):
    with pytest.raises(client.ProgrammingError, match="not enough arguments"):
        db.query("SELECT %s, %s", (1,))
    with pytest.raises(client.ProgrammingError):
        db.query("SELECT %(a)s", {"b": 1})
    assert db.query("SELECT 1").scalar() == 1


def test_unknown_pool_is_a_programming_error(broker):
    with (
        broker.client(pool="nope") as c,
        pytest.raises(client.ProgrammingError, match="unknown pool 'nope'"),
    ):
        c.query("SELECT 1")


def test_named_pool_is_selected_by_client(make_broker):
    b = make_broker(
        pools={"reports": {"max_size": 1, "init_sql": ["SET @which = 'reports'"]}}
    )
    with b.client(pool="reports") as c:
        assert c.query("SELECT @which").scalar() == "reports"
    with b.client() as c:
        assert c.query("SELECT @which").scalar() is None


def test_module_level_functions_use_broker_endpoint(broker, monkeypatch):
    import client.api

    monkeypatch.setenv("BROKER_ENDPOINT", broker.endpoint)
    monkeypatch.setattr(client.api, "_default", None)
    assert client.query("SELECT %s", (1,)).scalar() == 1
    assert client.executemany("SELECT %s", [(1,), (2,)]).rowcount == 2
    assert client.default_client().endpoint == broker.endpoint
    client.default_client().close()


def test_call_with_several_result_sets_keeps_the_connection_in_step(make_broker):
    b = make_broker(max_size=1)
    c = b.client()
    c.query(
        "CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END"
    )
    r = c.query("CALL two_sets()")
    assert r.columns == ("a",)
    assert r.rows == [(1,)]
    for i in range(5):  # the same connection answers the next statements in step
        assert c.query("SELECT %s", (i,)).scalar() == i
    assert list(c.stream("CALL two_sets()")) == [(1,)]
    assert c.query("SELECT 'after stream'").scalar() == "after stream"
