"""deploy/: the systemd unit and the example config, checked as an operator uses them.

- `systemd-analyze verify` and `security --offline` accept the unit, and the
  unit and broker.toml agree with each other and with the client's default
  endpoint.
- broker.toml documents every configuration key and passes `check-config`
  with the password given as a systemd credential.
- The unit's own ExecStart= line, run with the environment systemd gives a
  Type=notify service (NOTIFY_SOCKET, WATCHDOG_USEC/PID, CREDENTIALS_DIRECTORY),
  speaks sd_notify as the unit promises: READY=1 once queries work, WATCHDOG=1
  pings, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 and exit 0 on SIGTERM.

None of this needs systemd running; the real-systemd run is in deploy/README.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker_fixtures import query_as

import client
from broker.cli import parse_timespan
from broker.config import STOP_MARGIN, UNIT_TIMEOUT_STOP_SEC, BrokerConfig, PoolConfig
from client.wire.protocol import DEFAULT_ENDPOINT

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "broker.service"
CONFIG = ROOT / "deploy" / "broker.toml"
# The venv's console script: what /opt/mysql-broker/bin/broker is once installed.
BROKER_BIN = Path(sys.executable).parent / "broker"
CREDENTIAL = "mysql-password"
# Keys deploy/broker.toml leaves out on purpose.
UNDOCUMENTED_KEYS = {"read_only"}  # accepted but not enforced yet (config.py)


def _unit_entries() -> list[tuple[str, str, str]]:
    """Return (section, key, value) for each assignment in the unit, in order."""
    entries = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


def _unit(key: str) -> str:
    """Return the value of a directive that the unit sets exactly once."""
    values = [v for _, k, v in _unit_entries() if k == key]
    assert len(values) == 1, f"{key}= set {len(values)} times in {UNIT}"
    return values[0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, f"not a simple systemd time span: {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def _runnable_unit(tmp_path: Path) -> Path:
    """Copy the unit with ExecStart='s binary pointed at this venv's broker.

    `systemd-analyze verify` refuses a unit whose ExecStart binary does not
    exist, and /opt/mysql-broker exists only on an installed host. Nothing
    else in the copy differs from deploy/broker.service.
    """
    _need_broker_bin()
    text = UNIT.read_text()
    installed = shlex.split(_unit("ExecStart"))[0]
    copy, count = re.subn(
        rf"^ExecStart={re.escape(installed)} ",
        f"ExecStart={BROKER_BIN} ",
        text,
        flags=re.MULTILINE,
    )
    assert count == 1
    path = tmp_path / "broker.service"
    path.write_text(copy)
    return path


def _need_broker_bin() -> None:
    if not os.access(BROKER_BIN, os.X_OK):
        pytest.fail(
            f"no {BROKER_BIN}: install the package into this Python's venv "
            "(pip install -e .)",
            pytrace=False,
        )


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze not found; install it: apt-get install -y systemd",
            pytrace=False,
        )
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    """Return this environment without BROKER_* or systemd variables, plus extra."""
    dropped = (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "CREDENTIALS_DIRECTORY",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BROKER_") and k not in dropped
    }
    env.update(extra)
    return env


def _credentials(tmp_path: Path, secret: str, *names: str) -> Path:
    """Make a directory like /run/credentials/broker.service holding `names`."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    for name in names or (CREDENTIAL,):
        path = directory / name
        path.write_text(secret + "\n")
        path.chmod(0o400)
    return directory


# --- the unit ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit = _runnable_unit(tmp_path)
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify only warns about unknown keys and bad values (exit 0), naming the file.
    complaints = [line for line in output.splitlines() if unit.name in line]
    assert not complaints, output


@pytest.mark.timeout(60)
def test_unit_hardening_exposure_stays_low(tmp_path: Path) -> None:
    unit = _runnable_unit(tmp_path)
    # --threshold=20: fail above an exposure of 2.0 ("OK"); the unit scores ~1.2.
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level" in result.stdout


