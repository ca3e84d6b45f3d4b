"""A private MariaDB server in a directory of its own.

`broker serve` runs one when no DSN is configured, and the test fixtures run one
per session (plus one per fault test). Everything the server writes lives under
`base_dir`: `data/` (the datadir), `mysqld.sock`, `mysqld.pid`, `mysqld.log` and
`tmp/`. The server starts with `--no-defaults`, so no /etc/mysql option file ever
applies, listens on 127.0.0.1 only, and runs with durability off: a sandbox is
for development and tests, and losing its last second of writes to a power cut
is fine.

Accounts: `root` has no password (reachable over the unix socket and from
127.0.0.1 only), and `broker`@'%' / `broker`@'localhost' have `password` and ALL
on *.*. Both are ensured on every start.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pymysql

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y mariadb-server"
SERVER_NAMES = ("mariadbd", "mysqld")
SERVER_PATHS = (
    "/usr/sbin/mariadbd",
    "/usr/sbin/mysqld",
    "/usr/libexec/mariadbd",
    "/usr/libexec/mysqld",
    "/usr/local/mysql/bin/mysqld",
)
INSTALL_DB_NAMES = ("mariadb-install-db", "mysql_install_db")
HOST = "127.0.0.1"
DATABASE = "broker"
USER = "broker"
# Not a secret: the sandbox listens on 127.0.0.1 only and root has no password.
DEFAULT_PASSWORD = "sandbox"  # noqa: S105
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin
LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3  # a free port picked by us can be taken before mariadbd binds it

# Shared by initialisation and the server, so the redo log is never resized.
INNODB_OPTIONS = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=32M",  # the 96M default only costs disk per sandbox
    # Write the redo log at commit but never fsync it: a commit survives kill(),
    # as fault tests need, though not a power cut. 0 would lose up to a second.
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
)
SERVER_OPTIONS = (
    f"--bind-address={HOST}",
    "--skip-name-resolve",
    "--max-connections=1100",  # broker bench runs 512 direct clients beside a broker
    "--skip-log-bin",
    "--sync-binlog=0",
    # Without an option file the compiled-in default is latin1; Debian's is this.
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--innodb-buffer-pool-dump-at-shutdown=0",
    "--innodb-buffer-pool-load-at-startup=0",
)
# A primary of a replication pair: a binary log, GTIDs from server id 1.
PRIMARY_OPTIONS = ("--log-bin=mysql-bin", "--server-id=1", "--binlog-format=ROW")
REPLICA_OPTIONS = ("--server-id=2",)
# MySQL 8 would otherwise bind its X protocol to port 33060 on every address.
MYSQL_ONLY_OPTIONS = ("--mysqlx=0",)

_running: set[Sandbox] = set()


class SandboxError(Exception):
    """The sandbox server cannot be set up or started; the message says why."""


def find_server() -> str:
    """Return the path of the installed mariadbd or mysqld.

    Raises:
        SandboxError: Neither is installed; the message names the package.
    """
    for name in SERVER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    for path in SERVER_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise SandboxError(
        "no MariaDB server found (looked for mariadbd/mysqld on $PATH and in "
        f"{', '.join(SERVER_PATHS)}); install it with: {INSTALL_HINT}"
    )


@functools.cache
def _is_mariadb(server: str) -> bool:
    out = subprocess.run(  # noqa: S603 - argv of the server we found, no shell
        [server, "--version"], capture_output=True, text=True, check=False
    ).stdout
    return "mariadb" in out.lower()


def _find_install_db(server: str) -> str | None:
    """Return mariadb-install-db, on $PATH or beside the server's own bin/."""
    prefix = Path(server).resolve().parent.parent
    for name in INSTALL_DB_NAMES:
        path = shutil.which(name) or shutil.which(name, path=str(prefix / "bin"))
        if path:
            return path
    return None


