"""The `broker` command: serve, status, check-config, bench.

Each subcommand parses its flags, sets up logging and returns an exit code:
0 success, 1 a runtime failure, 2 a usage or configuration error, 70 a bug
(an exception escaped the I/O loop; systemd restarts the broker).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from broker import __version__
from broker.config import (
    Config,
    ConfigError,
    PoolConfig,
    config_warnings,
    describe,
    load,
)

if TYPE_CHECKING:
    from broker.loop import Broker
    from broker.processes import LoopSlot
    from broker.sandbox import Sandbox

log = logging.getLogger("broker")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 70


class _JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog level, which journald reads as priority."""

    _PRIORITY = types.MappingProxyType(
        {
            logging.DEBUG: 7,
            logging.INFO: 6,
            logging.WARNING: 4,
            logging.ERROR: 3,
            logging.CRITICAL: 2,
        }
    )

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self._PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    """Tell whether stderr is the journal stream systemd names in $JOURNAL_STREAM.

    Then each line may start with its syslog priority (``<3>`` for err), which
    journald strips and records, so `journalctl -p err` finds it.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def _stderr(message: str, level: int = logging.ERROR) -> None:
    """Print a message for the operator on stderr, at level's journal priority."""
    if _stderr_is_journal():
        prefix = f"<{_JournalFormatter._PRIORITY[level]}>"
        message = "\n".join(prefix + line for line in message.splitlines())
    print(message, file=sys.stderr, flush=True)


def _setup_logging(level: str) -> None:
    # journald stamps each line itself; a terminal user wants the time.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty():
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    journal = _stderr_is_journal()
    handler.setFormatter(_JournalFormatter(fmt) if journal else logging.Formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


_TIMESPAN_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|min|h|d|w|M|y)")
_TIMESPAN_UNIT = types.MappingProxyType(
    {
        "us": 1e-6,
        "ms": 1e-3,
        "s": 1.0,
        "min": 60.0,
        "h": 3600.0,
        "d": 86400.0,
        "w": 604800.0,
        "M": 2629800.0,
        "y": 31557600.0,
    }
)


def parse_timespan(text: str) -> float | None:
    """Return seconds for a time span as systemctl prints it ("1min 35s")."""
    if text == "infinity":
        return float("inf")
    parts = text.split()
    matches = [_TIMESPAN_PART.fullmatch(part) for part in parts]
    if not parts or not all(matches):
        return None
    return sum(float(m[1]) * _TIMESPAN_UNIT[m[2]] for m in matches if m)


def _unit_stop_timeout() -> float | None:
    """Return TimeoutStopSec= of the installed broker.service, drop-ins included.

    None when no such unit is loaded (or no systemd runs): then the shipped
    unit's value is what check-config compares drain_timeout with.
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        shown = subprocess.run(  # noqa: S603 - systemctl show, argv we built
            [systemctl, "show", "broker.service", "-p", "LoadState,TimeoutStopUSec"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    props = dict(line.partition("=")[::2] for line in shown.splitlines())
    if props.get("LoadState") != "loaded":
        return None
    return parse_timespan(props.get("TimeoutStopUSec", ""))


def _default_sandbox_dir() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        Path.home(), ".local", "state"
    )
    return os.path.join(state, "mysql-broker", "sandbox")


def _load(args: argparse.Namespace) -> Config:
    return load(
        args.config, dsn=args.dsn, endpoint=args.endpoint, log_level=args.log_level
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the broker in the foreground until SIGTERM/SIGINT."""
    try:
        config = _load(args)
    except ConfigError as err:
        _stderr(f"broker: config error: {err}")
        return EXIT_USAGE
    _setup_logging(config.broker.log_level)
    for warning in config_warnings(config, _unit_stop_timeout()):
        log.warning("%s", warning)
    from broker.loop import Broker
    from broker.sandbox import Sandbox, SandboxError

    sandbox = None
    sandbox_dsn = None
    if config.sandbox:
        sandbox = Sandbox(args.sandbox_dir)
        log.info(
            "no dsn configured: starting a sandbox MariaDB in %s", args.sandbox_dir
        )
        try:
            sandbox.start()
        except SandboxError as err:
            _stderr(f"broker: cannot start the sandbox MariaDB: {err}")
            return EXIT_FAIL
        # The unix socket: cheaper per statement than TCP loopback.
        sandbox_dsn = f"{sandbox.dsn()}&unix_socket={sandbox.unix_socket}"
        config = config.with_sandbox_dsn(sandbox_dsn)

    def reload() -> Config:
        new = _load(args)
        return new.with_sandbox_dsn(sandbox_dsn) if sandbox_dsn else new

    try:
        if config.broker.loops > 1:
            return _serve_loops(config, reload, sandbox)
        server = Broker(config, reload=reload)
        try:
            try:
                server.bind()
            except OSError as err:
                return _cannot_listen(err)
            server.start_pools()
            _print_banner(config, sandbox)
            return _run(server)
        finally:
            server.close()
    finally:
        if sandbox is not None:
            sandbox.stop()
        log.info("stopped")