def test_reload_checks_the_file_before_signalling(tmp_path: Path) -> None:
    """`systemctl reload` runs the unit's first ExecReload= and fails with it."""
    _need_broker_bin()
    check = next(v for _, k, v in _unit_entries() if k == "ExecReload")
    argv = shlex.split(check.replace("/opt/mysql-broker/bin/broker", str(BROKER_BIN)))
    argv[0] = argv[0].removeprefix("+")  # systemd's "run as root" mark
    creds = _credentials(tmp_path, "secret")
    argv[2] = (
        argv[2]
        .replace("/etc/broker/broker.toml", str(tmp_path / "b.toml"))
        .replace("CREDENTIALS_DIRECTORY=/etc/broker", f"CREDENTIALS_DIRECTORY={creds}")
    )
    env = _clean_env()
    (tmp_path / "b.toml").write_text(CONFIG.read_text())
    good = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout == ""  # the summary goes to /dev/null, not the journal
    (tmp_path / "b.toml").write_text("[pools.default]\nmax_sise = 3\n")
    bad = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "pools.default.max_sise: unknown key" in bad.stderr


def test_unit_and_config_agree() -> None:
    config_text = CONFIG.read_text()
    assert _unit("Type") == "notify"
    assert _unit("NotifyAccess") == "main"
    check, signal_ = (v for _, k, v in _unit_entries() if k == "ExecReload")
    assert signal_ == "/bin/kill -HUP $MAINPID"
    argv = shlex.split(check)
    assert argv[:2] == ["+/bin/sh", "-c"]
    assert argv[2].startswith("CREDENTIALS_DIRECTORY=/etc/broker exec /opt/")
    assert "check-config --config /etc/broker/broker.toml" in argv[2]
    # It reads the password from where LoadCredential= takes it.
    assert _unit("LoadCredential") == f"{CREDENTIAL}:/etc/broker/{CREDENTIAL}"
    assert _unit("KillSignal") == "SIGTERM"
    assert _unit("Restart") == "on-failure"
    assert _unit("User") == _unit("Group") == "broker"
    assert _seconds(_unit("WatchdogSec")) > 0
    argv = shlex.split(_unit("ExecStart"))
    assert argv[1:] == ["serve", "--config", "/etc/broker/broker.toml"]
    assert argv[0].endswith("/bin/broker")

    # The socket is the client's default, inside the RuntimeDirectory.
    endpoint = re.search(r'^endpoint = "(.*)"$', config_text, re.MULTILINE)
    assert endpoint is not None
    assert endpoint[1] == DEFAULT_ENDPOINT
    runtime_dir = _unit("RuntimeDirectory")
    assert f"ipc:///run/{runtime_dir}/broker.sock" == DEFAULT_ENDPOINT
    assert int(_unit("RuntimeDirectoryMode"), 8) & 0o050 == 0o050  # group reach

    # password_file names the credential LoadCredential= loads.
    name, _, source = _unit("LoadCredential").partition(":")
    assert re.search(rf'^password_file = "{name}"$', config_text, re.MULTILINE)
    assert source == f"/etc/broker/{name}"

    # systemd must not SIGKILL the broker while it drains.
    drain = re.search(r"^drain_timeout = ([\d.]+)$", config_text, re.MULTILINE)
    assert drain is not None
    assert _seconds(_unit("TimeoutStopSec")) > float(drain[1])


def test_unit_does_not_retry_what_a_restart_cannot_fix() -> None:
    """Config errors (2) and a password file systemd cannot load (243) stay failed.

    RestartPreventExitStatus= covers the main process only (verified under
    systemd 252: a failing ExecStartPre= is retried all the same),
    so the unit has none; systemd itself names a missing password file via
    AssertPathExists= before the start job runs.
    """
    assert set(_unit("RestartPreventExitStatus").split()) == {"2", "243"}
    assert not [k for _, k, _ in _unit_entries() if k == "ExecStartPre"]
    _, _, source = _unit("LoadCredential").partition(":")
    assert _unit("AssertPathExists") == source


def test_unit_lets_the_broker_set_each_lines_priority() -> None:
    assert _unit("SyslogLevelPrefix") == "yes"


