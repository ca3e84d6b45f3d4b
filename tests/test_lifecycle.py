"""`broker serve` as a process: reload, drain, status, check-config."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import client


def _pool(c):
    return c.stats()["pools"]["default"]


def test_sighup_applies_a_new_max_size_live(make_broker, mysql_dsn, password_file):
    b = make_broker(max_size=2, min_size=1)
    c = b.client()
    assert _pool(c)["max_size"] == 2
    b.write_config(mysql_dsn, str(password_file), {"max_size": 6, "min_size": 3}, {})
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while _pool(c)["max_size"] != 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool(c)["max_size"] == 6
    while _pool(c)["size"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool(c)["size"] >= 3
    assert "reload: applied" in b.log()


def test_sighup_with_a_broken_config_keeps_the_old_one(make_broker):
    b = make_broker(max_size=2)
    c = b.client()
    b.config_path.write_text("[pools.default]\nmax_sise = 3\n")
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload rejected" not in b.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload rejected" in b.log()
    assert "max_sise" in b.log()
    assert _pool(c)["max_size"] == 2
    assert c.query("SELECT 1").scalar() == 1


def test_sigterm_drains_statements_in_flight_and_exits_zero(make_broker):
    b = make_broker(max_size=4, broker={"drain_timeout": 10})
    results = []

    def slow(n: int) -> None:
        with b.client() as c:
            try:
                results.append(c.query("SELECT SLEEP(1), %s", (n,)).rows[0][1])
            except client.Error as err:
                results.append(err)

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    b.signal(signal.SIGTERM)
    time.sleep(0.2)
    with (
        b.client(timeout=2) as late,
        pytest.raises(client.BrokerUnavailable, match="shutting down"),
    ):
        late.query("SELECT 1")
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    assert b.proc.wait(15) == 0
    assert not (b.workdir / "broker.sock").exists()


def test_drain_gives_up_after_drain_timeout(make_broker):
    b = make_broker(max_size=1, broker={"drain_timeout": 0.5})
    c = b.client()
    tx = c.transaction()
    tx.begin()
    start = time.monotonic()
    b.signal(signal.SIGTERM)
    assert b.proc.wait(10) == 0
    assert time.monotonic() - start < 3


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_status_shows_pools_and_who_holds_what(broker):
    c = broker.client(name="billing-worker")
    c.query("SELECT 1")
    with c.transaction() as tx:
        tx.query("SELECT 2")
        out = _cli("status", "--endpoint", broker.endpoint)
        assert out.returncode == 0, out.stderr
        assert "default" in out.stdout
        assert "transaction" in out.stdout
        assert "billing-worker" in out.stdout
        js = _cli("status", "--endpoint", broker.endpoint, "--json")
    stats = json.loads(js.stdout)
    assert stats["pools"]["default"]["served"] >= 2
    assert stats["pins"][0]["kind"] == "transaction"
    assert stats["pins"][0]["who"]["name"] == "billing-worker"
    assert stats["pools"]["default"]["latency_ms"]["p50"] > 0


def test_status_without_a_broker_says_so(broker_dir):
    out = _cli(
        "status", "--endpoint", f"ipc://{broker_dir}/none.sock", "--timeout", "0.3"
    )
    assert out.returncode == 1
    assert "cannot reach a broker" in out.stderr


def test_check_config_names_the_bad_key(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text('[pools.default]\ndsn = "mysql://u@h/db"\nmax_size = 0\n')
    out = _cli("check-config", "--config", str(bad))
    assert out.returncode == 1
    assert "pools.default.max_size" in out.stderr
    good = tmp_path / "g.toml"
    good.write_text('[pools.default]\ndsn = "mysql://u@h/db"\nmax_size = 3\n')
    out = _cli("check-config", "--config", str(good))
    assert out.returncode == 0, out.stderr
    assert "configuration OK" in out.stdout


def test_help_lists_every_command():
    out = _cli("--help")
    assert out.returncode == 0
    for command in ("serve", "status", "check-config", "bench"):
        assert command in out.stdout


def test_password_on_the_command_line_is_refused(broker_dir):
    out = _cli(
        "serve",
        "--dsn",
        "mysql://u:secret@127.0.0.1/db",
        "--endpoint",
        f"ipc://{broker_dir}/x.sock",
    )
    assert out.returncode == 2
    assert "password_file" in out.stderr
    assert "secret" not in out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        .read()
        .decode()
    )
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_prometheus_metrics_move_when_queries_run(make_broker):
    port = _free_port()
    b = make_broker(max_size=4, broker={"metrics_address": f"127.0.0.1:{port}"})
    c = b.client()
    time.sleep(0.7)
    before = _scrape(port)
    for i in range(25):
        c.query("SELECT %s", (i,))
    time.sleep(0.7)
    after = _scrape(port)
    served = 'broker_pool_served_total{pool="default"}'
    assert after[served] - before[served] >= 25
    assert after['broker_pool_connections{pool="default",state="idle"}'] >= 1
    assert after['broker_pool_max_connections{pool="default"}'] == 4
    assert 'broker_info{version="0.1.0"}' in after


def test_a_pool_removed_and_added_back_serves_again(
    make_broker, mysql_dsn, password_file
):
    b = make_broker(pools={"other": {"max_size": 1}})
    c = b.client(pool="other")
    assert c.query("SELECT 1").scalar() == 1
    b.write_config(mysql_dsn, str(password_file), {"max_size": 2}, {})
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "pool other removed" not in b.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(client.ProgrammingError):
        c.query("SELECT 1")
    b.write_config(
        mysql_dsn, str(password_file), {"max_size": 2}, {}, {"other": {"max_size": 1}}
    )
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert c.query("SELECT 2").scalar() == 2
            break
        except client.Error:
            assert time.monotonic() < deadline, b.log()
            time.sleep(0.1)


def test_restart_only_keys_keep_their_running_value_on_reload(
    make_broker, mysql_dsn, password_file
):
    b = make_broker(max_size=2)
    c = b.client()
    endpoints = c.stats()["endpoints"]
    for mode in ("0600", "0660"):
        b.write_config(
            mysql_dsn, str(password_file), {"max_size": 2}, {"socket_mode": mode}
        )
        b.signal(signal.SIGHUP)
        time.sleep(0.5)
    warnings = b.log().count("broker.socket_mode changed but needs a restart")
    assert warnings == 1  # the second file matches what runs: nothing to warn about
    assert c.stats()["endpoints"] == endpoints
    assert c.query("SELECT 1").scalar() == 1


def _journal_stream(path):
    """Return $JOURNAL_STREAM as systemd sets it when stderr is the file at path."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_gets_each_lines_priority(make_broker):
    b = make_broker(start=False)
    b.log_path.touch()
    b.env["JOURNAL_STREAM"] = _journal_stream(b.log_path)
    b.start()
    b.config_path.write_text("[pools.default]\nmax_sise = 3\n")
    b.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload rejected" not in b.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "<3>ERROR broker.reload: reload rejected" in b.log()
    assert "<6>INFO broker.frontend: listening on" in b.log()


