"""The recipes in examples/, each run as a real process tree against the broker.

gunicorn (--preload, sync and gthread) with a plain WSGI app, Flask and the
Django site; uwsgi (--master, with and without --lazy-apps); celery prefork
workers on kombu's filesystem transport; multiprocessing.Pool and
ProcessPoolExecutor with every start method. Each web test sends concurrent
requests that each check they read their own row, and counts the MySQL
connections on the test's database while they run.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from broker_fixtures import ROOT, BrokerProcess

EXAMPLES = ROOT / "examples"
DJANGO_SITE = EXAMPLES / "django_site"
# The broker pool's cap on MySQL connections: fewer than the 12 threads that
# may hold a transaction at once, and more than one gthread worker's 4 threads
# (a client process may not pin every connection of a pool).
MAX_SIZE = 6
REQUESTS = 48
CLIENTS = 12  # concurrent HTTP clients: more than MAX_SIZE
pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(broker: BrokerProcess, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_ENDPOINT=broker.endpoint, PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a process tree in its own session; SIGTERM, then SIGKILL it after."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(args: list[str], **kwargs: Any) -> subprocess.Popen:
        log = tmp_path / f"proc{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=out, start_new_session=True, **kwargs
            )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind by the leader
        except ProcessLookupError:
            pass
        print(f"--- {' '.join(proc.args[:4])} ---\n{log.read_text()[-4000:]}")


def _get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=timeout
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait_http(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            _get(port, "/", timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, f"no HTTP on port {port}"
            time.sleep(0.1)


def _mysql_connections(mysql_server: Any, database: str, mine: int) -> int:
    """Count the server's connections on database (the broker's), not the test's."""
    conn = mysql_server.admin()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID NOT IN (CONNECTION_ID(), %s)",
                (database, mine),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def _hammer(
    port: int, mysql_server: Any, direct: pymysql.connections.Connection
) -> tuple[list[dict], int]:
    """Send REQUESTS GETs of /hit from CLIENTS threads; return replies, peak conns."""
    peak = 0
    database, mine = direct.db.decode(), direct.thread_id()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _mysql_connections(mysql_server, database, mine))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            replies = list(pool.map(lambda _: _get(port, "/hit"), range(REQUESTS)))
    finally:
        done.set()
        sampler.join()
    assert [status for status, _ in replies] == [200] * REQUESTS, replies[:3]
    return [json.loads(body) for _, body in replies], peak


def _check_hits(replies: list[dict], server_pid: int) -> set[int]:
    """Every request read its own row, rows are distinct; return the worker pids."""
    assert all(r["own_row"] for r in replies)
    assert len({r["id"] for r in replies}) == REQUESTS
    assert len({r["token"] for r in replies}) == REQUESTS
    pids = {r["pid"] for r in replies}
    assert server_pid not in pids  # served by forked workers, not the master
    return pids


def _hammer_workers(
    port: int,
    server_pid: int,
    mysql_server: Any,
    direct: pymysql.connections.Connection,
) -> tuple[set[int], int, int]:
    """Hammer until two workers have served (at most 3 rounds); (pids, peak, rounds).

    On a loaded machine the kernel may hand one worker every accept() of a
    round; another round gives the others their turn.
    """
    pids: set[int] = set()
    peak = rounds = 0
    while len(pids) < 2 and rounds < 3:
        replies, round_peak = _hammer(port, mysql_server, direct)
        pids |= _check_hits(replies, server_pid)
        peak, rounds = max(peak, round_peak), rounds + 1
    return pids, peak, rounds


def _table_rows(direct: pymysql.connections.Connection, table: str) -> int:
    with direct.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return cur.fetchone()[0]


