"""Shared fixtures: a real MySQL server, a database per test, and failure reports.

The server is a private MariaDB sandbox started once per session, or the server
in $BROKER_TEST_DSN when that is set (its user needs CREATE and DROP DATABASE;
fault tests that kill or restart the server are skipped there). A missing server
binary fails every test that needs one, loudly, with what to install.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import urllib.parse
from collections.abc import Generator, Iterator
from pathlib import Path

import pymysql
import pytest

from broker.sandbox import Sandbox, SandboxError, init_datadir

TEST_DSN_ENV = "BROKER_TEST_DSN"
pytest_plugins = ["broker_fixtures"]
# SQLAlchemy's compliance suite runs in a pytest of its own (test_sqla_compliance).
collect_ignore = ["sqla_suite"]


# --- MySQL server ------------------------------------------------------------


class ExternalServer:
    """The server in $BROKER_TEST_DSN, behind the parts of Sandbox tests use."""

    log_path = None
    pid = None

    def __init__(self, dsn: str) -> None:
        url = urllib.parse.urlsplit(dsn)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 3306
        self.user = urllib.parse.unquote(url.username or "root")
        self.password = urllib.parse.unquote(url.password or "")

    def dsn(self, user: str | None = None, database: str = "broker") -> str:
        user = urllib.parse.quote(user or self.user, safe="")
        return f"mysql://{user}@{self.host}:{self.port}/{database}?charset=utf8mb4"

    def admin(self) -> pymysql.connections.Connection:
        return _connect(self)

    def log_tail(self, lines: int = 40) -> str:
        return ""

    def kill(self) -> None:
        pytest.skip(f"cannot kill the server in ${TEST_DSN_ENV}")

    def stop(self, timeout: float = 30.0) -> None:
        pytest.skip(f"cannot stop the server in ${TEST_DSN_ENV}")

    def start(self, timeout: float = 60.0) -> None:
        pytest.skip(f"cannot start the server in ${TEST_DSN_ENV}")

    def restart(self) -> None:
        pytest.skip(f"cannot restart the server in ${TEST_DSN_ENV}")


def _connect(
    server: Sandbox | ExternalServer, database: str | None = None
) -> pymysql.connections.Connection:
    """Connect as the server's application user over TCP, as the broker would."""
    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=database,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
    )


def _start_or_fail(sandbox: Sandbox) -> None:
    """Start the sandbox, or fail the test loudly with what to install."""
    try:
        sandbox.start()
    except SandboxError as err:
        error = str(err)
    else:
        return
    # Outside the except block, so the report is the message, not two tracebacks.
    pytest.fail(
        f"{error}\n(or run the tests against a server: "
        f"{TEST_DSN_ENV}=mysql://user:password@host:port/)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def mysql_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sandbox | ExternalServer]:
    """The session's server: a private sandbox, or the one in $BROKER_TEST_DSN."""
    if dsn := os.environ.get(TEST_DSN_ENV):
        yield ExternalServer(dsn)
        return
    sandbox = Sandbox(tmp_path_factory.mktemp("mysql"))
    _start_or_fail(sandbox)
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def mysql_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh datadir to copy, so each private Sandbox skips initialisation."""
    base = tmp_path_factory.mktemp("mysql-template")
    try:
        init_datadir(base / "data", base / "init.log")
    except SandboxError as err:
        error = str(err)
    else:
        return base / "data"
    if os.environ.get(TEST_DSN_ENV):
        pytest.skip(f"needs a local server binary (${TEST_DSN_ENV} is set): {error}")
    pytest.fail(error, pytrace=False)


@pytest.fixture
def faulty_mysql(tmp_path: Path, mysql_template: Path) -> Iterator[Sandbox]:
    """A private server of this test's own, free to kill and restart."""
    sandbox = Sandbox(tmp_path / "faulty-mysql", template=mysql_template)
    _start_or_fail(sandbox)
    yield sandbox
    sandbox.stop()
    # Keep the log for a post-mortem; the datadir is just disk.
    shutil.rmtree(tmp_path / "faulty-mysql" / "data", ignore_errors=True)


# --- per-test database -------------------------------------------------------


@pytest.fixture
def database(
    request: pytest.FixtureRequest, mysql_server: Sandbox | ExternalServer
) -> Iterator[str]:
    """Name of a database made for this test alone and dropped after it."""
    stem = re.sub(r"[^0-9a-z_]", "_", request.node.name.lower())[:40]
    name = f"t_{stem}_{secrets.token_hex(4)}"
    conn = mysql_server.admin()
    try:
        conn.query(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    yield name
    conn = mysql_server.admin()
    try:
        conn.query(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture
def mysql_dsn(mysql_server: Sandbox | ExternalServer, database: str) -> str:
    """DSN of the application user on this test's database; no password in it."""
    return mysql_server.dsn(user=mysql_server.user, database=database)


@pytest.fixture
def password_file(mysql_server: Sandbox | ExternalServer, tmp_path: Path) -> Path:
    """A file holding the application user's password, as `password_file` takes."""
    path = tmp_path / "mysql-password"
    path.write_text(mysql_server.password + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def direct(
    mysql_server: Sandbox | ExternalServer, database: str
) -> Iterator[pymysql.connections.Connection]:
    """A plain pymysql connection (autocommit) to this test's database."""
    conn = _connect(mysql_server, database)
    yield conn
    conn.close()


# --- failure reports ---------------------------------------------------------

SERVER_FIXTURES = ("mysql_server", "faulty_mysql")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each server log a failed test used to its report."""
    report = yield
    setattr(item, f"rep_{report.when}", report)  # lets fixtures see the outcome
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in SERVER_FIXTURES:
            server = funcargs.get(name)
            if getattr(server, "log_path", None):
                title = f"{name} log tail ({server.log_path})"
                report.sections.append((title, server.log_tail()))
    return report