def _run(server: Broker) -> int:
    try:
        return server.run()
    except Exception:
        log.exception("bug: an exception escaped the I/O loop; exiting for a restart")
        return EXIT_BUG


def _cannot_listen(err: OSError) -> int:
    _stderr(f"broker: cannot listen: {err}")
    if isinstance(err, PermissionError):
        _stderr(
            "broker: run it as root or under systemd (RuntimeDirectory=broker), "
            "or pass --endpoint ipc://$XDG_RUNTIME_DIR/broker.sock"
        )
    return EXIT_FAIL


def _serve_loops(
    config: Config, reload: Callable[[], Config], sandbox: Sandbox | None
) -> int:
    """Run `[broker] loops` I/O loop processes on sockets bound here."""
    from broker.ipc import listen_unix, unlink_socket
    from broker.loop import Broker
    from broker.processes import share, supervise

    loops = config.broker.loops
    listening: dict[str, socket.socket] = {}
    try:
        for endpoint in config.broker.endpoint:
            if endpoint.startswith("ipc://"):
                path = endpoint[len("ipc://") :]
                listening[path] = listen_unix(
                    path, config.broker.socket_mode, config.broker.socket_group
                )
    except OSError as err:
        for sock in listening.values():
            sock.close()
        return _cannot_listen(err)

    def run_loop(slot: LoopSlot) -> int:
        def tag(record: logging.LogRecord) -> bool:
            record.name = f"{record.name}[loop {slot.index}]"
            return True

        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)

        def reload_share() -> Config:
            return share(reload(), slot.index, loops)

        server = Broker(share(config, slot.index, loops), reload_share, loop=slot)
        try:
            server.bind(listening)
            server.start_pools()
            return _run(server)
        finally:
            server.close()

    _print_banner(config, sandbox)
    try:
        return supervise(config, loops, listening, run_loop)
    finally:
        for path in listening:
            unlink_socket(path)


def _print_banner(config: Config, sandbox: Sandbox | None) -> None:
    endpoint = config.broker.endpoint[0]
    for pool in config.pools.values():
        log.info(
            "pool %s -> %s (max_size %d)", pool.name, pool.safe_dsn(), pool.max_size
        )
    if sandbox is not None:
        log.info(
            "the sandbox MariaDB keeps its data in %s and stops with the broker",
            sandbox.base_dir,
        )
    hint = f"BROKER_ENDPOINT={endpoint} " if endpoint != _default_endpoint() else ""
    log.info(
        "try from another shell: %s%s -c 'import client; "
        'print(client.query("SELECT VERSION()").scalar())\'',
        hint,
        sys.executable,
    )


def _default_endpoint() -> str:
    from client.wire.protocol import DEFAULT_ENDPOINT

    return DEFAULT_ENDPOINT


