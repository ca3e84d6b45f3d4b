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
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING

from broker import __version__
from broker.config import Config, ConfigError, describe, load

if TYPE_CHECKING:
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


def _setup_logging(level: str) -> None:
    # journald stamps each line itself; a terminal user wants the time.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty():
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    # systemd sets JOURNAL_STREAM when stderr goes to the journal: then say
    # each line's priority, so `journalctl -p warning` finds warnings.
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter(_JournalFormatter(fmt) if journal else logging.Formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


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
        print(f"broker: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config.broker.log_level)
    from broker.sandbox import Sandbox, SandboxError
    from broker.server import Server

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
            print(f"broker: cannot start the sandbox MariaDB: {err}", file=sys.stderr)
            return EXIT_FAIL
        # The unix socket: cheaper per statement than TCP loopback.
        sandbox_dsn = f"{sandbox.dsn()}&unix_socket={sandbox.unix_socket}"
        config = config.with_sandbox_dsn(sandbox_dsn)

    def reload() -> Config:
        new = _load(args)
        return new.with_sandbox_dsn(sandbox_dsn) if sandbox_dsn else new

    server = Server(config, reload=reload)
    try:
        try:
            server.bind()
        except OSError as err:
            print(f"broker: cannot listen: {err}", file=sys.stderr)
            if isinstance(err, PermissionError):
                print(
                    "broker: run it as root or under systemd "
                    "(RuntimeDirectory=broker), "
                    "or pass --endpoint ipc://$XDG_RUNTIME_DIR/broker.sock",
                    file=sys.stderr,
                )
            return EXIT_FAIL
        server.start_pools()
        _print_banner(config, sandbox)
        try:
            return server.run()
        except Exception:
            log.exception(
                "bug: an exception escaped the I/O loop; exiting for a restart"
            )
            return EXIT_BUG
    finally:
        server.close()
        if sandbox is not None:
            sandbox.stop()
        log.info("stopped")


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
    from client.protocol import DEFAULT_ENDPOINT

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
        f"dropped {stats['dropped_frames']}",
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
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAIL
    print(describe(config))
    print("configuration OK")
    return EXIT_OK


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
