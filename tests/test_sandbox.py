"""The private MariaDB sandbox: it answers, dies when killed, comes back intact."""

from __future__ import annotations

import socket
from pathlib import Path

import pymysql
import pytest

from broker import sandbox as sandbox_module
from broker.sandbox import Sandbox, SandboxError


def test_server_answers_with_sequence_engine(mysql_server, direct):
    conn = mysql_server.admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    with direct.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM seq_1_to_10")
        assert cur.fetchone() == (10,)


def test_broker_user_may_see_and_kill_its_threads(mysql_server, direct, database):
    other = pymysql.connect(
        host=mysql_server.host,
        port=mysql_server.port,
        user=mysql_server.user,
        password=mysql_server.password,
        database=database,
    )
    with direct.cursor() as cur:
        cur.execute("SELECT DATABASE(), @@character_set_server")
        assert cur.fetchone() == (database, "utf8mb4")
        cur.execute("SHOW PROCESSLIST")
        assert other.thread_id() in [row[0] for row in cur.fetchall()]
        cur.execute(f"KILL CONNECTION {other.thread_id()}")
    with pytest.raises(pymysql.err.OperationalError):
        other.query("SELECT 1")
    other.close()


def test_dsn_names_user_host_port_and_database(
    mysql_server, mysql_dsn, database, password_file
):
    if not isinstance(mysql_server, Sandbox):
        pytest.skip("checks the sandbox's own DSN")
    port = mysql_server.port
    assert mysql_server.dsn() == f"mysql://root@127.0.0.1:{port}/broker?charset=utf8mb4"
    assert mysql_dsn == f"mysql://broker@127.0.0.1:{port}/{database}?charset=utf8mb4"
    assert password_file.read_text() == "sandbox\n"


def test_start_is_idempotent(faulty_mysql):
    pid = faulty_mysql.pid
    faulty_mysql.start()
    assert faulty_mysql.pid == pid


def test_kill_makes_connections_fail(faulty_mysql):
    conn = faulty_mysql.admin()
    faulty_mysql.kill()
    assert faulty_mysql.pid is None
    with pytest.raises(pymysql.err.OperationalError):
        conn.query("SELECT 1")
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=faulty_mysql.port, user="root")


def _time_wait_ports() -> set[int]:
    """Return local ports with a TCP socket in TIME_WAIT (state 06)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = [line.split() for line in lines]
    return {int(f[1].split(":")[1], 16) for f in fields if f[3] == "06"}


def test_restart_after_kill_keeps_port_socket_and_data(faulty_mysql):
    port, unix_socket = faulty_mysql.port, faulty_mysql.unix_socket
    conn = pymysql.connect(
        host="127.0.0.1", port=port, user="root", database="broker", autocommit=True
    )
    conn.query("CREATE TABLE t (id INT PRIMARY KEY)")
    conn.query("INSERT INTO t SELECT seq FROM seq_1_to_100")
    conn.close()
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.recv(4096)  # the handshake; unread bytes would make close() send RST
    faulty_mysql.kill()
    assert idle.recv(4096) == b""
    idle.close()  # the server spoke FIN first, so its end now sits in TIME_WAIT
    assert port in _time_wait_ports()
    faulty_mysql.restart()
    assert (faulty_mysql.port, faulty_mysql.unix_socket) == (port, unix_socket)
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="broker")
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t")
        assert cur.fetchone() == (100,)
    conn.close()


def test_restart_of_running_server_is_clean(faulty_mysql):
    pid = faulty_mysql.pid
    faulty_mysql.restart()
    assert faulty_mysql.pid not in (None, pid)
    assert "Normal shutdown" in Path(faulty_mysql.log_path).read_text()


def test_busy_port_fails_with_log_tail(mysql_server, mysql_template, tmp_path):
    if not isinstance(mysql_server, Sandbox):
        pytest.skip("needs the sandbox's port")
    clash = Sandbox(tmp_path / "clash", port=mysql_server.port, template=mysql_template)
    with pytest.raises(SandboxError, match=rf"port {mysql_server.port} .* in use"):
        clash.start()
    assert clash.pid is None


def test_missing_server_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sandbox_module, "SERVER_PATHS", ())
    with pytest.raises(SandboxError, match="apt-get install -y mariadb-server"):
        sandbox_module.find_server()