def test_check_config_knows_the_units_stop_timeout() -> None:
    assert _seconds(_unit("TimeoutStopSec")) == UNIT_TIMEOUT_STOP_SEC
    drain = re.search(r"^drain_timeout = ([\d.]+)$", CONFIG.read_text(), re.MULTILINE)
    assert drain is not None
    assert float(drain[1]) + STOP_MARGIN <= UNIT_TIMEOUT_STOP_SEC


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("span", "seconds"),
    [
        ("45s", 45.0),
        ("95s", 95.0),
        ("1.5s", 1.5),
        ("2h 30min", 9000.0),
        ("250ms", 0.25),
    ],
)
def test_stop_timeout_is_read_as_systemd_prints_it(span: str, seconds: float) -> None:
    """check-config reads TimeoutStopUSec from `systemctl show`, in this format."""
    result = subprocess.run(
        [_systemd_analyze(), "timespan", span],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    human = re.search(r"^\s*Human: (.*)$", result.stdout, re.MULTILINE)
    assert human is not None, result.stdout
    assert parse_timespan(human[1]) == pytest.approx(seconds)
    assert parse_timespan("infinity") == float("inf")
    assert parse_timespan("soon") is None


def test_install_script_is_valid_bash() -> None:
    script = ROOT / "deploy" / "install.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr


# --- the example config --------------------------------------------------------


def test_example_config_documents_every_key() -> None:
    text = CONFIG.read_text()
    keys = [f.name for f in dataclasses.fields(BrokerConfig)] + [
        f.name
        for f in dataclasses.fields(PoolConfig)
        if f.init and f.name not in ("name", "password")
    ]
    missing = [
        key
        for key in keys
        if key not in UNDOCUMENTED_KEYS
        and not re.search(rf"^(# )?{key} = ", text, re.MULTILINE)
    ]
    assert not missing, f"deploy/broker.toml does not show: {missing}"


def _check_config(
    config: Path, credentials: Path | None
) -> subprocess.CompletedProcess:
    _need_broker_bin()
    extra = {"CREDENTIALS_DIRECTORY": str(credentials)} if credentials else {}
    return subprocess.run(
        [str(BROKER_BIN), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=_clean_env(**extra),
        cwd="/",  # a relative password_file must not resolve against the cwd
        timeout=30,
    )


@pytest.mark.timeout(60)
def test_example_config_passes_check_config_with_a_credential(tmp_path: Path) -> None:
    credentials = _credentials(tmp_path, "s3cret-Example")
    result = _check_config(CONFIG, credentials)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert f"password: from {credentials / CREDENTIAL}" in result.stdout
    assert "s3cret-Example" not in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_example_config_without_the_credential_names_the_key(tmp_path: Path) -> None:
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    result = _check_config(CONFIG, empty)
    assert result.returncode == 1
    assert "pools.default.password_file: cannot read" in result.stderr
    assert str(empty / CREDENTIAL) in result.stderr


@pytest.mark.timeout(60)
def test_check_config_warns_when_drain_outlasts_the_stop_timeout(
    tmp_path: Path,
) -> None:
    credentials = _credentials(tmp_path, "s3cret-Example")
    shipped = _check_config(CONFIG, credentials)
    assert shipped.returncode == 0, shipped.stderr
    assert "warning" not in shipped.stderr
    config = tmp_path / "broker.toml"
    text, count = re.subn(
        r"^drain_timeout = .*$",
        "drain_timeout = 60",
        CONFIG.read_text(),
        flags=re.MULTILINE,
    )
    assert count == 1
    config.write_text(text)
    result = _check_config(config, credentials)
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "configuration OK" in result.stdout
    assert (
        "warning: broker.drain_timeout: 60s does not fit in the shipped unit's "
        "TimeoutStopSec=45s" in result.stderr
    )


@pytest.mark.timeout(60)
def test_example_config_commented_examples_are_valid(tmp_path: Path) -> None:
    # Uncomment every "# key = value" and "# [table]" line: the optional keys and
    # the second pool shown as examples must be valid as written.
    text, count = re.subn(
        r"^# (?=\[|\w+ = )", "", CONFIG.read_text(), flags=re.MULTILINE
    )
    assert count >= 2
    config = tmp_path / "broker.toml"
    config.write_text(text)
    credentials = _credentials(
        tmp_path, "s3cret-Example", CREDENTIAL, "mysql-reports-password"
    )
    result = _check_config(config, credentials)
    assert result.returncode == 0, result.stderr
    assert "metrics: 127.0.0.1:9187" in result.stdout
    assert "pool reports:" in result.stdout


# --- ExecStart= as systemd runs it ---------------------------------------------


class NotifySocket:
    """The AF_UNIX datagram socket systemd names in $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []  # every datagram, in order
        self.proc: subprocess.Popen | None = None  # the sender, watched while waiting

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """Return the next datagram that sets `key`, keeping all in `messages`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {key}= within {timeout} s; got {self.messages}")
            self.sock.settimeout(min(remaining, 0.2))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                # Nothing queued: a sender that has exited will send nothing more.
                if self.proc is not None and self.proc.poll() is not None:
                    pytest.fail(
                        f"broker exited with {self.proc.returncode} before {key}=; "
                        f"got {self.messages}"
                    )
                continue
            message = dict(
                line.split("=", 1) for line in data.decode().splitlines() if line
            )
            self.messages.append(message)
            if key in message:
                return message

    def count(self, key: str) -> int:
        return sum(key in m for m in self.messages)

    def close(self) -> None:
        self.sock.close()


def _exec_start_argv(config: Path) -> list[str]:
    """Return the unit's ExecStart= with only the binary and config path replaced."""
    argv = shlex.split(_unit("ExecStart"))
    at = argv.index("--config") + 1
    assert argv[at] == "/etc/broker/broker.toml"
    argv[0] = str(BROKER_BIN)
    argv[at] = str(config)
    return argv


def _sandboxed_config(workdir: Path, dsn: str, endpoint: str) -> Path:
    """Copy deploy/broker.toml with only dsn and endpoint pointed at the test's."""
    text = CONFIG.read_text()
    text, n_dsn = re.subn(r"^dsn = .*$", f'dsn = "{dsn}"', text, flags=re.MULTILINE)
    text, n_ep = re.subn(
        r"^endpoint = .*$", f'endpoint = "{endpoint}"', text, flags=re.MULTILINE
    )
    assert (n_dsn, n_ep) == (1, 1)
    path = workdir / "broker.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(90)
def test_exec_start_speaks_sd_notify_as_the_unit_expects(
    mysql_server, mysql_dsn: str, password_file: Path, broker_dir: Path
) -> None:
    _need_broker_bin()
    secret = password_file.read_text().strip()
    sock_path = broker_dir / "broker.sock"
    endpoint = f"ipc://{sock_path}"
    config = _sandboxed_config(broker_dir, mysql_dsn, endpoint)
    credentials = _credentials(broker_dir, secret)
    notify = NotifySocket(broker_dir / "notify")
    env = _clean_env(
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="1000000",
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    stderr_path = broker_dir / "stderr.log"
    # systemd sets WATCHDOG_PID to the service's own pid: sh exports its $$ and
    # exec keeps that pid for the broker.
    wrapper = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"]
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            wrapper + _exec_start_argv(config),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
            cwd="/",  # systemd's default WorkingDirectory
        )
    notify.proc = proc
    try:
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1"
        assert "default: 1/10 conns" in ready["STATUS"]
        # READY=1 means serving: a query works at once, with the credential's
        # password, on a pool already holding min_size connections.
        with client.Client(endpoint=endpoint, timeout=5.0) as c:
            stats = c.stats()["pools"]["default"]
            assert stats["size"] >= stats["min_size"] >= 1
            assert not stats["unreachable"]
            user = c.query("SELECT CURRENT_USER()").scalar()
            assert user.startswith(f"{mysql_server.user}@")
            # broker.toml's init_sql ran on the connection.
            assert c.query("SELECT @@session.time_zone").scalar() == "+00:00"

        # WATCHDOG_USEC=1 s: pings at least every half second.
        before = notify.count("WATCHDOG")
        started = time.monotonic()
        while notify.count("WATCHDOG") < before + 3:
            notify.wait_for("WATCHDOG", timeout=2.0)
        assert time.monotonic() - started < 2.5

        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert notify.wait_for("READY")["READY"] == "1"
        with client.Client(endpoint=endpoint, timeout=5.0) as c:
            assert c.query("SELECT 1").scalar() == 1

        assert sock_path.exists()
        proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING")["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
        assert not sock_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        log = stderr_path.read_text(errors="replace")
        print(f"--- broker stderr ---\n{log}")
    assert "ready:" in log
    assert secret not in log


# --- what deploy/README.md quotes ------------------------------------------------

README = ROOT / "deploy" / "README.md"


@pytest.mark.timeout(90)
def test_readme_quotes_the_real_permission_refusal(make_broker, stranger) -> None:
    """A user outside group broker gets exactly the message the README shows."""
    b = make_broker()
    # Like /run/broker: 0750, so only the owner and the socket's group get in.
    os.chmod(b.workdir, 0o750)  # noqa: S103  what the unit's RuntimeDirectoryMode sets
    message = query_as(stranger, b.endpoint)
    socket_path = b.endpoint.removeprefix("ipc://")
    assert socket_path in message
    shown = message.replace(socket_path, DEFAULT_ENDPOINT.removeprefix("ipc://"))
    assert shown in README.read_text().replace("\n", " ")
