"""What `broker bench` is asked to do: its scenarios, flags and validated settings.

Every flag is checked here, before anything starts, and a bad one raises
`BenchError` naming it; `--dsn` is parsed as the broker parses a pool's DSN.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from broker.config import ConfigError, PoolConfig

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
RANGE_ROWS = 1000


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


def settings_from(args: argparse.Namespace) -> Settings:
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
        pool_config(args.dsn, None)  # refuse a bad DSN before starting anything
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


def pool_config(dsn: str, password: str | None) -> PoolConfig:
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