def _cli_into(path, *args, journal):
    """Run the CLI with stderr appended to path, as if it were the journal or not."""
    path.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["JOURNAL_STREAM"] = _journal_stream(path) if journal else "1:2"
    with open(path, "ab") as stderr:
        return subprocess.run(
            [sys.executable, "-m", "broker", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=30,
        )


@pytest.mark.timeout(60)
def test_config_errors_reach_the_journal_as_errors(tmp_path, broker_dir):
    """`journalctl -p err` must show why a start or a reload check failed."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.default]\nmax_sise = 3\n")
    endpoint = f"ipc://{broker_dir}/x.sock"
    journal = tmp_path / "journal"
    serve = _cli_into(
        journal, "serve", "--config", str(bad), "--endpoint", endpoint, journal=True
    )
    assert serve.returncode == 2
    check = _cli_into(journal, "check-config", "--config", str(bad), journal=True)
    assert check.returncode == 1
    assert journal.read_text().splitlines() == [
        "<3>broker: config error: pools.default.max_sise: unknown key "
        "(did you mean max_size?)",
        "<3>error: pools.default.max_sise: unknown key (did you mean max_size?)",
    ]
    # stderr elsewhere (a terminal, a file) gets the plain line.
    other = tmp_path / "other"
    _cli_into(other, "check-config", "--config", str(bad), journal=False)
    assert other.read_text().startswith("error: pools.default.max_sise")


def _free_tcp_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(90)
def test_check_config_connect_says_what_mysql_answered(
    tmp_path, mysql_server, mysql_dsn, password_file
):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    gone = f"mysql://{mysql_server.user}@127.0.0.1:{_free_tcp_port()}/x"
    pools = {
        "good": (mysql_dsn, password_file, "SET time_zone = '+00:00'"),
        "badpw": (mysql_dsn, wrong, None),
        "gone": (gone, password_file, None),
        "badinit": (mysql_dsn, password_file, "SET no_such_variable = 1"),
    }
    text = ""
    for name, (dsn, pw, init) in pools.items():
        text += f'[pools.{name}]\ndsn = "{dsn}"\npassword_file = "{pw}"\n'
        text += f'init_sql = ["{init}"]\n' if init else ""
    config = tmp_path / "broker.toml"
    config.write_text(text)

    out = _cli("check-config", "--connect", "--config", str(config))
    assert out.returncode == 1
    assert "configuration OK" not in out.stdout
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    lines.update({line.split(":")[0]: line for line in out.stderr.splitlines()})
    admin = mysql_server.admin()
    version = admin.get_server_info()
    admin.close()
    assert f"connected as {mysql_server.user}@" in lines["pool good"]
    assert version.removeprefix("5.5.5-") in lines["pool good"]
    assert (
        "MySQL refused the login: error 1045: Access denied for user "
        f"'{mysql_server.user}'@" in lines["pool badpw"]
    )
    assert "cannot reach MySQL: error 2003: " in lines["pool gone"]
    assert (
        "connected, but MySQL refused 'SET no_such_variable = 1': error 1193: "
        "Unknown system variable" in lines["pool badinit"]
    )
    assert "cannot use pool(s) badpw, gone, badinit" in lines["error"]
    assert "not-the-password" not in out.stdout + out.stderr

    config.write_text(text.split("[pools.badpw]")[0])
    out = _cli("check-config", "--connect", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("configuration OK, every pool connected\n")


@pytest.mark.timeout(90)
def test_refused_login_is_logged_as_an_error_with_mysqls_message(
    make_broker, tmp_path, mysql_server
):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    gone = f"mysql://{mysql_server.user}@127.0.0.1:{_free_tcp_port()}/x"
    b = make_broker(password_file=str(wrong), pools={"gone": {"dsn": gone}})
    lines = b.log().splitlines()
    refused = [line for line in lines if "pool default: cannot connect" in line]
    assert len(refused) == 1, lines  # once, not once per retry
    assert refused[0].startswith("ERROR broker.pool: ")
    assert f"(1045, \"Access denied for user '{mysql_server.user}'@" in refused[0]
    # An unreachable server may come back by itself: a warning.
    gone_lines = [line for line in lines if "pool gone: cannot connect" in line]
    assert gone_lines
    assert gone_lines[0].startswith("WARNING broker.pool: ")