def cmd_status(args: argparse.Namespace) -> int:
    """Print what the running broker is doing."""
    import client

    endpoint = args.endpoint or os.environ.get("BROKER_ENDPOINT") or _default_endpoint()
    try:
        with client.Client(endpoint=endpoint, timeout=args.timeout) as c:
            stats = c.stats()
    except client.BrokerUnavailable as err:
        print(f"broker status: {err.msg}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_status(stats))
    return EXIT_OK


def format_status(stats: dict) -> str:
    """Return the stats dict as a terminal-friendly report."""
    up = stats["uptime_s"]
    lines = [
        f"broker {stats['version']}  pid {stats['pid']}  up {_duration(up)}  "
        f"{'DRAINING  ' if stats['draining'] else ''}"
        f"on {', '.join(stats['endpoints'])}",
        f"requests {stats['requests']}  bad {stats['bad_requests']}  "
        f"dropped {stats['dropped_frames']}  "
        f"fds {stats['open_files']}/{stats['open_files_limit']}"
        + (
            f" (refused {stats['refused_at_fd_limit']} at the limit)"
            if stats["refused_at_fd_limit"]
            else ""
        ),
        "",
        f"{'POOL':<12} {'CONNS':>7} {'IDLE':>5} {'BUSY':>5} {'PINNED':>6} {'WAIT':>5} "
        f"{'SERVED':>9} {'FAILED':>7} {'TIMEOUTS':>8} {'LOST':>5} "
        f"{'p50 ms':>8} {'p99 ms':>8}",
    ]
    for name, p in stats["pools"].items():
        timeouts = p["query_timeouts"] + p["pool_timeouts"]
        lines.append(
            f"{name:<12} {p['size']:>3}/{p['max_size']:<3} "
            f"{p['idle']:>5} {p['busy']:>5} "
            f"{p['pinned']:>6} {p['waiting']:>5} {p['served']:>9} {p['failed']:>7} "
            f"{timeouts:>8} {p['lost']:>5} {p['latency_ms']['p50']:>8.2f} "
            f"{p['latency_ms']['p99']:>8.2f}"
        )
        if p["unreachable"]:
            lines.append(f"{'':<12} MySQL unreachable: {p['last_error']}")
        for r in p.get("replicas", ()):
            lines.append(_replica_line(r))
    if stats["pins"]:
        lines += [
            "",
            f"{'KIND':<12} {'POOL':<12} {'CONN':>6} {'AGE':>8} {'IDLE':>8}  HELD BY",
        ]
        for pin in stats["pins"]:
            who = pin["who"]
            program = who.get("program") or ""
            holder = f"pid {who.get('pid')} {program}@{who.get('host') or '?'}"
            if who.get("name"):
                holder += f" ({who['name']})"
            lines.append(
                f"{pin['kind']:<12} {pin['pool']:<12} {pin['connection']:>6} "
                f"{_duration(pin['age_s']):>8} {_duration(pin['idle_s']):>8}  {holder}"
            )
    if stats.get("pins_per_client"):
        lines += ["", f"{'PINS':>6} {'MAX':>5} {'POOL':<12} CLIENT"]
        for c in stats["pins_per_client"]:
            holder = f"pid {c['pid']} {c['program'] or ''}@{c['host'] or '?'}"
            if c["name"]:
                holder += f" ({c['name']})"
            cap = c["max"] or "-"
            lines.append(f"{c['pins']:>6} {cap:>5} {c['pool']:<12} {holder}")
    return "\n".join(lines)


def _replica_line(r: dict) -> str:
    """Return one replica's line under its pool in `broker status`."""
    lag = "lag ?" if r["lag_s"] is None else f"lag {r['lag_s']:g}s"
    line = (
        f"  replica {r['address']}  {r['state']}  {lag}  "
        f"conns {r['connections']}/{r['max_size']}  reads {r['reads']}  "
        f"fallbacks {r['fallbacks']}  ryw waits {r['ryw_waits']} "
        f"(timed out {r['ryw_timeouts']})"
    )
    return line + (f"  ({r['why']})" if r["state"] != "serving" else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and explain it, or say exactly what is wrong."""
    try:
        config = _load(args)
    except ConfigError as err:
        _stderr(f"error: {err}")
        return EXIT_FAIL
    print(describe(config))
    for warning in config_warnings(config, _unit_stop_timeout()):
        _stderr(f"warning: {warning}", logging.WARNING)
    if args.connect and config.sandbox:
        print("no dsn: nothing to connect to (`broker serve` starts a sandbox)")
    elif args.connect:
        failed = [name for name, pool in config.pools.items() if not _try_pool(pool)]
        if failed:
            _stderr(f"error: cannot use pool(s) {', '.join(failed)}; see above")
            return EXIT_FAIL
        print("configuration OK, every pool connected")
        return EXIT_OK
    print("configuration OK")
    return EXIT_OK


def _try_pool(pool: PoolConfig) -> bool:
    """Open one connection as the broker would; print what MySQL answered."""
    import pymysql
    from pymysql.constants import CLIENT

    from broker.connector import is_auth_failure, setup_statements

    where = pool.safe_dsn()
    try:
        conn = pymysql.connect(
            **pool.connect_args(),
            autocommit=True,
            client_flag=CLIENT.MULTI_RESULTS,
            read_timeout=pool.connect_timeout,  # init_sql must not hang the check
        )
    except pymysql.err.MySQLError as err:
        if is_auth_failure(err):
            said = "MySQL refused the login"
            hint = f"check the user in pools.{pool.name}.dsn and the password"
        elif isinstance(err, pymysql.err.OperationalError) and _errno(err) >= 2000:
            said = "cannot reach MySQL"  # 2000-2999: the client's own errors
            hint = f"check host and port in pools.{pool.name}.dsn, and the server"
        else:
            said, hint = "MySQL answered", f"check pools.{pool.name}.dsn"
        _stderr(f"pool {pool.name}: {where}: {said}: {_mysql_said(err)} ({hint})")
        return False
    try:
        with conn.cursor() as cur:
            for sql in setup_statements(pool):
                try:
                    cur.execute(sql)
                except pymysql.err.MySQLError as err:
                    _stderr(
                        f"pool {pool.name}: connected, but MySQL refused {sql!r}: "
                        f"{_mysql_said(err)} (check pools.{pool.name}.init_sql)"
                    )
                    return False
            cur.execute("SELECT CURRENT_USER(), VERSION()")
            user, version = cur.fetchone()
        print(f"pool {pool.name}: {where}: connected as {user}, server {version}")
        return True
    finally:
        conn.close()


def _errno(err: BaseException) -> int:
    """Return the MySQL error number of a pymysql error, 0 if it has none."""
    return err.args[0] if err.args and isinstance(err.args[0], int) else 0


def _mysql_said(err: BaseException) -> str:
    """Return a pymysql error as MySQL's number and message, unquoted."""
    if len(err.args) == 2 and _errno(err):
        return f"error {err.args[0]}: {err.args[1]}"
    return str(err)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a CurveZMQ key pair for the broker or one client."""
    from zmq.auth import create_certificates

    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    public, secret = create_certificates(args.dir, args.name)
    os.chmod(secret, 0o600)
    print(f"public key: {public}")
    print(f"secret key: {secret} (keep it private)")
    if args.name == "server":
        print(f'broker.toml: curve_secret_key = "{secret}"')
        print(f"clients: Client(server_key={public!r}, client_key=...)")
    else:
        print(
            "authorise it: copy the public key into the broker's curve_authorized_keys"
        )
        print(f"this client: Client(..., client_key={secret!r}) or $BROKER_CLIENT_KEY")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the broker beside direct pymysql connections."""
    from broker import bench

    return bench.main(args)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config (default $BROKER_CONFIG)"
    )
    parser.add_argument(
        "--dsn",
        metavar="URL",
        help="mysql://user@host:port/db for the default pool (default $BROKER_DSN); "
        "give the password with password_file or $BROKER_PASSWORD, never here",
    )
    parser.add_argument(
        "--endpoint",
        metavar="EP",
        help="ipc:// or tcp:// address to serve (default $BROKER_ENDPOINT)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="broker",
        description="One process per host owns every MySQL connection and serves "
        "queries to fork-safe clients over ZeroMQ.",
        epilog="Run `broker COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the broker in the foreground",
        description="Run the broker in the foreground, logging to stderr. With no DSN "
        "anywhere it starts a sandbox MariaDB of its own. Speaks sd_notify under "
        "systemd; SIGHUP reloads the config; SIGTERM drains in-flight work and "
        "exits 0.",
    )
    _config_flags(serve)
    serve.add_argument(
        "--sandbox-dir",
        default=_default_sandbox_dir(),
        metavar="DIR",
        help="where the sandbox MariaDB keeps its data (default %(default)s)",
    )
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser(
        "status",
        help="show pools, connections, queues, counters and who holds what",
        description="Ask the running broker for its statistics.",
    )
    status.add_argument(
        "--endpoint",
        metavar="EP",
        help="default $BROKER_ENDPOINT or the built-in default",
    )
    status.add_argument(
        "--json", action="store_true", help="print the raw statistics as JSON"
    )
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default 5)"
    )
    status.set_defaults(func=cmd_status)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration and explain it",
        description="Load the configuration as `broker serve` would and print a "
        "summary, "
        "or the exact key and value at fault.",
    )
    _config_flags(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also open one connection per pool and print what MySQL answered "
        "(exit 1 if any pool fails)",
    )
    check.set_defaults(func=cmd_check_config)

    keygen = sub.add_parser(
        "keygen",
        help="write a CurveZMQ key pair for tcp endpoints",
        description="Write NAME.key (public) and NAME.key_secret into DIR. The broker "
        "uses server.key_secret as curve_secret_key; each client gets its own pair, "
        "and its public .key goes into the broker's curve_authorized_keys directory.",
    )
    keygen.add_argument("dir", metavar="DIR", help="where to write the key files")
    keygen.add_argument(
        "--name", default="server", help="file name stem (default server)"
    )
    keygen.set_defaults(func=cmd_keygen)

    bench = sub.add_parser(
        "bench",
        help="load-test the broker beside direct pymysql",
        description="Run scenarios at several client counts through the broker and "
        "directly, interleaved, and print throughput and latency side by side. "
        "Without --dsn it starts a sandbox MariaDB and a broker of its own.",
    )
    from broker import bench as bench_module

    bench_module.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the broker command line; return the exit code."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    code = args.func(args)
    log.debug("%s finished in %.1f s", args.command, time.monotonic() - started)
    return code
