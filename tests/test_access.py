"""Who may reach the database: socket modes, read-only pools, fairness, secrets."""

import grp
import os
import subprocess
import sys
import threading
import time

import pytest
from broker_fixtures import query_as

import client


def test_socket_file_gets_socket_mode(make_broker):
    b = make_broker(broker={"socket_mode": "0600"})
    path = b.endpoint[len("ipc://") :]
    assert os.stat(path).st_mode & 0o777 == 0o600
    b2 = make_broker()
    assert os.stat(b2.endpoint[len("ipc://") :]).st_mode & 0o777 == 0o660


def test_socket_group_is_applied(make_broker):
    group = grp.getgrgid(os.getgid()).gr_name
    b = make_broker(broker={"socket_group": group})
    assert os.stat(b.endpoint[len("ipc://") :]).st_gid == os.getgid()


def test_world_writable_socket_directory_is_refused(make_broker):
    b = make_broker(start=False)
    os.chmod(b.workdir, 0o777)  # noqa: S103  the hazard under test
    b.start(wait=False)
    assert b.proc.wait(15) == 1
    assert "world-writable" in b.log()


def test_other_user_is_refused_on_a_0660_socket(make_broker, stranger):
    b = make_broker()
    os.chmod(b.workdir, 0o755)  # noqa: S103  traversable; the socket decides
    message = query_as(stranger, b.endpoint)
    assert "no permission" in message
    with b.client() as c:
        assert c.query("SELECT 1").scalar() == 1


def test_read_only_pool_rejects_writes_with_mysqls_error(make_broker):
    b = make_broker(read_only=True)
    c = b.client()
    c.query("SELECT 1")
    with pytest.raises(client.OperationalError) as exc:
        c.query("CREATE TABLE ro_t (a INT)")
    assert exc.value.errno in (1792, 1836)
    with c.transaction() as tx, pytest.raises(client.OperationalError) as exc:
        tx.query("INSERT INTO nowhere VALUES (1)")
    assert exc.value.errno in (1792, 1146)
    assert c.query("SELECT 2").scalar() == 2


def test_one_flooding_process_cannot_starve_a_polite_one(make_broker):
    b = make_broker(max_size=2, queue_timeout=10, broker={"max_inflight_per_client": 4})
    flood = b.client()
    refused, served, wrong = [], [], []
    stop = time.monotonic() + 2.0

    def flooder() -> None:
        while time.monotonic() < stop:
            try:
                flood.query("SELECT SLEEP(0.05)")
                served.append(1)
            except client.OperationalError as err:
                ok = err.errno == client.errors.ER_TOO_MANY_INFLIGHT
                (
                    refused if ok and "max_inflight_per_client" in err.msg else wrong
                ).append(err)

    threads = [threading.Thread(target=flooder) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    polite = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import client, time; c = client.Client({b.endpoint!r}, timeout=5); "
            "t = time.monotonic(); [c.query('SELECT 1') for _ in range(5)]; "
            "print(time.monotonic() - t)",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": os.getcwd()},
        timeout=30,
    )
    for t in threads:
        t.join()
    assert polite.returncode == 0, polite.stderr
    assert float(polite.stdout) < 3.0
    assert refused
    assert served
    assert wrong == []


def test_password_never_reaches_logs_status_or_errors(make_broker, mysql_server):
    secret = mysql_server.password
    b = make_broker(max_size=1)
    c = b.client()
    c.query("SELECT 1")
    with pytest.raises(client.ProgrammingError) as exc:
        c.query("SELEC 1")
    status = subprocess.run(
        [sys.executable, "-m", "broker", "status", "--endpoint", b.endpoint, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0
    assert "mysql://broker@" in status.stdout  # the DSN is shown, without its secret
    stats = repr(c.stats())
    with open(f"/proc/{b.proc.pid}/cmdline", "rb") as f:
        cmdline = f.read().decode()
    b.stop()
    for text in (b.log(), status.stdout, stats, exc.value.msg, cmdline):
        assert text
        assert secret not in text
