#!/usr/bin/env python3
"""gunicorn under wrk, four ways to MySQL, interleaved (the deployment of #17).

    .venv/bin/python scripts/bench_gunicorn.py [--workers 4,16,64] [--rounds 3]

A sandbox MariaDB and a broker (max_size 4, pipeline_depth 4) are started in a
temporary directory. For each worker count W and each round, gunicorn
(``--preload``, sync workers) serves `bench_gunicorn_app` once per arm, in an
order that rotates each round: the broker, direct pymysql per worker, DBUtils
PooledDB and SQLAlchemy's QueuePool. wrk drives W connections for
``--seconds``; the table shows the mean req/s over the rounds, each arm's
ratio to direct, and the MySQL connections the arm held (Threads_connected
less the bench's own). Needs gunicorn, DBUtils and sqlalchemy
(``pip install -e '.[bench]'``) and wrk (``apt-get install wrk``): dev and
bench tools, never runtime dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402

from broker.sandbox import Sandbox  # noqa: E402

ARMS = ("broker", "direct", "dbutils", "sqlalchemy")
ROWS = 10_000
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as f:  # noqa: S310 - loopback
                f.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _threads_connected(admin: pymysql.connections.Connection) -> int:
    with admin.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        return int(cur.fetchone()[1])


def _run_arm(
    arm: str, workers: int, seconds: float, env: dict, admin: pymysql.Connection
) -> tuple[float, int]:
    """Serve with gunicorn, load it with wrk; return (req/s, MySQL connections)."""
    port = _free_port()
    base = _threads_connected(admin)
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(ROOT / "scripts"),
        "--log-level",
        "warning",
        "bench_gunicorn_app:app",
    ]
    proc = subprocess.Popen(gunicorn, env={**env, "BENCH_DRIVER": arm})  # noqa: S603
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, 30)
        # Warm every worker (and its pool) before the clock starts.
        subprocess.run(  # noqa: S603
            ["wrk", "-t1", f"-c{workers}", "-d1s", url],  # noqa: S607
            capture_output=True,
            check=True,
        )
        out = subprocess.run(  # noqa: S603
            ["wrk", "-t2", f"-c{workers}", f"-d{seconds:g}s", url],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if arm == "broker":  # its connections were open before the arm started
            import client

            with client.Client(endpoint=env["BROKER_ENDPOINT"]) as c:
                conns = c.stats()["pools"]["default"]["size"]
        else:
            conns = _threads_connected(admin) - base
        if "Non-2xx" in out:
            raise SystemExit(f"{arm}: wrong answers under load:\n{out}")
        match = _RATE.search(out)
        if match is None:
            raise SystemExit(f"{arm}: wrk printed no rate:\n{out}")
        return float(match[1]), conns
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    """Run the arms at each worker count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="4,16,64", help="gunicorn worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk per arm")
    args = parser.parse_args()
    for tool, how in (("wrk", "apt-get install wrk"),):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_gunicorn: {tool} not found; run: {how}")
    for module in ("gunicorn", "dbutils", "sqlalchemy"):
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(
                f"bench_gunicorn: python module {module} missing; run: "
                f"{sys.executable} -m pip install -e '{ROOT}[bench]'"
            ) from None
    workers = [int(w) for w in args.workers.split(",")]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bk-gu-"))
        sandbox = Sandbox(os.path.join(tmp, "mysql"))
        sandbox.start()
        stack.callback(sandbox.stop)
        admin = sandbox.admin()
        with admin.cursor() as cur:
            cur.execute("SET GLOBAL max_connections = 1000")
            cur.execute("USE broker")
            cur.execute(
                "CREATE TABLE bench_accounts (id INT PRIMARY KEY, name VARCHAR(40), "
                "balance DECIMAL(12, 2))"
            )
            cur.execute(
                "INSERT INTO bench_accounts SELECT seq, CONCAT('account ', seq), "
                f"seq * 1.5 FROM seq_1_to_{ROWS}"
            )
        endpoint = f"ipc://{tmp}/broker.sock"
        config = Path(tmp, "broker.toml")
        dsn = f"{sandbox.dsn()}&unix_socket={sandbox.unix_socket}"
        config.write_text(
            f'[broker]\nendpoint = "{endpoint}"\n'
            f'[pools.default]\ndsn = "{dsn}"\nmax_size = 4\npipeline_depth = 4\n'
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BROKER_ENDPOINT": endpoint,
            "BENCH_UNIX_SOCKET": sandbox.unix_socket,
            "BENCH_ROWS": str(ROWS),
        }
        broker = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "broker", "serve", "--config", str(config)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(broker.wait)
        stack.callback(broker.terminate)
        time.sleep(2)
        results: dict[tuple[int, str], list[tuple[float, int]]] = {}
        for w in workers:
            for r in range(args.rounds):
                order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
                for arm in order:
                    rate, conns = _run_arm(arm, w, args.seconds, env, admin)
                    results.setdefault((w, arm), []).append((rate, conns))
                    print(
                        f"bench_gunicorn: W={w} round {r + 1} {arm}: {rate:,.0f} "
                        f"req/s, {conns} MySQL connections",
                        file=sys.stderr,
                        flush=True,
                    )
        print(
            f"gunicorn --preload sync workers, wrk -c W, {args.rounds} rounds x "
            f"{args.seconds:g} s per arm, interleaved; {os.cpu_count()} CPUs"
        )
        print(f"{'W':>4}  " + "  ".join(f"{a:>20}" for a in ARMS))
        for w in workers:
            direct = statistics.mean(x for x, _ in results[(w, "direct")])
            cells = []
            for arm in ARMS:
                runs = results[(w, arm)]
                mean = statistics.mean(x for x, _ in runs)
                spread = (max(x for x, _ in runs) - min(x for x, _ in runs)) / mean
                conns = max(c for _, c in runs)
                cells.append(
                    f"{mean:>7,.0f} {mean / direct:4.2f}x ±{spread * 50:2.0f}% c{conns}"
                )
            print(f"{w:>4}  " + "  ".join(f"{c:>20}" for c in cells))
        print("cell: mean req/s, ratio to direct, ± half the spread, MySQL conns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
