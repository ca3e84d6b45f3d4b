"""Replica rules without a network: GTIDs, eligibility and hysteresis, config keys.

The end-to-end behaviour over real replication is in test_replica.py; these
pin down the pieces it is made of, quickly.
"""

from __future__ import annotations

import pytest

from broker import gtid
from broker.config import ConfigError, PoolConfig
from broker.replica import RETURN_AFTER, Check, Replica, State
from broker.request import check_body
from client.wire import statement
from client.wire.protocol import Op

pytestmark = pytest.mark.timeout(10)

PRIMARY = "mysql://app@10.0.0.11:3306/appdb"
REPLICA = "mysql://app@10.0.0.12:3306/appdb"
# An OK packet MariaDB 10.11 sent for an INSERT with last_gtid tracked.
OK_WITH_GTID = b"\x00\x01\x01\x02@\x00\x00\x00\x13\x00\x11\tlast_gtid\x060-1-11"


def _packet(payload: bytes, seq: int = 1) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def test_last_gtid_is_read_from_the_ok_packet() -> None:
    assert gtid.last_gtid(_packet(OK_WITH_GTID)) == {0: (1, 11)}
    plain_ok = b"\x00\x00\x00\x02\x00\x00\x00"
    assert gtid.last_gtid(_packet(plain_ok)) is None
    assert gtid.last_gtid(_packet(OK_WITH_GTID[:-3])) is None  # cut short: no GTID


def test_positions_compare_per_domain() -> None:
    have = gtid.parse("0-1-42,1-2-7")
    assert have == {0: (1, 42), 1: (2, 7)}
    assert gtid.covers(have, gtid.parse("0-1-42"))
    assert not gtid.covers(have, gtid.parse("0-1-43"))
    assert not gtid.covers(have, gtid.parse("2-1-1"))  # a domain it never saw
    gtid.advance(have, gtid.parse("0-1-50,2-3-1"))
    assert gtid.to_text(have) == "0-1-50,1-2-7,2-3-1"


def test_first_value_reads_a_one_row_result() -> None:
    column = b"\x03def" + b"\x00" * 20
    eof = b"\xfe\x00\x00\x02\x00"
    packets = [b"\x01", column, eof, b"\x02-1", eof]
    data = b"".join(_packet(p, i + 1) for i, p in enumerate(packets))
    assert gtid.first_value(data) == b"-1"
    null = b"".join(
        _packet(p, i + 1) for i, p in enumerate([b"\x01", column, eof, b"\xfb", eof])
    )
    assert gtid.first_value(null) is None


@pytest.mark.parametrize(
    ("sql", "safe"),
    [
        (b"SELECT * FROM t WHERE id = 1", True),
        (b"SELECT @@server_id", True),
        (b"WITH x AS (SELECT 1) SELECT * FROM x", True),
        (b"SHOW TABLES", True),
        (b"SELECT * FROM t FOR UPDATE", False),
        (b"SELECT * FROM t LOCK IN SHARE MODE", False),
        (b"SELECT GET_LOCK('a', 1)", False),
        (b"SELECT a INTO @x FROM t", False),
        (b"SELECT NEXTVAL(s)", False),
        (b"INSERT INTO t VALUES (1)", False),
        (b"CALL p()", False),
    ],
)
def test_only_plain_reads_may_go_to_a_replica(sql: bytes, safe: bool) -> None:
    assert statement.replica_safe(sql) is safe


class _NoConnector:
    def open(self, config: PoolConfig) -> None:
        raise AssertionError("the rules open no connection")


def _replica(**keys: object) -> Replica:
    pool = PoolConfig(name="default", dsn=PRIMARY, replicas=[REPLICA], **keys)
    return Replica(pool.replica_configs()[0], _NoConnector())  # type: ignore[arg-type]


GOOD = Check(io_running="Yes", sql_running="Yes", lag=0.0, position="0-1-5")


