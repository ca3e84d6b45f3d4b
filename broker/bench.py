"""`broker bench`: load through the broker beside direct pymysql, interleaved.

A *cell* is one scenario at one client count N. Each cell forks N client
processes per run, once through the broker ("broker") and once with a pymysql
connection per process ("direct"), for `--rounds` rounds that alternate which
side goes first (broker, direct, direct, broker, ...). On a small, noisy
machine only figures taken this way, side by side in one run, are compared.

Invariants a reader needs first:

- A child process never returns into the parent's code: it leaves with
  ``os._exit()``, so no atexit hook (the sandbox's) and no finaliser runs in it.
- Every wait is bounded: children must be ready, run and report within
  deadlines and are killed otherwise. Ctrl-C or SIGTERM kills them, stops the
  broker and the sandbox this bench started, and removes its temporary directory.
- All processes share CLOCK_MONOTONIC, so the one start time the parent sends
  lines the children up; nothing measured includes connecting or warming up.
- Fixture tables are named ``bench_*`` and are dropped afterwards; with
  ``--dsn`` they live in that DSN's database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pymysql.cursors

import client
from broker.config import ConfigError, PoolConfig
from broker.ipc import raise_open_files_limit
from broker.metrics import percentile

SCENARIOS = {
    "select1": "SELECT 1",
    "point": "primary-key lookup of one row of bench_accounts",
    "range": "1,000-row range of bench_accounts (rows/s)",
    "insert": "autocommit INSERT into bench_inserts",
    "txn": "transaction of 2 UPDATEs, 2 SELECTs and 1 INSERT, then COMMIT",
    "stream": "--stream-rows rows of seq_1_to_N, streamed (rows/s; one client)",
    # Runs alone, on servers of its own: see broker/bench_replica.py.
    "replica": "point reads with replica=True, one replica beside the primary alone",
}
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "replica")
ROW_SCENARIOS = ("range", "stream")  # throughput in rows/s, CPU per 1,000 rows
SINGLE_CLIENT = ("stream",)  # a stream pins a connection: one client is the test
ACCOUNTS = "bench_accounts"
INSERTS = "bench_inserts"
RANGE_ROWS = 1000
STREAM_CHUNK_ROWS = 5000
POINT_SQL = f"SELECT id, name, balance, created FROM {ACCOUNTS} WHERE id=%s"
RANGE_SQL = (
    f"SELECT id, name, balance, created FROM {ACCOUNTS} WHERE id BETWEEN %s AND %s+999"
)
INSERT_SQL = f"INSERT INTO {INSERTS} (account, amount, created) VALUES (%s, %s, NOW())"
TXN_SQL = (
    f"UPDATE {ACCOUNTS} SET balance = balance - %s WHERE id = %s",
    f"UPDATE {ACCOUNTS} SET balance = balance + %s WHERE id = %s",
    f"SELECT balance FROM {ACCOUNTS} WHERE id = %s",
    f"SELECT balance FROM {ACCOUNTS} WHERE id = %s",
    INSERT_SQL,
)
WARMUP_OPS = 20  # per child before the clock starts: connect, fill caches, grow pool
WARMUP_SECONDS = 0.2
START_DELAY = 0.05  # from "go" to the common start: every child is already waiting
READY_TIMEOUT = 60.0  # 32 forks connecting and warming up on 2 busy CPUs
REPORT_GRACE = 10.0  # past the end of a run plus one op's timeout
BROKER_START_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 15.0
_FRAME = struct.Struct("!cI")  # kind, payload length
_GO = struct.Struct("d")  # the common start, in time.monotonic() seconds


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


@dataclass(frozen=True)
class Settings:
    """What to run, from the command line."""

    clients: tuple[int, ...]
    scenarios: tuple[str, ...]
    duration: float  # seconds of load per side in each cell, over all rounds
    rounds: int
    max_size: int
    pipeline_depth: int
    busy_poll_us: int
    rows: int
    stream_rows: int
    timeout: float
    pool: str
    dsn: str | None
    password_file: str | None
    endpoint: str | None
    mysqld_thread_pool: bool = False


@dataclass
class Target:
    """Where the load goes: the broker client and the direct connection arguments."""

    client: client.Client
    connect_args: dict
    broker_pid: int | None
    mysql_pid: int | None  # the MySQL server's, when it runs on this host
    pool: str


@dataclass
class Job:
    """One run: what each of its forked children does."""

    scenario: str
    side: str  # "broker" or "direct"
    seconds: float
    target: Target
    settings: Settings


@dataclass
class RunResult:
    """What the children of one run reported, summed."""

    rate: float  # queries/s, or rows/s for ROW_SCENARIOS
    units: int
    latencies: array
    errors: int
    first_error: str | None
    cpu_seconds: float | None  # the broker's, while it ran; None for direct
    client_cpu_seconds: float  # all clients' together, while they measured
    mysql_cpu_seconds: float | None  # the MySQL server's; None when not local
    host_switches: int | None  # context switches on the whole host while it ran
    broker_switches: int | None  # the broker's (all its threads); None for direct


# -- command line ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add bench's flags to its subparser."""
    parser.epilog = (
        "Scenarios: "
        + "; ".join(f"{name}: {what}" for name, what in SCENARIOS.items())
        + ". qps of range and stream is rows/s, and their µs/q figures are per "
        "1,000 rows. broker µs/q is the broker's CPU time per query; all µs/q is "
        "the CPU time of the clients, the broker and MySQL together (MySQL's "
        "when it runs on this host, else -), the cost that bounds throughput "
        "when every CPU is busy. The bench creates tables bench_accounts and "
        "bench_inserts and drops them at the end."
    )
    parser.add_argument(
        "--dsn",
        metavar="URL",
        help="measure this server, mysql://user@host:port/db (no password in it); "
        "default: start a sandbox MariaDB in a temporary directory",
    )
    parser.add_argument(
        "--password-file", metavar="FILE", help="the password for --dsn's user"
    )
    parser.add_argument(
        "--endpoint",
        metavar="EP",
        help="use the broker already running here instead of starting one; "
        "without --dsn the direct side uses that broker's DSN",
    )
    parser.add_argument(
        "--pool", default="default", help="broker pool to use (default %(default)s)"
    )
    parser.add_argument(
        "--clients",
        default="1,4,16,32",
        metavar="N,N,...",
        help="client process counts to run each scenario at (default %(default)s)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        metavar="NAME,...",
        help="comma list of %(default)s (default all), or replica alone",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of load per side in each cell, split over the rounds "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="broker/direct runs per side in each cell, alternating which goes "
        "first (default %(default)s)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=4,
        help="max_size of the broker's pool, when the bench starts the broker "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--pipeline-depth",
        type=int,
        default=4,
        help="pipeline_depth of the broker's pool, when the bench starts the "
        "broker (default %(default)s; 1 = off, the config default)",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=int,
        default=200,
        metavar="US",
        help="busy_poll_us of the broker, when the bench starts the broker "
        "(default %(default)s; 0 = off, the config default)",
    )
    parser.add_argument(
        "--mysqld-thread-pool",
        action="store_true",
        help="start the sandbox MariaDB with --thread-handling=pool-of-threads "
        "(the server's own remedy for many connections), so the direct side "
        "runs against a thread pool",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=100_000,
        help="rows in bench_accounts (default %(default)s)",
    )
    parser.add_argument(
        "--stream-rows",
        type=int,
        default=1_000_000,
        help="rows the stream scenario reads (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds any one statement may take (default %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list instead of the table"
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Return the validated settings, or raise BenchError naming the bad flag."""
    try:
        clients = tuple(int(n) for n in args.clients.split(","))
    except ValueError:
        clients = ()
    if not clients or min(clients) < 1:
        raise BenchError(
            f"--clients: want counts >= 1 such as 1,4,16, got {args.clients!r}"
        )
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        raise BenchError(
            f"--scenarios: unknown {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(SCENARIOS)}"
        )
    for flag, value, ok, want in (
        ("--duration", args.duration, args.duration > 0, "> 0"),
        ("--timeout", args.timeout, args.timeout > 0, "> 0"),
        ("--rounds", args.rounds, args.rounds >= 1, ">= 1"),
        ("--max-size", args.max_size, args.max_size >= 1, ">= 1"),
        ("--pipeline-depth", args.pipeline_depth, args.pipeline_depth >= 1, ">= 1"),
        (
            "--busy-poll-us",
            args.busy_poll_us,
            0 <= args.busy_poll_us <= 100_000,
            "0-100000",
        ),
        ("--rows", args.rows, args.rows >= RANGE_ROWS, f">= {RANGE_ROWS}"),
        ("--stream-rows", args.stream_rows, args.stream_rows >= 1, ">= 1"),
    ):
        if not ok:
            raise BenchError(f"{flag}: must be {want}, got {value!r}")
    if "replica" in scenarios and len(scenarios) > 1:
        raise BenchError("--scenarios: replica runs alone (it starts its own servers)")
    if args.dsn is not None:
        _pool_config(args.dsn, None)  # refuse a bad DSN before starting anything
    return Settings(
        clients=tuple(dict.fromkeys(clients)),
        scenarios=tuple(dict.fromkeys(scenarios)),
        duration=args.duration,
        rounds=args.rounds,
        max_size=args.max_size,
        pipeline_depth=args.pipeline_depth,
        busy_poll_us=args.busy_poll_us,
        rows=args.rows,
        stream_rows=args.stream_rows,
        timeout=args.timeout,
        pool=args.pool,
        dsn=args.dsn,
        password_file=args.password_file,
        endpoint=args.endpoint,
        mysqld_thread_pool=args.mysqld_thread_pool,
    )


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table (or JSON) and return an exit code."""
    try:
        settings = _settings(args)
    except BenchError as err:
        print(f"broker bench: {err}", file=sys.stderr)
        return 2
    # Each direct client is a MySQL socket and each child a pipe here: 512
    # clients need more than a shell's 1024 descriptors.
    raise_open_files_limit()
    # SIGTERM takes the Ctrl-C path, so the children, broker and sandbox stop too.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    if "replica" in settings.scenarios:
        from broker import bench_replica

        try:
            return bench_replica.main(settings, args.json)
        finally:
            signal.signal(signal.SIGTERM, previous)
    progress = Progress()
    try:
        with contextlib.ExitStack() as cleanup:
            target, about = _set_up(settings, cleanup)
            rows = list(_bench(settings, target, progress))
    except KeyboardInterrupt:
        progress.finish()
        print("broker bench: interrupted", file=sys.stderr)
        return 130
    except BenchError as err:
        progress.finish()
        print(f"broker bench: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.finish()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, about))
    return 0


# -- setting up: sandbox, fixture, broker -----------------------------------------


def _set_up(settings: Settings, cleanup: contextlib.ExitStack) -> tuple[Target, str]:
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
            dsn = _broker_stats(probe, settings.pool)["dsn"]
    if dsn is None:
        dsn = _start_sandbox(tmp, cleanup, settings.mysqld_thread_pool)
    pool_config = _pool_config(dsn, password)
    connect_args = pool_config.connect_args()
    version = _make_fixture(connect_args, settings)
    cleanup.callback(_drop_fixture, connect_args)
    endpoint = settings.endpoint
    if endpoint is None:
        endpoint = f"ipc://{tmp}/bench.sock"
        proc = _start_broker(tmp, endpoint, dsn, settings)
        cleanup.callback(_stop_broker, proc)
    target_client = client.Client(endpoint=endpoint, timeout=settings.timeout)
    stats = _broker_stats(target_client, settings.pool, whole=True)
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


def _pool_config(dsn: str, password: str | None) -> PoolConfig:
    """Return the DSN parsed as the broker parses it, or raise BenchError."""
    try:
        config = PoolConfig(name="default", dsn=dsn, password=password)
    except ConfigError as err:
        raise BenchError(f"--dsn: {err.problem}") from err
    if password is None and config.password is not None:
        raise BenchError(
            "--dsn: must not contain a password: the command line is visible to "
            "every local user in /proc/PID/cmdline; use --password-file"
        )
    return config


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


def _connect(connect_args: dict, timeout: float) -> pymysql.connections.Connection:
    return pymysql.connect(
        **connect_args, autocommit=True, read_timeout=timeout, write_timeout=timeout
    )


def _make_fixture(connect_args: dict, settings: Settings) -> str:
    """Create bench_accounts and bench_inserts; return the server's version."""
    try:
        conn = _connect(connect_args, settings.timeout * 10)
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
        conn = _connect(connect_args, 30.0)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {ACCOUNTS}, {INSERTS}")
        finally:
            conn.close()
    except pymysql.MySQLError:
        pass  # cleanup only; a sandbox goes with its directory anyway


def _toml(value: object) -> str:
    # A JSON string is a valid TOML basic string; ints and floats read the same.
    return json.dumps(value, ensure_ascii=False)


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


def broker_lines(endpoint: str, settings: Settings) -> list[str]:
    """Return the [broker] table of the bench's own broker, as TOML lines."""
    return [
        "[broker]",
        f"endpoint = {_toml(endpoint)}",
        'log_level = "warning"',
        f"busy_poll_us = {settings.busy_poll_us}",
    ]


def launch_broker(tmp: str, config_lines: list[str]) -> subprocess.Popen:
    """Start `broker serve` on a config of these lines, logging to tmp/broker.log."""
    config = Path(tmp, "broker.toml")
    config.write_text("\n".join(config_lines) + "\n")
    # $BROKER_* would override the config file; this broker is ours alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    with open(Path(tmp, "broker.log"), "ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and argv
            [sys.executable, "-m", "broker", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=env,
            # Own session: Ctrl-C reaches the bench, which then stops the broker.
            start_new_session=True,
        )


def _start_broker(
    tmp: str, endpoint: str, dsn: str, settings: Settings
) -> subprocess.Popen:
    """Run `broker serve` with a config of our own; return once its pool is up."""
    pool = pool_keys(dsn, settings)
    if settings.password_file:
        pool["password_file"] = os.path.abspath(settings.password_file)
    lines = [*broker_lines(endpoint, settings), "", f"[pools.{settings.pool}]"]
    lines += [f"{key} = {_toml(value)}" for key, value in pool.items()]
    proc = launch_broker(tmp, lines)
    log_path = Path(tmp, "broker.log")
    deadline = time.monotonic() + BROKER_START_TIMEOUT
    with client.Client(endpoint=endpoint, timeout=0.5) as probe:
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"the broker exited with status {proc.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            try:
                if probe.stats()["pools"][settings.pool]["size"] >= 1:
                    return proc
            except client.BrokerUnavailable:
                pass  # not listening yet
            if time.monotonic() > deadline:
                _stop_broker(proc)
                raise BenchError(
                    f"the broker did not come up within {BROKER_START_TIMEOUT:g} s:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.05)


def _stop_broker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(BROKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _broker_stats(c: client.Client, pool: str, *, whole: bool = False) -> dict:
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
        conn = _connect(connect_args, 10.0)
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


def _cpu_seconds(pid: int | None) -> float | None:
    """Return user+system CPU seconds of pid from /proc, or None if unreadable."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields follow the last ).
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the scenarios, one op per call -------------------------------------------------


def _open_op(
    job: Job, rng: random.Random
) -> tuple[Callable[[], int], Callable[[], object], Callable[[], None]]:
    """Return (op, warm-up op, close) for this child; op returns rows or 1."""
    rows = job.settings.rows
    if job.side == "direct":
        conn = _connect(job.target.connect_args, job.settings.timeout)
        cur = conn.cursor()

        def run(sql: str, params: tuple | None = None) -> int:
            cur.execute(sql, params)
            return len(cur.fetchall())

        def txn(steps: list[tuple[str, tuple]]) -> None:
            conn.begin()
            try:
                for sql, params in steps:
                    run(sql, params)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

        def stream(sql: str) -> Iterator[tuple]:
            with conn.cursor(pymysql.cursors.SSCursor) as sscur:
                sscur.execute(sql)
                yield from sscur

        close = conn.close
    else:
        c = job.target.client

        def run(sql: str, params: tuple | None = None) -> int:
            return len(c.query(sql, params).rows)

        def txn(steps: list[tuple[str, tuple]]) -> None:
            with c.transaction() as tx:
                for sql, params in steps:
                    tx.query(sql, params)

        def stream(sql: str) -> Iterator[tuple]:
            return c.stream(sql, chunk_rows=STREAM_CHUNK_ROWS)

        def close() -> None:
            pass  # the process exits; the broker forgets its socket

    def point() -> int:
        return run(POINT_SQL, (rng.randint(1, rows),))

    def range_() -> int:
        first = rng.randint(1, rows - RANGE_ROWS + 1)
        return run(RANGE_SQL, (first, first))

    def insert() -> int:
        run(INSERT_SQL, (rng.randint(1, rows), rng.randint(1, 100)))
        return 1

    def transaction() -> int:
        # Lock the lower id first: no two transactions wait on each other in a cycle.
        lo, hi = sorted(rng.sample(range(1, rows + 1), 2))
        amount = rng.randint(1, 100)
        params = ((amount, lo), (amount, hi), (lo,), (hi,), (lo, amount))
        txn(list(zip(TXN_SQL, params, strict=True)))
        return 1

    n = job.settings.stream_rows

    def stream_all() -> int:
        count = total = 0
        for seq, _double in stream(f"SELECT seq, seq*2 FROM seq_1_to_{n}"):
            count += 1
            total += seq
        if count != n or total != n * (n + 1) // 2:
            raise BenchError(f"stream gave {count} rows summing {total}; wrong")
        return count

    ops = {
        "select1": lambda: run("SELECT 1"),
        "point": point,
        "range": range_,
        "insert": insert,
        "txn": transaction,
        "stream": stream_all,
    }
    op = ops[job.scenario]
    warm = (lambda: run("SELECT 1")) if job.scenario == "stream" else op
    return op, warm, close


# -- one run: fork, line up, measure, collect ------------------------------------


def _send(fd: int, kind: bytes, payload: bytes = b"") -> None:
    data = memoryview(_FRAME.pack(kind, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _child(job: Job, go_fd: int, out_fd: int) -> None:
    """Be one client process of a run, report through out_fd, and exit."""
    code = 0
    try:
        # Ctrl-C reaches the whole process group: the parent acts on it and
        # kills its children, so a child's end never reads as a failed client.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _send(out_fd, b"D", _child_run(job, go_fd, out_fd))
    except BaseException as err:
        code = 1
        with contextlib.suppress(OSError):
            _send(out_fd, b"F", f"{type(err).__name__}: {err}".encode())
    finally:
        os._exit(code)


def _child_run(job: Job, go_fd: int, out_fd: int) -> bytes:
    rng = random.Random(os.getpid() ^ time.time_ns())  # noqa: S311 - load, not keys
    op, warm, close = _open_op(job, rng)
    stop_warming = time.monotonic() + WARMUP_SECONDS
    for _ in range(WARMUP_OPS):
        warm()
        if time.monotonic() > stop_warming:
            break
    _send(out_fd, b"R")
    sel = selectors.DefaultSelector()
    sel.register(go_fd, selectors.EVENT_READ)
    if not sel.select(READY_TIMEOUT * 2):
        raise BenchError("no start signal from the parent")
    go = os.read(go_fd, _GO.size)
    if len(go) != _GO.size:
        raise BenchError("the parent went away")
    (start,) = _GO.unpack(go)
    end = start + job.seconds
    if (delay := start - time.monotonic()) > 0:
        time.sleep(delay)
    latencies = array("d")
    record = latencies.append
    clock, mono = time.perf_counter, time.monotonic
    units = errors = 0
    first_error = None
    cpu_start = time.process_time()
    while True:
        began = clock()
        try:
            units += op()
        except Exception as err:  # counted and reported; the run goes on
            errors += 1
            first_error = first_error or f"{type(err).__name__}: {err}"
        else:
            record(clock() - began)
        if mono() >= end:
            break
    finished = mono()
    cpu = time.process_time() - cpu_start
    close()
    header = json.dumps(
        {
            "units": units,
            "errors": errors,
            "error": first_error,
            "finished": finished,
            "cpu": cpu,
        }
    ).encode()
    return struct.pack("!I", len(header)) + header + latencies.tobytes()


class _Children:
    """The forked children of one run: their pipes, frames and pids."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.fds: list[int] = []
        self.buffers: dict[int, bytearray] = {}
        self.closed: set[int] = set()

    def fork(self, job: Job, n: int, go_r: int, go_w: int) -> None:
        for _ in range(n):
            out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.close(out_r)
                _child(job, go_r, out_w)  # never returns
            os.close(out_w)
            self.pids.append(pid)
            self.fds.append(out_r)
            self.buffers[out_r] = bytearray()

    def _frame(self, fd: int) -> tuple[bytes, bytes] | None:
        buf = self.buffers[fd]
        if len(buf) < _FRAME.size:
            return None
        kind, length = _FRAME.unpack_from(buf)
        if len(buf) < _FRAME.size + length:
            return None
        payload = bytes(buf[_FRAME.size : _FRAME.size + length])
        del buf[: _FRAME.size + length]
        return kind, payload

    def collect(self, kind: bytes, deadline: float, what: str) -> list[bytes]:
        """Return one frame of kind from every child, reading until deadline."""
        got: dict[int, bytes] = {}
        with selectors.DefaultSelector() as sel:
            for fd in self.fds:
                if fd not in self.closed:
                    sel.register(fd, selectors.EVENT_READ)
            while True:
                for fd in self.fds:
                    while fd not in got and (frame := self._frame(fd)) is not None:
                        if frame[0] == b"F":
                            raise BenchError(f"a client failed: {frame[1].decode()}")
                        if frame[0] == kind:
                            got[fd] = frame[1]
                    if fd not in got and fd in self.closed:
                        raise BenchError(f"a client exited before it could {what}")
                if len(got) == len(self.fds):
                    return [got[fd] for fd in self.fds]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{len(self.fds) - len(got)} of {len(self.fds)} clients "
                        f"did not {what} in time"
                    )
                for key, _events in sel.select(left):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        self.buffers[key.fd] += data
                    else:
                        sel.unregister(key.fd)
                        self.closed.add(key.fd)

    def end(self) -> None:
        """Kill children still running, reap them all, close the pipes."""
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
        for fd in self.fds:
            os.close(fd)
        self.pids.clear()
        self.fds.clear()


def _run(job: Job, n: int) -> RunResult:
    """Fork n clients, start them together, and sum what they report."""
    children = _Children()
    go_r, go_w = os.pipe()
    try:
        children.fork(job, n, go_r, go_w)
        os.close(go_r)
        go_r = -1
        ready_by = time.monotonic() + READY_TIMEOUT
        children.collect(b"R", ready_by, "connect and warm up")
        broker = job.side == "broker"
        cpu_before = _broker_cpu(job.target.broker_pid) if broker else None
        mysql_before = _cpu_seconds(job.target.mysql_pid)
        host_before = _host_switches()
        switches_before = _switches(job.target.broker_pid) if broker else None
        start = time.monotonic() + START_DELAY
        go = memoryview(_GO.pack(start) * n)
        while go:
            go = go[os.write(go_w, go) :]
        report_by = start + job.seconds + job.settings.timeout + REPORT_GRACE
        reports = children.collect(b"D", report_by, "report")
        cpu_after = _broker_cpu(job.target.broker_pid) if broker else None
        mysql_after = _cpu_seconds(job.target.mysql_pid)
        host_after = _host_switches()
        switches_after = _switches(job.target.broker_pid) if broker else None
    finally:
        children.end()
        for fd in (go_r, go_w):
            if fd >= 0:
                os.close(fd)
    latencies = array("d")
    rows = errors = 0
    client_cpu = 0.0
    first_error = None
    finished = start
    for payload in reports:
        (size,) = struct.unpack_from("!I", payload)
        head = json.loads(payload[4 : 4 + size])
        latencies.frombytes(payload[4 + size :])
        rows += head["units"]
        client_cpu += head["cpu"]
        errors += head["errors"]
        first_error = first_error or head["error"]
        finished = max(finished, head["finished"])
    units = rows if job.scenario in ROW_SCENARIOS else len(latencies)
    # Over the whole window, from the common start to the last child's end: a
    # child starved of CPU at the start counts against its side, as it should.
    rate = units / (finished - start) if finished > start else 0.0
    return RunResult(
        rate,
        units,
        latencies,
        errors,
        first_error,
        _spent(cpu_before, cpu_after),
        client_cpu,
        _spent(mysql_before, mysql_after),
        _spent(host_before, host_after),  # type: ignore[arg-type]
        _spent(switches_before, switches_after),  # type: ignore[arg-type]
    )


def _family(pid: int) -> list[int]:
    """Return pid and its children: a broker with `loops` > 1 runs in its children."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text()
            pids += [int(child) for child in children.split()]
    except (OSError, ValueError):
        pass  # no such files (another kernel): the pid alone is counted
    return pids


def _broker_cpu(pid: int | None) -> float | None:
    """Return the CPU seconds of the broker and its loop processes, or None."""
    if pid is None:
        return None
    spent = [_cpu_seconds(p) for p in _family(pid)]
    return None if None in spent else sum(spent)  # type: ignore[arg-type]


def _host_switches() -> int | None:
    """Return the host's context switches since boot (/proc/stat ctxt), or None."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("ctxt "):
                return int(line.split()[1])
    except OSError:
        pass  # not Linux: the column shows -
    return None


def _switches(pid: int | None) -> int | None:
    """Return the context switches of every thread of pid (and its loops), or None."""
    if pid is None:
        return None
    total = 0
    try:
        for member in _family(pid):
            for task in os.listdir(f"/proc/{member}/task"):
                text = Path(f"/proc/{member}/task/{task}/status").read_text()
                for line in text.splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total


def _spent(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


# -- cells, progress and the table --------------------------------------------------


def _cell(
    settings: Settings,
    target: Target,
    scenario: str,
    n: int,
    progress: Progress,
    label: str,
) -> dict:
    """Run one scenario at n clients, both sides, interleaved; return its row."""
    seconds = settings.duration / settings.rounds
    runs: dict[str, list[RunResult]] = {"broker": [], "direct": []}
    for round_ in range(settings.rounds):
        order = ("broker", "direct") if round_ % 2 == 0 else ("direct", "broker")
        for side in order:
            progress.update(f"{label}: {side}, round {round_ + 1}/{settings.rounds}")
            job = Job(scenario, side, seconds, target, settings)
            runs[side].append(_run(job, n))
    row: dict = {
        "scenario": scenario,
        "clients": n,
        "unit": "rows/s" if scenario in ROW_SCENARIOS else "queries/s",
    }
    for side, results in runs.items():
        ordered = sorted(lat for r in results for lat in r.latencies)
        row[f"qps_{side}"] = sum(r.rate for r in results) / len(results)
        row[f"p50_{side}_ms"] = percentile(ordered, 0.50) * 1000
        row[f"p99_{side}_ms"] = percentile(ordered, 0.99) * 1000
        row[f"errors_{side}"] = sum(r.errors for r in results)
        row[f"samples_{side}"] = len(ordered)
        first_error = next((r.first_error for r in results if r.first_error), None)
        if first_error:
            progress.note(
                f"{label}: {row[f'errors_{side}']} {side} errors, first: {first_error}"
            )
    qps_direct = row["qps_direct"]
    row["ratio"] = row["qps_broker"] / qps_direct if qps_direct else None
    row["conns_broker"] = _broker_stats(target.client, target.pool)["size"]
    row["conns_direct"] = n
    per = 1000 if scenario in ROW_SCENARIOS else 1  # µs per 1,000 rows, or per query
    row["broker_cpu_us"] = _per_unit(
        [r.cpu_seconds for r in runs["broker"]], runs["broker"], per
    )
    for side, results in runs.items():
        row[f"client_cpu_{side}_us"] = _per_unit(
            [r.client_cpu_seconds for r in results], results, per
        )
        row[f"mysql_cpu_{side}_us"] = _per_unit(
            [r.mysql_cpu_seconds for r in results], results, per
        )
        parts = [row[f"client_cpu_{side}_us"], row[f"mysql_cpu_{side}_us"]]
        if side == "broker":
            parts.append(row["broker_cpu_us"])
        row[f"cpu_{side}_us"] = None if None in parts else sum(parts)
        row[f"switches_{side}"] = _per_unit(
            [r.host_switches for r in results], results, per, scale=1
        )
    row["switches_broker_own"] = _per_unit(
        [r.broker_switches for r in runs["broker"]], runs["broker"], per, scale=1
    )
    return row


def _per_unit(
    amounts: list[float | None],
    results: list[RunResult],
    per: int,
    scale: float = 1e6,
) -> float | None:
    """Return amounts per query (per 1,000 rows when per is 1000), or None if unknown.

    CPU seconds become µs (scale 1e6); counts such as context switches stay counts.
    """
    units = sum(r.units for r in results)
    if not units or None in amounts:
        return None
    return sum(amounts) / units * scale * per  # type: ignore[arg-type]


def _bench(settings: Settings, target: Target, progress: Progress) -> Iterator[dict]:
    """Yield one row per (scenario, client count), in the order given."""
    cells = [
        (scenario, n)
        for scenario in settings.scenarios
        for n in ((1,) if scenario in SINGLE_CLIENT else settings.clients)
    ]
    for i, (scenario, n) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {scenario} N={n}"
        row = _cell(settings, target, scenario, n, progress, label)
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        progress.cell_done(
            f"{label}: broker {row['qps_broker']:,.0f}, direct "
            f"{row['qps_direct']:,.0f} {row['unit']} ({ratio})"
        )
        yield row


class Progress:
    """One status line on stderr: redrawn in place on a terminal, else one per cell."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._shown = 0  # width of the line on screen, to blank it when redrawn

    def update(self, text: str) -> None:
        """Show what runs now (on a terminal only)."""
        if self._tty:
            sys.stderr.write("\r" + text.ljust(self._shown))
            sys.stderr.flush()
            self._shown = len(text)

    def cell_done(self, text: str) -> None:
        """Show a finished cell's figures."""
        if self._tty:
            self.update(text)
        else:
            print(f"broker bench: {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Print a line that stays, such as a warning."""
        self.finish()
        print(f"broker bench: {text}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the redrawn line, if any."""
        if self._tty and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = 0


COLUMNS = (
    # header, row key, format
    ("scenario", "scenario", "{}"),
    ("N", "clients", "{}"),
    ("qps broker", "qps_broker", "{:,.0f}"),
    ("qps direct", "qps_direct", "{:,.0f}"),
    ("ratio", "ratio", "{:.2f}"),
    ("p50 broker ms", "p50_broker_ms", "{:.3f}"),
    ("p50 direct ms", "p50_direct_ms", "{:.3f}"),
    ("p99 broker ms", "p99_broker_ms", "{:.3f}"),
    ("p99 direct ms", "p99_direct_ms", "{:.3f}"),
    ("conns broker", "conns_broker", "{}"),
    ("conns direct", "conns_direct", "{}"),
    ("broker µs/q", "broker_cpu_us", "{:,.0f}"),
    ("all µs/q broker", "cpu_broker_us", "{:,.0f}"),
    ("all µs/q direct", "cpu_direct_us", "{:,.0f}"),
    ("cs/q broker", "switches_broker", "{:.2f}"),
    ("cs/q direct", "switches_direct", "{:.2f}"),
    ("broker cs/q", "switches_broker_own", "{:.2f}"),
)


def format_table(rows: list[dict], about: str = "") -> str:
    """Return the rows as an aligned table, with what was measured around it."""
    cells = [
        [
            fmt.format(row[key]) if row[key] is not None else "-"
            for _, key, fmt in COLUMNS
        ]
        for row in rows
    ]
    widths = [
        max(len(header), *(len(line[i]) for line in cells))
        for i, (header, _, _) in enumerate(COLUMNS)
    ]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = [about] if about else []
    out.append(line([header for header, _, _ in COLUMNS]))
    out += [line(values) for values in cells]
    out.append(
        "all µs/q: CPU time of clients, broker and MySQL together per query "
        "(- when MySQL is not on this host)"
    )
    out.append(
        "cs/q: context switches on the whole host per query, each side; "
        "broker cs/q: the broker's own"
    )
    if any(row["scenario"] in ROW_SCENARIOS for row in rows):
        out.append(
            "range, stream: qps is rows/s and µs/q is per 1,000 rows; "
            "stream runs one client"
        )
    if any(row["scenario"] == "txn" for row in rows):
        out.append("txn: qps and µs/q count whole transactions")
    return "\n".join(out)
