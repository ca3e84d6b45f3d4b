"""gunicorn + Django: the broker beside Django's own MySQL backend, one run each.

    .venv/bin/python examples/django_site/bench.py [--seconds 5] [--clients 32]

Starts a private MariaDB (broker.sandbox) and a broker whose pool has at most
``--max-size`` connections, migrates the example site, then for each backend
(client.django; django.db.backends.mysql on pymysql with CONN_MAX_AGE=0 and
None) runs ``gunicorn --preload -k gthread -w 4 --threads 4`` and sends
``/hit`` (an atomic() insert and read-back) from ``--clients`` threads for
``--seconds``. Prints requests/s and the MySQL connections on the database
(peak, sampled every 20 ms). The load generator shares the machine with
everything else: the figures are indicative, not a benchmark.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent.parent
sys.path.insert(0, str(ROOT))

from broker.sandbox import Sandbox  # noqa: E402

DATABASE = "benchdb"


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connections(server: Sandbox) -> int:
    """Count the server's connections on the bench database, less this one."""
    conn = server.admin()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID != CONNECTION_ID()",
                (DATABASE,),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until gunicorn answers on port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/hit", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer")


def load(port: int, server: Sandbox, seconds: float, clients: int) -> tuple:
    """Send /hit from clients threads for seconds; return (req/s, errors, peak)."""
    stop = time.monotonic() + seconds
    counts = [0, 0]  # ok, errors
    peak = 0
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < stop:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/hit", timeout=30
                ) as r:
                    ok = r.status == 200 and b'"own_row": true' in r.read()
            except OSError:
                ok = False
            with lock:
                counts[0 if ok else 1] += 1

    def sample() -> None:
        nonlocal peak
        while time.monotonic() < stop:
            peak = max(peak, connections(server))
            time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(clients + 1) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        futures.append(pool.submit(sample))
        for f in futures:
            f.result()
    return counts[0] / seconds, counts[1], peak


def run(
    label: str, env: dict[str, str], server: Sandbox, args: argparse.Namespace
) -> None:
    """Run gunicorn with env, load it, stop it; print one row."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603  our own interpreter and arguments
        [
            *(sys.executable, "-m", "gunicorn", "--preload", "-k", "gthread"),
            *("-w", "4", "--threads", "4", "-b", f"127.0.0.1:{port}"),
            *("--no-control-socket", "--log-level", "warning"),
            "mysite.wsgi:application",
        ],
        cwd=SITE,
        env=env,
        start_new_session=True,
    )
    try:
        wait_http(port, proc)
        rate, errors, peak = load(port, server, args.seconds, args.clients)
        after = connections(server)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    print(f"{label:<40} {rate:>8.0f} {errors:>7} {peak:>10} {after:>10}", flush=True)


def main() -> None:
    """Set up the server, broker and schema; run the three backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-size", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        with Sandbox(work / "mysql") as server:
            conn = server.admin()
            conn.query(f"CREATE DATABASE {DATABASE}")
            conn.close()
            (work / "pw").write_text(server.password)
            endpoint = f"ipc://{work}/broker.sock"
            (work / "broker.toml").write_text(
                f'[broker]\nendpoint = "{endpoint}"\n[pools.default]\n'
                f'dsn = "{server.dsn(user=server.user, database=DATABASE)}"\n'
                f'password_file = "{work / "pw"}"\nmax_size = {args.max_size}\n'
            )
            base = {k: v for k, v in os.environ.items() if not k.startswith("BROKER")}
            base.update(
                PYTHONPATH=f"{SITE}{os.pathsep}{ROOT}",
                DJANGO_DB_NAME=DATABASE,
                BROKER_ENDPOINT=endpoint,
            )
            broker = subprocess.Popen(  # noqa: S603  our own interpreter
                [
                    sys.executable,
                    "-m",
                    "broker",
                    "serve",
                    "--config",
                    work / "broker.toml",
                ],
                cwd=ROOT,
                env=base,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(2)
                subprocess.run(
                    [sys.executable, "manage.py", "migrate", "-v", "0"],
                    cwd=SITE,
                    env=base,
                    check=True,
                )
                print(
                    f"{args.clients} clients, {args.seconds:g} s each; gunicorn "
                    "--preload -k gthread -w 4 --threads 4"
                )
                print(
                    f"{'backend':<40} {'req/s':>8} {'errors':>7} "
                    f"{'peak conns':>10} {'conns after':>10}"
                )
                run(
                    f"client.django (broker max_size {args.max_size})",
                    base,
                    server,
                    args,
                )
                # Its pool's connections would count against the baselines.
                broker.send_signal(signal.SIGTERM)
                broker.wait(30)
                direct = {
                    **base,
                    "DJANGO_ENGINE": "mysql",
                    "MYSQL_HOST": server.host,
                    "MYSQL_PORT": str(server.port),
                    "MYSQL_USER": server.user,
                    "MYSQL_PASSWORD": server.password,
                }
                for max_age in ("0", "none"):
                    env = {**direct, "DJANGO_CONN_MAX_AGE": max_age}
                    run(
                        f"django.db.backends.mysql CONN_MAX_AGE={max_age}",
                        env,
                        server,
                        args,
                    )
            finally:
                if broker.poll() is None:
                    broker.send_signal(signal.SIGTERM)
                    broker.wait(30)


if __name__ == "__main__":
    main()