@pytest.fixture
def web_broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A broker whose pool has MAX_SIZE connections at most."""
    return make_broker(max_size=MAX_SIZE)


# --- gunicorn ----------------------------------------------------------------------


def _gunicorn(kind: str, app: str, port: int, chdir: Path = ROOT) -> list[str]:
    args = [sys.executable, "-m", "gunicorn", "--preload", "-w", "3", "-k", kind]
    args.append(
        "--no-control-socket"
    )  # else gunicorn 27 binds ~/.gunicorn/gunicorn.ctl
    if kind == "gthread":
        args += ["--threads", "4"]
    return [*args, "-b", f"127.0.0.1:{port}", "--chdir", str(chdir), app]


@pytest.mark.parametrize(
    ("kind", "app"),
    [("sync", "examples.wsgi_app:app"), ("gthread", "examples.flask_app:app")],
)
def test_gunicorn_preload_serves_each_request_its_own_row(
    kind: str,
    app: str,
    web_broker: BrokerProcess,
    spawn: Callable[..., subprocess.Popen],
    mysql_server: Any,
    database: str,
    direct: pymysql.connections.Connection,
) -> None:
    port = _free_port()
    proc = spawn(_gunicorn(kind, app, port), env=_env(web_broker), cwd=ROOT)
    _wait_http(proc, port)
    pids, peak, rounds = _hammer_workers(port, proc.pid, mysql_server, direct)
    assert len(pids) >= 2
    assert 1 <= peak <= MAX_SIZE  # 3 workers (x4 threads), 12 clients
    assert _table_rows(direct, "hits") == REQUESTS * rounds


@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_gunicorn_preload_django_site(
    kind: str,
    web_broker: BrokerProcess,
    spawn: Callable[..., subprocess.Popen],
    mysql_server: Any,
    database: str,
    direct: pymysql.connections.Connection,
) -> None:
    env = _env(
        web_broker,
        DJANGO_DB_NAME=database,
        PYTHONPATH=f"{DJANGO_SITE}{os.pathsep}{ROOT}",
    )
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=DJANGO_SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    port = _free_port()
    proc = spawn(
        _gunicorn(kind, "mysite.wsgi:application", port, DJANGO_SITE),
        env=env,
        cwd=DJANGO_SITE,
    )
    _wait_http(proc, port)
    pids, peak, rounds = _hammer_workers(port, proc.pid, mysql_server, direct)
    assert len(pids) >= 2
    assert 1 <= peak <= MAX_SIZE
    assert _table_rows(direct, "hits_hit") == REQUESTS * rounds
    with web_broker.client() as c:
        assert c.stats()["pins"] == []  # every atomic() block let go of its pin


# --- uwsgi -------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True], ids=["preforked-app", "lazy-apps"])
def test_uwsgi_master_processes(
    lazy: bool,
    web_broker: BrokerProcess,
    spawn: Callable[..., subprocess.Popen],
    mysql_server: Any,
    database: str,
    direct: pymysql.connections.Connection,
) -> None:
    uwsgi = shutil.which("uwsgi", path=str(Path(sys.executable).parent))
    assert uwsgi, "uwsgi is in the test extra: pip install -e '.[test]'"
    port = _free_port()
    args = [uwsgi, "--master", "--processes", "3", "--die-on-term", "--need-app"]
    args += ["--http-socket", f"127.0.0.1:{port}", "--module", "examples.wsgi_app:app"]
    args += ["--home", sys.prefix, "--pythonpath", str(ROOT), "--disable-logging"]
    if lazy:
        args.append("--lazy-apps")
    proc = spawn(args, env=_env(web_broker), cwd=ROOT)
    _wait_http(proc, port)
    pids, peak, rounds = _hammer_workers(port, proc.pid, mysql_server, direct)
    assert len(pids) >= 2
    assert 1 <= peak <= MAX_SIZE
    assert _table_rows(direct, "hits") == REQUESTS * rounds


# --- celery ------------------------------------------------------------------------


def _celery_call(env: dict[str, str], code: str, timeout: float = 90.0) -> Any:
    """Run code (which prints JSON) in a fresh process that imports the celery app."""
    proc = subprocess.run(
        [sys.executable, "-c", "from examples.celery_app import *\n" + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_celery_prefork_tasks_and_a_worker_killed_mid_transaction(
    make_broker: Callable[..., BrokerProcess],
    spawn: Callable[..., subprocess.Popen],
    mysql_server: Any,
    database: str,
    direct: pymysql.connections.Connection,
    tmp_path: Path,
) -> None:
    broker = make_broker(max_size=MAX_SIZE, transaction_idle_timeout=2)
    with direct.cursor() as cur:
        cur.execute("CREATE TABLE accounts (id INT PRIMARY KEY, bal INT NOT NULL)")
        cur.execute(
            "INSERT INTO accounts VALUES (1, 100), (2, 100), (3, 100), (4, 100)"
        )
    env = _env(broker, CELERY_DATA_DIR=str(tmp_path / "celery"))
    worker = spawn(
        [
            *(sys.executable, "-m", "celery", "-A", "examples.celery_app", "worker"),
            *("--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO"),
            *("--without-heartbeat", "--without-mingle", "--without-gossip"),
        ],
        env=env,
        cwd=ROOT,
    )
    results = _celery_call(
        env,
        "import json\n"
        "calls = [transfer.delay(1, 2, 1) for _ in range(10)]\n"
        "calls += [transfer.delay(3, 4, 2) for _ in range(10)]\n"
        "done = [c.get(timeout=60) for c in calls]\n"
        "print(json.dumps({'done': done, 'total': total.delay().get(timeout=60)}))",
    )
    assert worker.poll() is None
    assert results["total"] == 400
    pids = {r["pid"] for r in results["done"]}
    assert worker.pid not in pids  # prefork children ran them
    with direct.cursor() as cur:
        cur.execute("SELECT id, bal FROM accounts ORDER BY id")
        assert cur.fetchall() == ((1, 90), (2, 110), (3, 80), (4, 120))

    # A worker SIGKILLed inside client.transaction(): the broker rolls it back.
    _celery_call(env, "hold.delay(1, 60); print('1')")
    deadline = time.monotonic() + 60
    with broker.client() as c:
        while not (pins := c.stats()["pins"]):
            assert time.monotonic() < deadline, "the hold task never began"
            time.sleep(0.1)
        (pin,) = pins
        assert pin["kind"] == "transaction"
        victim = pin["who"]["pid"]
        assert victim != worker.pid  # a prefork child, not the master
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 2 + 15  # transaction_idle_timeout, and slack
        while c.stats()["pins"]:
            assert time.monotonic() < deadline, "the killed worker's pin stayed"
            time.sleep(0.2)
    with direct.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t "
            "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            "WHERE p.DB = %s",
            (database,),
        )
        assert cur.fetchone()[0] == 0  # no transaction left open on the server
        cur.execute("SELECT bal FROM accounts WHERE id = 1")
        assert cur.fetchone()[0] == 90  # the +1000 was rolled back
    assert worker.poll() is None  # celery replaced its child and keeps serving
    assert _celery_call(env, "print(total.delay().get(timeout=60))") == 400


# --- multiprocessing ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pools(method: str, broker: BrokerProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.pool_app", method],
        cwd=ROOT,
        env=_env(broker),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for kind in ("pool", "executor"):
        assert [value for _, value in out[kind]] == [n * n for n in range(20)]
        assert out["parent"] not in {pid for pid, _ in out[kind]}