def test_a_replica_leaves_after_one_bad_check_and_returns_after_a_few() -> None:
    r = _replica(replica_max_lag=5.0)
    r.checked(GOOD, primary_down=False)
    assert r.state is State.SERVING  # the first good check: at once
    assert r.position == {0: (1, 5)}
    r.checked(Check(io_running="Yes", sql_running="Yes", lag=6.0), False)
    assert r.state is State.LAGGING
    assert "6 s behind" in r.why
    for _ in range(RETURN_AFTER - 1):
        r.checked(GOOD, primary_down=False)
        assert r.state is State.LAGGING
    r.checked(GOOD, primary_down=False)
    assert r.state is State.SERVING
    r.checked(Check(error="Can't connect"), primary_down=False)
    assert r.state is State.DOWN


def test_null_lag_or_a_stopped_thread_is_not_eligible() -> None:
    r = _replica()
    r.checked(Check(io_running="Yes", sql_running="Yes", lag=None), False)
    assert r.state is State.LAGGING
    assert "NULL" in r.why
    r.checked(Check(io_running="Yes", sql_running="No", lag=None), False)
    assert "replication not running" in r.why


def test_reads_survive_the_primary_loss_while_the_sql_thread_runs() -> None:
    r = _replica(replica_max_lag=5.0)
    r.checked(GOOD, primary_down=False)
    reconnecting = Check(io_running="Connecting", sql_running="Yes", lag=None)
    r.checked(reconnecting, primary_down=False)  # the primary is reachable: no
    assert r.state is State.LAGGING
    assert r.survivor  # ... but ReadSplit may use it once the primary is lost
    r.checked(reconnecting, primary_down=True)
    assert r.state is State.SERVING  # at once: the reads have nowhere else to go
    r.checked(Check(io_running="Connecting", sql_running="No", lag=None), True)
    assert r.state is State.LAGGING
    assert not r.survivor


def test_replica_configs_share_credentials_and_cap_their_size() -> None:
    pool = PoolConfig(
        name="default",
        dsn=PRIMARY,
        password="pw",  # noqa: S106  a test value
        replicas=[REPLICA],
        max_size=8,
        replica_max_size=3,
        init_sql=["SET time_zone = '+00:00'"],
    )
    (rc,) = pool.replica_configs()
    assert (rc.host, rc.password, rc.max_size, rc.read_only) == (
        "10.0.0.12",
        "pw",
        3,
        True,
    )
    assert rc.init_sql == pool.init_sql
    assert rc.replicas == ()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"read_your_writes": "always"}, "read_your_writes: must be one of off"),
        (
            {"replicas": ["mysql://app:pw@10.0.0.12/appdb"]},
            "must not contain a password",
        ),
        ({"replicas": [PRIMARY]}, "lists the primary itself"),
        ({"replicas": ["postgres://x@h/db"]}, "replicas: must start with mysql://"),
        ({"replica_max_lag": 0}, "replica_max_lag: must be a number of seconds > 0"),
        ({"replica_max_size": 0}, "replica_max_size: must be an integer >= 1"),
        ({"replica_check_interval": 0.001}, "replica_check_interval: must be at least"),
        ({"replica_wait_timeout": -1}, "replica_wait_timeout: must be a number"),
    ],
)
def test_bad_replica_keys_name_the_key(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PoolConfig(name="default", dsn=PRIMARY, **keys)


def test_replica_ops_are_checked_like_the_plain_ones() -> None:
    assert check_body(Op.QUERY_REPLICA, 0, b"SELECT 1") is None
    assert "non-empty SQL bytes" in check_body(Op.QUERY_REPLICA, 0, b"")
    assert "cannot carry a pin" in check_body(Op.QUERY_REPLICA, 7, b"SELECT 1")
    assert check_body(Op.STREAM_OPEN_REPLICA, 0, [b"SELECT 1", 10, {}]) is None
    assert "stream body" in check_body(Op.STREAM_OPEN_REPLICA, 0, [b"SELECT 1"])
