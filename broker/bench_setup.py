"""Setting `broker bench` up: the sandbox, the fixture tables, the broker it starts.

Everything started here is undone by the caller's `contextlib.ExitStack`: the
broker is stopped, the fixture tables dropped, the sandbox stopped and the
temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pymysql

import client
from broker.bench_settings import BenchError, Settings, pool_config
from broker.launch import LaunchError, ServeProcess

ACCOUNTS = "bench_accounts"
INSERTS = "bench_inserts"
BROKER_START_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 15.0


@dataclass
class Target:
    """Where the load goes: the broker client and the direct connection arguments."""

    client: client.Client
    connect_args: dict
    broker_pid: int | None
    mysql_pid: int | None  # the MySQL server's, when it runs on this host
    pool: str


def set_up(settings: Settings, cleanup: contextlib.ExitStack) -> tuple[Target, str]:
    """Start what the bench needs (undone by cleanup); return the target and a note."""
    tmp = tempfile.mkdtemp(prefix="broker-bench-")  # short: ipc paths fit 107 bytes
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    password = None
    if settings.password_file:
        try:
            password = Path(settings.password_file).read_text().strip()
        except OSError as err:
            raise BenchError(
                f"--password-file: cannot read it: {err.strerror}"
            ) from err
    dsn = settings.dsn
    if dsn is None and settings.endpoint:
        with client.Client(endpoint=settings.endpoint, timeout=5.0) as probe:
            dsn = broker_stats(probe, settings.pool)["dsn"]
    if dsn is None:
        dsn = _start_sandbox(tmp, cleanup, settings.mysqld_thread_pool)
    connect_args = pool_config(dsn, password).connect_args()
    version = make_fixture(connect_args, settings)
    cleanup.callback(_drop_fixture, connect_args)
    endpoint = settings.endpoint
    if endpoint is None:
        endpoint = f"ipc://{tmp}/bench.sock"
        pool = pool_keys(dsn, settings)
        if settings.password_file:
            pool["password_file"] = os.path.abspath(settings.password_file)
        start_broker(tmp, endpoint, {settings.pool: pool}, settings, cleanup)
    target_client = client.Client(endpoint=endpoint, timeout=settings.timeout)
    stats = broker_stats(target_client, settings.pool, whole=True)
    broker_pid = _local_broker_pid(stats["pid"])
    try:
        seen = target_client.query(f"SELECT COUNT(*) FROM {ACCOUNTS}").scalar()
    except client.Error as err:
        seen = err
    if seen != settings.rows:
        raise BenchError(
            f"through the broker, {ACCOUNTS} holds {seen!r} rows, not "
            f"{settings.rows}: is its pool on the same database as --dsn?"
        )
    pool_stats = stats["pools"][settings.pool]
    where = (
        connect_args["unix_socket"] or f"{connect_args['host']}:{connect_args['port']}"
    )
    about = (
        f"broker bench: {version}"
        + (" (pool-of-threads)" if settings.mysqld_thread_pool else "")
        + f" at {where}; broker pid {stats['pid']} pool "
        f"{settings.pool!r} max_size {pool_stats['max_size']} pipeline_depth "
        f"{pool_stats.get('pipeline_depth', 1)} busy_poll_us "
        f"{stats.get('busy_poll_us', 0)}; {os.cpu_count()} CPUs; "
        f"{settings.rounds} x {settings.duration / settings.rounds:g} s per side "
        "per cell, interleaved"
    )
    target = Target(
        target_client,
        connect_args,
        broker_pid,
        _local_mysql_pid(connect_args),
        settings.pool,
    )
    return target, about


def _start_sandbox(
    tmp: str, cleanup: contextlib.ExitStack, thread_pool: bool = False
) -> str:
    from broker.sandbox import Sandbox, SandboxError

    options = ["--thread-handling=pool-of-threads"] if thread_pool else []
    sandbox = Sandbox(os.path.join(tmp, "mysql"), options=options)
    cleanup.callback(sandbox.stop)
    try:
        sandbox.start()
    except SandboxError as err:
        raise BenchError(f"cannot start the sandbox MariaDB: {err}") from err
    # Both sides over the unix socket: the fastest local path, as `serve` uses.
    dsn = sandbox.dsn(user="root", database="broker")
    return f"{dsn}&unix_socket={sandbox.unix_socket}"


def connect(connect_args: dict, timeout: float) -> pymysql.connections.Connection:
    """Open a direct connection as a bench client or the fixture does."""
    return pymysql.connect(
        **connect_args, autocommit=True, read_timeout=timeout, write_timeout=timeout
    )


def make_fixture(connect_args: dict, settings: Settings) -> str:
    """Create bench_accounts and bench_inserts; return the server's version."""
    try:
        conn = connect(connect_args, settings.timeout * 10)
    except pymysql.MySQLError as err:
        raise BenchError(f"cannot connect to MySQL directly: {err}") from err
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
            try:
                cur.execute("SELECT COUNT(*) FROM seq_1_to_1")
                has_sequence = True
            except pymysql.MySQLError:
                has_sequence = False
            if "stream" in settings.scenarios and not has_sequence:
                raise BenchError(
                    "the stream scenario needs MariaDB's Sequence engine "
                    "(seq_1_to_N); leave it out with --scenarios"
                )
            cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS}, {INSERTS}")
            cur.execute(
                f"CREATE TABLE {ACCOUNTS} (id INT PRIMARY KEY, name VARCHAR(40), "
                "balance DECIMAL(12,2), created DATETIME) ENGINE=InnoDB"
            )
            cur.execute(
                f"CREATE TABLE {INSERTS} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                "account INT NOT NULL, amount DECIMAL(12,2) NOT NULL, "
                "created DATETIME NOT NULL) ENGINE=InnoDB"
            )
            if has_sequence:
                cur.execute(
                    f"INSERT INTO {ACCOUNTS} SELECT seq, CONCAT('account ', seq), "
                    "(seq % 100000) / 100, "
                    "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND "
                    f"FROM seq_1_to_{settings.rows}"
                )
            else:
                for first in range(1, settings.rows + 1, 1000):
                    cur.executemany(
                        f"INSERT INTO {ACCOUNTS} VALUES (%s, %s, %s, "
                        "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL %s SECOND)",
                        [
                            (i, f"account {i}", (i % 100000) / 100, i)
                            for i in range(first, min(first + 1000, settings.rows + 1))
                        ],
                    )
            # Read it all once, so the first cell does not pay for a cold cache.
            cur.execute(f"SELECT COUNT(*), SUM(balance) FROM {ACCOUNTS}")
    except pymysql.MySQLError as err:
        raise BenchError(f"cannot create the fixture tables: {err}") from err
    finally:
        conn.close()
    return version