def _as_root() -> list[str]:
    # mariadbd and mysqld refuse to run as root unless told to.
    return ["--user=root"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


def init_datadir(
    data_dir: str | os.PathLike, log_path: str | os.PathLike, timeout: float = 120.0
) -> None:
    """Create a fresh datadir with the system tables and a password-less root.

    The datadir is built beside its final path and renamed into place only when
    complete, so a failed or interrupted run never leaves a half-made datadir that
    a later start would trust.

    Raises:
        SandboxError: No server is installed, or initialisation failed or took
            longer than `timeout`.
    """
    server = find_server()
    data_dir = Path(data_dir)
    work = data_dir.with_name(data_dir.name + ".init")
    shutil.rmtree(work, ignore_errors=True)
    if _is_mariadb(server):
        install_db = _find_install_db(server)
        if install_db is None:
            raise SandboxError(
                f"{server} is installed but mariadb-install-db is not; "
                f"install it with: {INSTALL_HINT}"
            )
        cmd = [
            install_db,
            "--no-defaults",
            f"--datadir={work}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            # Grants by IP only, and no resolveip check of the hostname: without
            # --force the script refuses on a host whose name (and 'localhost')
            # nothing resolves, as in a minimal container without /etc/hosts.
            "--skip-name-resolve",
            "--force",
            *INNODB_OPTIONS,
            *_as_root(),
        ]
    else:
        cmd = [
            server,
            "--no-defaults",
            "--initialize-insecure",
            f"--datadir={work}",
            *INNODB_OPTIONS,
            *_as_root(),
        ]
    log.info("sandbox: initialising datadir in %s", data_dir)
    with open(log_path, "ab") as out:
        try:
            status: int | str = subprocess.run(  # noqa: S603 - argv we built, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                check=False,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            status = f"still running after {timeout:.0f}s"
    if status != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise SandboxError(
            f"initialising {data_dir} failed ({cmd[0]}: status {status}); "
            f"last lines of {log_path}:\n{_tail(str(log_path))}"
        )
    work.rename(data_dir)


class Sandbox:
    """One private server process: its directory, port, socket and lifecycle.

    `port` 0 picks a free port on 127.0.0.1 once; `restart()` reuses it, so DSNs
    handed out before a restart stay valid. mariadbd binds with SO_REUSEADDR, so a
    port left in TIME_WAIT by `kill()` binds again at once.

    Args:
        base_dir: Directory for everything the server writes; created if missing.
        port: TCP port on 127.0.0.1, or 0 for a free one.
        password: Password of the `broker` account.
        template: A datadir made by `init_datadir()` to copy instead of
            initialising a new one; about half a second faster.
        options: Extra server options, after the defaults so they win (for
            example ``--log-bin`` and ``--server-id`` for a replication pair).
    """

    host = HOST
    user = USER

    def __init__(
        self,
        base_dir: str | os.PathLike,
        port: int = 0,
        *,
        password: str = DEFAULT_PASSWORD,
        template: str | os.PathLike | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.options = tuple(options)
        self.base_dir = Path(base_dir).resolve()
        self.password = password
        self.template = template
        self._auto_port = port == 0
        self._port = port or _free_port()
        self._data_dir = self.base_dir / "data"
        self._pid_file = self.base_dir / "mysqld.pid"
        self._log_path = self.base_dir / "mysqld.log"
        self._socket = str(self.base_dir / "mysqld.sock")
        if len(os.fsencode(self._socket)) > SOCKET_PATH_MAX:
            # A unix socket path longer than sun_path cannot be bound at all.
            short = tempfile.mkdtemp(prefix="broker-sandbox-")
            self._socket = os.path.join(short, "mysqld.sock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def pid(self) -> int | None:
        """Return the server's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def port(self) -> int:
        """Return the TCP port on 127.0.0.1."""
        return self._port

    @property
    def unix_socket(self) -> str:
        """Return the unix socket path."""
        return self._socket

    @property
    def log_path(self) -> str:
        """Return the server's error log, which also holds its stdout/stderr."""
        return str(self._log_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the server log, for error reports."""
        return _tail(self.log_path, lines)

    def dsn(self, user: str = "root", database: str = DATABASE) -> str:
        """Return a DSN for `user` without a password, as `broker serve` takes it."""
        quoted = urllib.parse.quote(user, safe="")
        return f"mysql://{quoted}@{HOST}:{self._port}/{database}?charset=utf8mb4"

    def admin(self) -> pymysql.connections.Connection:
        """Return a new autocommit root connection over the unix socket.

        Raises:
            pymysql.err.OperationalError: The server is not accepting connections.
        """
        # pymysql leaks its socket when connect() fails, which the startup poll
        # would do dozens of times; so connect the socket here and hand it over.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(self._socket)
        except OSError as err:
            sock.close()
            raise pymysql.err.OperationalError(
                2002, f"can't connect through socket {self._socket!r} ({err})"
            ) from err
        conn = pymysql.connect(
            unix_socket=self._socket,
            user="root",
            charset="utf8mb4",
            autocommit=True,
            defer_connect=True,
        )
        conn.connect(sock)
        return conn

    def start(self, timeout: float = 60.0) -> None:
        """Start the server, initialising the datadir first if there is none.

        Returns once a root connection succeeds. Does nothing if already running.

        Raises:
            SandboxError: No server is installed, or it did not come up within
                `timeout`; the message holds the tail of the server log.
        """
        if self.pid is not None:
            return
        began = time.monotonic()
        for d in (self.base_dir, self.base_dir / "tmp", Path(self._socket).parent):
            d.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if not self._data_dir.exists():
            if self.template is not None:
                log.info(
                    "sandbox: copying datadir %s to %s", self.template, self._data_dir
                )
                shutil.copytree(self.template, self._data_dir)
            else:
                remaining = max(1.0, began + timeout - time.monotonic())
                init_datadir(self._data_dir, self._log_path, remaining)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if self._launch(began + timeout):
                break
            if not self._auto_port or self._started_once or attempt == PORT_ATTEMPTS:
                raise SandboxError(
                    f"port {self._port} on {HOST} is in use; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            log.info("sandbox: port %d was taken, trying another", self._port)
            self._port = _free_port()
        self._started_once = True
        try:
            self._provision()
        except BaseException:
            self.kill()  # never leave a server running that nobody owns
            raise
        proc = self._proc
        assert proc is not None  # noqa: S101  _provision started it or raised
        log.info(
            "sandbox: %s pid %d listening on %s:%d (up in %.2fs)",
            Path(str(proc.args[0])).name,  # type: ignore[index]
            proc.pid,
            HOST,
            self._port,
            time.monotonic() - began,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM), killing it after `timeout`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "sandbox: pid %d still running %.0fs after SIGTERM, killing it",
                    proc.pid,
                    timeout,
                )
                proc.kill()
                proc.wait()
            log.info("sandbox: pid %d stopped", proc.pid)
        self._forget()

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and wait for it to exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            log.info("sandbox: pid %d killed", proc.pid)
        self._forget()

    def replicate(self, primary: Sandbox, delay: int = 0) -> None:
        """Make this server a GTID replica of primary (from its first GTID).

        primary runs with `PRIMARY_OPTIONS`; delay is MASTER_DELAY in seconds.
        A reconnect is tried every second, so a restarted primary is found fast.
        """
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute("STOP SLAVE")
                cur.execute(
                    "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, "
                    "MASTER_USER='root', MASTER_PASSWORD='', "
                    "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, "
                    "MASTER_DELAY=%s",
                    (HOST, primary.port, delay),
                )
                cur.execute("START SLAVE")
        finally:
            conn.close()

    def restart(self) -> None:
        """Stop the server if it runs, then start it on the same port and socket."""
        self.stop()
        self.start()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, deadline: float) -> bool:
        """Run the server and wait until it accepts connections.

        Returns:
            False if it exited because the port was taken, True once it is up.
        """
        server = find_server()
        # A server killed with SIGKILL leaves its socket and lock file behind.
        for stale in (self._socket, self._socket + ".lock"):
            Path(stale).unlink(missing_ok=True)
        log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        cmd = [
            server,
            "--no-defaults",
            f"--datadir={self._data_dir}",
            f"--port={self._port}",
            f"--socket={self._socket}",
            f"--pid-file={self._pid_file}",
            f"--log-error={self._log_path}",
            f"--tmpdir={self.base_dir / 'tmp'}",
            *INNODB_OPTIONS,
            *SERVER_OPTIONS,
            *(() if _is_mariadb(server) else MYSQL_ONLY_OPTIONS),
            *self.options,
            *_as_root(),
        ]
        with open(self._log_path, "ab") as out:
            # Own session: a terminal's Ctrl-C belongs to our process, which then
            # stops the server in order.
            self._proc = subprocess.Popen(  # noqa: S603 - argv we built, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        _running.add(self)
        while True:
            status = self._proc.poll()
            if status is not None:
                self._forget()
                if self._port_taken(log_offset):
                    return False
                raise SandboxError(
                    f"{server} exited with status {status} during startup; last "
                    f"lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self.admin().close()
                return True
            except pymysql.err.MySQLError:
                pass  # not listening yet, or still starting up
            if time.monotonic() > deadline:
                self.kill()
                raise SandboxError(
                    f"{server} did not accept connections on {self._socket} in "
                    f"time; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _port_taken(self, log_offset: int) -> bool:
        with open(self._log_path, "rb") as f:
            f.seek(log_offset)
            text = f.read().decode("utf-8", "replace")
        return "Address already in use" in text or "Bind on TCP/IP port" in text

    def _provision(self) -> None:
        """Create the `broker` database and accounts; cheap, so run on every start."""
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
                # MySQL's --initialize-insecure makes root@localhost only, which
                # TCP from 127.0.0.1 never matches under skip-name-resolve.
                cur.execute(f"CREATE USER IF NOT EXISTS 'root'@'{HOST}'")
                cur.execute(f"GRANT ALL ON *.* TO 'root'@'{HOST}' WITH GRANT OPTION")
                for host in ("%", "localhost"):
                    account = (USER, host)
                    cur.execute(
                        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                        (*account, self.password),
                    )
                    cur.execute(
                        "ALTER USER %s@%s IDENTIFIED BY %s", (*account, self.password)
                    )
                    cur.execute("GRANT ALL ON *.* TO %s@%s", account)
        finally:
            conn.close()

    def _stop_leftover(self) -> None:
        """Stop a server that a crashed earlier owner left running on our datadir.

        Otherwise the new server would fail on InnoDB's lock of the same files.
        """
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if os.fsencode(f"--datadir={self._data_dir}") not in cmdline.split(b"\0"):
            return
        log.warning(
            "sandbox: stopping leftover server pid %d on %s", pid, self.base_dir
        )
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not Path(f"/proc/{pid}").exists():
                    return
                time.sleep(POLL_INTERVAL)
        raise SandboxError(f"leftover server pid {pid} on {self.base_dir} won't exit")

    def _forget(self) -> None:
        _running.discard(self)


@atexit.register
def _stop_all() -> None:
    # A sandbox outlives its owner only by mistake: stop what is still running.
    for sandbox in list(_running):
        sandbox.stop(timeout=10.0)
