"""Fixtures that run a real `broker serve` subprocess against the test database.

`make_broker(**pool_keys)` writes a TOML config (the per-test database, the
broker user's password in a password_file) and starts ``python -m broker
serve`` through `broker.launch`, the launcher `broker bench` uses too; it
returns once the broker answers a ping. Teardown sends SIGTERM and waits; the
broker's log is printed when a test fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import client
from broker.launch import START_TIMEOUT, LaunchError, ServeProcess
from client import dbapi

ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess(ServeProcess):
    """A `broker serve` subprocess on the test database, logging at debug."""

    def __init__(
        self,
        workdir: Path,
        dsn: str,
        password_file: str,
        pool: dict[str, Any],
        broker: dict[str, Any],
        pools: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        endpoint = f"ipc://{workdir}/broker.sock"
        super().__init__(workdir, endpoint, flags=("--log-level", "debug"))
        self.env["PYTHONPATH"] = str(ROOT)  # this checkout's broker, not another
        self.write_config(dsn, password_file, pool, broker, pools)

    def write_config(
        self,
        dsn: str,
        password_file: str,
        pool: dict[str, Any],
        broker: dict[str, Any],
        pools: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Write the TOML the broker reads (again on SIGHUP)."""
        # The ipc endpoint always comes first: the fixture waits on it.
        broker = dict(broker)
        endpoints = [self.endpoint, *broker.pop("endpoint", [])]
        all_pools = {"default": pool, **(pools or {})}
        self.write(
            {"endpoint": endpoints, **broker},
            {
                name: {"dsn": dsn, "password_file": password_file, **keys}
                for name, keys in all_pools.items()
            },
        )

    def start(self, wait: bool = True) -> None:
        """Start `broker serve` and wait until it answers a ping."""
        super().start()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the broker answers a ping and its pools have connected."""
        try:
            super().wait_ready(timeout)
        except LaunchError as err:
            pytest.fail(f"{err}:\n{self.log()}")

    def client(self, **kwargs: Any) -> client.Client:
        """Return a Client for this broker."""
        kwargs.setdefault("timeout", 10.0)
        return client.Client(endpoint=self.endpoint, **kwargs)

    def signal(self, sig: int) -> None:
        """Send a signal to the broker process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def stop_all(request: pytest.FixtureRequest, started: list[BrokerProcess]) -> None:
    """Stop the brokers a test started; print their logs when it failed."""
    failed = (
        getattr(request.node, "rep_call", None) is not None
        and request.node.rep_call.failed
    )
    for proc in started:
        try:
            proc.stop()
        finally:
            if failed:
                print(f"--- broker log {proc.log_path} ---\n{proc.log()[-20000:]}")


def query_as(user: Any, endpoint: str) -> str:
    """Query the broker as another user (a pwd entry) in a child; return the reply.

    "served" when the query ran, else the BrokerUnavailable message.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                client.Client(endpoint, timeout=1).query("SELECT 1")
                os.write(w, b"served")
            except client.BrokerUnavailable as err:
                os.write(w, err.msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    message = os.read(r, 4096).decode()
    os.close(r)
    return message


def broker_connections(direct: Any) -> int:
    """Count the MySQL connections of the test's broker user on its database."""
    with direct.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE USER = 'broker' AND DB = DATABASE() AND ID <> CONNECTION_ID()"
        )
        return cur.fetchone()[0]


def rss_kb(pid: int) -> int:
    """Return a process's resident memory in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def raw(broker: BrokerProcess) -> Iterator[zmq.Socket]:
    """A plain pyzmq DEALER on the broker, for sending frames by hand."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(broker.endpoint)
    yield sock
    sock.close()
    ctx.term()


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A short private directory: ipc socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_broker(
    request: pytest.FixtureRequest,
    broker_dir: Path,
    mysql_dsn: str,
    password_file: Path,
) -> Iterator[Callable[..., BrokerProcess]]:
    """Return a factory: make_broker(**pool_keys, broker={...}) -> a started broker."""
    started: list[BrokerProcess] = []

    def make(
        *,
        broker: dict[str, Any] | None = None,
        pools: dict[str, dict[str, Any]] | None = None,
        dsn: str | None = None,
        start: bool = True,
        **pool: Any,
    ) -> BrokerProcess:
        workdir = broker_dir / f"b{len(started)}"
        workdir.mkdir()
        proc = BrokerProcess(
            workdir, dsn or mysql_dsn, str(password_file), pool, broker or {}, pools
        )
        started.append(proc)
        if start:
            proc.start()
        return proc

    yield make
    stop_all(request, started)


@pytest.fixture
def broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A started broker with a default pool on this test's database."""
    return make_broker(max_size=4)


@pytest.fixture
def db(broker: BrokerProcess) -> Iterator[client.Client]:
    """A Client of the `broker` fixture."""
    with broker.client() as c:
        yield c


# PEP 249's exception names, each also pymysql's class of that name.
PEP249_ERRORS = (
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "Warning",
)


def start_on_tcp(
    make_broker: Callable[..., BrokerProcess],
    mysql_dsn: str,
    password_file: Path,
    pool_keys: dict[str, Any],
) -> BrokerProcess:
    """Start a broker serving a tcp:// endpoint on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    b = make_broker(start=False)
    b.endpoint = f"tcp://127.0.0.1:{port}"
    b.write_config(mysql_dsn, str(password_file), pool_keys, {})
    b.start()
    return b


@pytest.fixture
def stranger() -> pwd.struct_passwd:
    """A user outside every group of the broker's socket."""
    if os.geteuid() != 0:
        pytest.skip("creating a second user needs root")
    name = "bkstranger"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/bin/false", name], check=True
        )
    return pwd.getpwnam(name)


@pytest.fixture
def connect() -> Iterator[Callable[..., dbapi.Connection]]:
    """dbapi.connect, closing every connection at teardown (a broker drains
    open transactions before it exits)."""
    made: list[dbapi.Connection] = []

    def make(*args: Any, **kwargs: Any) -> dbapi.Connection:
        c = dbapi.connect(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def table(db: client.Client) -> str:
    """Table t (id, name UNIQUE, n) in the test database, InnoDB."""
    db.query(
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) UNIQUE,"
        " n INT) ENGINE=InnoDB"
    )
    return "t"