def _drop_fixture(connect_args: dict) -> None:
    try:
        conn = connect(connect_args, 30.0)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS}, {INSERTS}")
        finally:
            conn.close()
    except pymysql.MySQLError:
        pass  # cleanup only; a sandbox goes with its directory anyway


def pool_keys(dsn: str, settings: Settings) -> dict:
    """Return the keys of a pool the bench's own broker serves."""
    return {
        "dsn": dsn,
        "min_size": 1,
        "max_size": settings.max_size,
        "pipeline_depth": settings.pipeline_depth,
        "queue_timeout": settings.timeout,
        "query_timeout": settings.timeout,
    }


def broker_keys(endpoint: str, settings: Settings) -> dict:
    """Return the [broker] table of the bench's own broker."""
    return {
        "endpoint": endpoint,
        "log_level": "warning",
        "busy_poll_us": settings.busy_poll_us,
    }


def start_broker(
    tmp: str,
    endpoint: str,
    pools: dict[str, dict],
    settings: Settings,
    cleanup: contextlib.ExitStack,
) -> ServeProcess:
    """Run `broker serve` on a config of our own (stopped by cleanup); wait for it."""
    broker = ServeProcess(Path(tmp), endpoint, own_session=True)
    broker.write(broker_keys(endpoint, settings), pools)
    broker.start()
    cleanup.callback(_stop_broker, broker)
    try:
        broker.wait_ready(BROKER_START_TIMEOUT)
    except LaunchError as err:
        raise BenchError(f"{err}:\n{broker.log()[-4000:]}") from None
    return broker


def _stop_broker(broker: ServeProcess) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        broker.stop(BROKER_STOP_TIMEOUT)  # else killed: nothing is left to wait for


def broker_stats(c: client.Client, pool: str, *, whole: bool = False) -> dict:
    """Return the broker's stats (or just pool's), or raise BenchError."""
    try:
        stats = c.stats()
    except client.BrokerUnavailable as err:
        raise BenchError(f"no broker at {c.endpoint}: {err.msg}") from err
    if pool not in stats["pools"]:
        raise BenchError(
            f"--pool: the broker has no pool {pool!r}; it has "
            f"{', '.join(sorted(stats['pools']))}"
        )
    return stats if whole else stats["pools"][pool]


def _local_broker_pid(pid: int) -> int | None:
    """Return pid if it is a broker on this host, else None (no CPU figures)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # another host, or another pid namespace
    return pid if b"broker" in cmdline else None


def _local_mysql_pid(connect_args: dict) -> int | None:
    """Return the MySQL server's pid if it runs on this host, else None."""
    try:
        conn = connect(connect_args, 10.0)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@pid_file")
                pid_file = cur.fetchone()[0]
        finally:
            conn.close()
        pid = int(Path(pid_file).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (pymysql.MySQLError, OSError, ValueError, TypeError):
        return None  # another host, or a file this user may not read
    return pid if b"mysqld" in cmdline or b"mariadbd" in cmdline else None
