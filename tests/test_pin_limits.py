"""max_pins_per_client: one process that leaks pins cannot take the whole pool."""

import json
import os
import subprocess
import sys
import time

import pytest

import client
from broker.config import ConfigError, PoolConfig
from broker.pinlimit import effective_cap
from client import dbapi


def _in_child(fn):
    """Run fn in a forked child (another client process); return its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _status(broker, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "status",
            "--endpoint",
            broker.endpoint,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


@pytest.mark.timeout(60)
def test_leaking_process_is_refused_at_once_and_others_still_get_connections(
    make_broker,
):
    b = make_broker(max_size=4, max_pins_per_client=2, queue_timeout=30)
    c = b.client(name="leaky")
    leaked = [dbapi.connect(client=c) for _ in range(2)]
    for conn in leaked:
        conn.cursor().execute("SELECT 1")  # each pins a transaction, left open
    start = time.monotonic()
    with pytest.raises(client.OperationalError, match="max_pins_per_client = 2") as err:
        c.transaction().query("SELECT 1")
    assert time.monotonic() - start < 10  # refused, not queued for queue_timeout
    assert err.value.errno == client.errors.ER_TOO_MANY_PINS
    with pytest.raises(client.OperationalError, match="max_pins_per_client"):
        c.session().open()
    with pytest.raises(client.OperationalError, match="max_pins_per_client"):
        next(iter(c.stream("SELECT seq FROM seq_1_to_10")))

    def other_process():
        with b.client() as other, other.transaction() as tx:
            return 0 if tx.query("SELECT 2").scalar() == 2 else 1

    assert _in_child(other_process) == 0
    per_client = c.stats()["pins_per_client"]
    assert [(p["pid"], p["pins"], p["max"], p["name"]) for p in per_client] == [
        (os.getpid(), 2, 2, "leaky")
    ]
    text = _status(b)
    assert "PINS" in text
    assert f"pid {os.getpid()}" in text
    assert "(leaky)" in text
    shown = json.loads(_status(b, "--json"))["pins_per_client"]
    assert shown[0]["pins"] == 2
    leaked[0].rollback()  # one ends: there is room again
    with c.transaction() as tx:
        assert tx.query("SELECT 3").scalar() == 3
    for conn in leaked:
        conn.close()
    assert c.stats()["pins_per_client"] == []


@pytest.mark.timeout(60)
def test_default_cap_leaves_a_connection_for_others_on_a_small_pool(make_broker):
    b = make_broker(max_size=3, queue_timeout=30)  # default 8 > max_size
    c = b.client()
    held = [c.transaction() for _ in range(2)]
    for tx in held:
        tx.begin()
    with pytest.raises(client.OperationalError, match="max_size = 3"):
        c.transaction().begin()

    def other_process():
        with b.client() as other:
            return 0 if other.query("SELECT 1").scalar() == 1 else 1

    assert _in_child(other_process) == 0
    for tx in held:
        tx.rollback()


def test_effective_cap_and_config():
    assert effective_cap(8, 10) == 8
    assert effective_cap(8, 4) == 3  # one connection stays for others
    assert effective_cap(8, 2) == 1
    assert effective_cap(8, 1) == 0  # a pool of one: nothing to leave, it queues
    assert effective_cap(0, 10) == 0  # no cap
    assert PoolConfig(name="p", dsn="").max_pins_per_client == 8
    with pytest.raises(ConfigError, match="max_pins_per_client"):
        PoolConfig(name="p", dsn="", max_pins_per_client=-1)
