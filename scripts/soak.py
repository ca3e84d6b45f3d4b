"""Chaos soak: forked clients keep a ledger while everything under them is killed.

Not part of the test suite: it runs for minutes. Loopback only: a private
MariaDB (`broker.sandbox`) on 127.0.0.1 and a broker on an ipc socket, both in
a temporary directory::

    .venv/bin/python scripts/soak.py --duration 180

16 forked clients insert ledger rows, move money between accounts in
transactions, read their own writes back, stream 10,000-row results and run
statements past their deadline. Meanwhile MariaDB is ``kill -9``ed and
restarted, a random client is SIGKILLed every ~20 s (often mid-transaction)
and replaced, the broker is SIGKILLed once (and restarted, as systemd would),
SIGSTOPped for 8 s once, and reloaded with a bigger ``max_size`` once.

Each client appends one line per finished call to its journal. At the end
the ledger is checked against the journals: every acknowledged write present
exactly once, every write the client was told did not happen absent, each
`OutcomeUnknown` looked up, the account total unchanged and each account's
balance equal to the sum of its recorded transfers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import client  # noqa: E402
from broker.sandbox import DEFAULT_PASSWORD, USER, Sandbox  # noqa: E402

ACCOUNTS = 10
OPENING_BALANCE = 1000
STREAM_ROWS = 10000
TIMEOUT = 3.0  # each client call's timeout
GRACE = 2.0  # client.transport.GRACE: a call may take timeout + GRACE
SLACK = 1.0  # on a shared machine a process may wait this long for a CPU
MAX_SIZE = 4
CALLS = {"transfer": 4, "stream": STREAM_ROWS // 2000 + 1}  # round trips per call
RELOAD_MAX_SIZE = 6

SCHEMA = [
    "CREATE TABLE ledger (uid VARCHAR(32) NOT NULL, client INT, amount INT,"
    " KEY (uid)) ENGINE=InnoDB",  # no UNIQUE key: a doubled write must show
    "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE transfers (uid VARCHAR(32) NOT NULL, src INT, dst INT,"
    " amount INT, KEY (uid)) ENGINE=InnoDB",
]


# Clients ---------------------------------------------------------------------------


def _client(cid: int, endpoint: str, journal: Path, seed: int) -> None:
    """Run one client until SIGTERM; one journal line per finished call."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rnd = random.Random(seed)  # noqa: S311  a reproducible mix, not a secret
    c = client.Client(endpoint=endpoint, timeout=TIMEOUT, name=f"soak-{cid}")
    with open(journal, "a", buffering=1) as out:

        def note(**entry: object) -> None:
            out.write(json.dumps(entry) + "\n")

        seq = 0
        while not stop:
            seq += 1
            uid = f"{cid}-{seq}"
            kind = rnd.choices(
                ["insert", "transfer", "read", "stream", "deadline"],
                weights=[40, 30, 20, 2, 8],
            )[0]
            if _journaled(c, rnd, kind, uid, note) and kind == "insert":
                _journaled(c, rnd, "ryw", uid, note)
            time.sleep(0.005)  # a paced client: the machine is shared


def _journaled(c: client.Client, rnd: random.Random, kind: str, uid: str, note) -> bool:
    """Run one call and journal how it ended; return whether it succeeded."""
    start = time.monotonic()
    try:
        result = _call(c, rnd, kind, uid, note)
    except client.Error as err:
        unknown = isinstance(err, client.OutcomeUnknown)
        note(
            k=kind,
            uid=uid,
            r="unknown" if unknown else "failed",
            e=type(err).__name__,
            m=str(err)[:200],
            t=time.monotonic() - start,
            w=time.time(),
        )
        return False
    note(k=kind, uid=uid, r="ok", v=result, t=time.monotonic() - start, w=time.time())
    return True


def _call(c: client.Client, rnd: random.Random, kind: str, uid: str, note) -> object:
    """Run one call of the given kind; return what to check about it."""
    if kind == "insert":
        return c.query(
            "INSERT INTO ledger (uid, client, amount) VALUES (%s, %s, %s)",
            (uid, int(uid.split("-")[0]), rnd.randint(1, 100)),
        ).rowcount
    if kind == "ryw":  # read your write: the next call, on any connection, sees it
        return c.query("SELECT COUNT(*) FROM ledger WHERE uid = %s", (uid,)).scalar()
    if kind == "transfer":
        src, dst = rnd.sample(range(1, ACCOUNTS + 1), 2)
        amount = rnd.randint(1, 50)
        note(k="begin", uid=uid)
        with c.transaction() as tx:
            tx.query("UPDATE acct SET bal = bal - %s WHERE id = %s", (amount, src))
            tx.query("UPDATE acct SET bal = bal + %s WHERE id = %s", (amount, dst))
            tx.query(
                "INSERT INTO transfers (uid, src, dst, amount) VALUES (%s, %s, %s, %s)",
                (uid, src, dst, amount),
            )
            note(k="commit", uid=uid)
            tx.commit()
        return None
    if kind == "read":
        return c.query(
            "SELECT bal FROM acct WHERE id = %s", (rnd.randint(1, ACCOUNTS),)
        ).scalar()
    if kind == "stream":
        rows = total = 0
        for (n,) in c.stream(
            f"SELECT seq FROM seq_1_to_{STREAM_ROWS}", chunk_rows=2000
        ):
            rows += 1
            total += n
        return [rows, total]
    # deadline: a statement that must be cut off at its timeout
    try:
        c.query("SELECT SLEEP(5)", timeout=0.5)
    except client.QueryTimeout:
        return "cut"
    return "ran"


# The broker and the faults ---------------------------------------------------------


class Broker:
    """A `broker serve` subprocess with a config file it reloads on SIGHUP."""

    def __init__(self, workdir: Path, dsn: str, password_file: Path) -> None:
        self.workdir = workdir
        self.endpoint = f"ipc://{workdir}/broker.sock"
        self.config = workdir / "broker.toml"
        self.log = workdir / "broker.log"
        self.dsn = dsn
        self.password_file = password_file
        self.proc: subprocess.Popen | None = None
        self.write(MAX_SIZE)

    def write(self, max_size: int) -> None:
        """Write the config with the given max_size."""
        self.config.write_text(
            f'[broker]\nendpoint = "{self.endpoint}"\n\n[pools.default]\n'
            f'dsn = "{self.dsn}"\npassword_file = "{self.password_file}"\n'
            f"max_size = {max_size}\nmin_size = 2\nqueue_timeout = 3\n"
            "query_timeout = 10\ntransaction_idle_timeout = 5\n"
        )

    def start(self) -> None:
        """Start the broker and wait until it answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603  our own interpreter and module
                [sys.executable, "-m", "broker", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        probe = client.Client(endpoint=self.endpoint, timeout=0.5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                probe.ping()
                return
            except client.BrokerUnavailable:
                time.sleep(0.05)
        raise SystemExit(f"broker did not start; see {self.log}")

    def signal(self, sig: int) -> None:
        """Send sig to the broker."""
        assert self.proc is not None  # noqa: S101
        self.proc.send_signal(sig)

    def rss_mib(self) -> float | None:
        """Return the broker's resident memory in MiB, if it runs."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:  # type: ignore[union-attr]
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


def _spawn(cid: int, endpoint: str, journals: Path, seed: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _client(cid, endpoint, journals / f"client-{cid}.jsonl", seed)
        except BaseException:  # a client's crash is counted by its exit code
            code = 1
        os._exit(code)
    return pid


def _account_connections(admin: pymysql.connections.Connection | None) -> int | None:
    if admin is None:
        return None
    with admin.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
            (USER,),
        )
        return cur.fetchone()[0]


def _set_up(work: Path) -> tuple[Sandbox, Broker]:
    """Start MariaDB with the soak schema and opening balances, then a broker on it."""
    mysql = Sandbox(work / "mysql")
    mysql.start()
    admin = mysql.admin()
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE soak")
        cur.execute("USE soak")
        for sql in SCHEMA:
            cur.execute(sql)
        cur.executemany(
            "INSERT INTO acct VALUES (%s, %s)",
            [(n, OPENING_BALANCE) for n in range(1, ACCOUNTS + 1)],
        )
    admin.close()
    password_file = work / "password"
    password_file.write_text(DEFAULT_PASSWORD)
    broker = Broker(work, mysql.dsn(user=USER, database="soak"), password_file)
    broker.start()
    return mysql, broker


class _Chaos:
    """The clients and the faults under them: the plan, what it did, what it saw.

    One `random.Random` draws the client seeds and the fault times in a fixed
    order, so a seed replays the same plan.
    """

    def __init__(
        self, args: argparse.Namespace, mysql: Sandbox, broker: Broker, journals: Path
    ) -> None:
        self.rnd = random.Random(args.seed)  # noqa: S311  a reproducible fault plan
        self.mysql = mysql
        self.broker = broker
        self.journals = journals
        self.faults = {  # how many of each were injected
            "mysql_kill": 0,
            "client_kill": 0,
            "broker_kill": 0,
            "broker_stop": 0,
            "reload": 0,
        }
        self.reload_at = float("inf")  # wall time of the reload, once sent
        self.clients: dict[int, int] = {}  # pid -> client id
        self.next_cid = 0
        for _ in range(args.clients):
            self._add_client()
        self.start = time.monotonic()
        self.end = self.start + args.duration
        self.mysql_every = args.duration / 3
        self.plan = {  # one-off broker faults, at fractions of the run
            "broker_kill": self.start + args.duration * 0.35,
            "broker_stop": self.start + args.duration * 0.55,
            "reload": self.start + args.duration * 0.75,
        }
        self.next_mysql_kill = self.start + self.mysql_every / 2
        self.next_client_kill = self.start + self.rnd.uniform(15, 25)
        self.samples_conn: list[tuple[float, int]] = []  # (wall time, connections)
        self.outages: list[tuple[float, float]] = []  # (killed, accepting), wall time
        self.samples_rss: list[float] = []
        self.admin: pymysql.connections.Connection | None = None

    def tick(self, now: float) -> None:
        """Take this tick's samples, then inject every fault that is due."""
        self._sample(now)
        if now >= self.next_mysql_kill:
            self._kill_mysql()
        if now >= self.next_client_kill:
            self._kill_client(now)
        if now >= self.plan["broker_kill"]:
            self._kill_broker()
        if now >= self.plan["broker_stop"]:
            self._stop_broker()
        if now >= self.plan["reload"]:
            self._reload()

    def stop_clients(self) -> int:
        """SIGTERM every client; return how many exited non-zero."""
        for pid in self.clients:
            os.kill(pid, signal.SIGTERM)
        crashed = 0
        for pid in self.clients:
            _, status = os.waitpid(pid, 0)
            crashed += os.waitstatus_to_exitcode(status) != 0
        return crashed

    def _add_client(self) -> None:
        """Fork one more client, with the next id and a seed from the plan."""
        self.next_cid += 1
        seed = self.rnd.randrange(2**32)
        pid = _spawn(self.next_cid, self.broker.endpoint, self.journals, seed)
        self.clients[pid] = self.next_cid

    def _sample(self, now: float) -> None:
        """Count the account's connections and, after warm-up, the broker's RSS.

        The admin connection dies with each MariaDB kill; the next tick reopens
        it, and a tick that cannot goes unsampled.
        """
        if self.admin is None:
            try:
                self.admin = self.mysql.admin()
            except pymysql.err.MySQLError:
                self.admin = None
        try:
            if (n := _account_connections(self.admin)) is not None:
                self.samples_conn.append((time.time(), n))
        except pymysql.err.MySQLError:
            self.admin = None
        if now - self.start > 20 and (rss := self.broker.rss_mib()) is not None:
            self.samples_rss.append(rss)  # after warm-up

    def _kill_mysql(self) -> None:
        """Kill -9 MariaDB, restart it after a moment and record the outage."""
        self.next_mysql_kill += self.mysql_every
        self.faults["mysql_kill"] += 1
        self.admin = None
        killed = time.time()
        self.mysql.kill()
        time.sleep(self.rnd.uniform(0.5, 2.0))
        self.mysql.start()  # returns once the server accepts a connection
        self.outages.append((killed, time.time()))

    def _kill_client(self, now: float) -> None:
        """SIGKILL a random client, often mid-transaction, and fork its replacement."""
        self.next_client_kill = now + self.rnd.uniform(15, 25)
        victim = self.rnd.choice(list(self.clients))
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)
        del self.clients[victim]
        self.faults["client_kill"] += 1
        self._add_client()

    def _kill_broker(self) -> None:
        """SIGKILL the broker and restart it, as systemd would."""
        self.plan["broker_kill"] = float("inf")
        self.faults["broker_kill"] += 1
        self.broker.signal(signal.SIGKILL)
        self.broker.proc.wait()  # type: ignore[union-attr]
        time.sleep(1.0)  # systemd's RestartSec
        self.broker.start()

    def _stop_broker(self) -> None:
        """SIGSTOP the broker for 8 s: alive to the kernel, deaf to its clients."""
        self.plan["broker_stop"] = float("inf")
        self.faults["broker_stop"] += 1
        self.broker.signal(signal.SIGSTOP)
        time.sleep(8)
        self.broker.signal(signal.SIGCONT)

    def _reload(self) -> None:
        """Raise max_size in the config and SIGHUP the broker to reload it."""
        self.plan["reload"] = float("inf")
        self.faults["reload"] += 1
        self.broker.write(RELOAD_MAX_SIZE)
        self.broker.signal(signal.SIGHUP)
        self.reload_at = time.time()


def soak(args: argparse.Namespace) -> int:
    """Run the soak; print its figures; return 0 when every check held."""
    work = Path(tempfile.mkdtemp(prefix="broker-soak-"))
    journals = work / "journals"
    journals.mkdir()
    mysql, broker = _set_up(work)
    chaos = _Chaos(args, mysql, broker, journals)
    while (now := time.monotonic()) < chaos.end:
        chaos.tick(now)
        time.sleep(0.5)
    crashed = chaos.stop_clients()
    broker.signal(signal.SIGTERM)
    broker.proc.wait(60)  # type: ignore[union-attr]
    ok = _check(mysql, journals, chaos, crashed, args)
    mysql.stop()
    shutil.rmtree(work / "mysql" / "data", ignore_errors=True)  # just disk
    print(f"journals and logs kept in {work}")
    return 0 if ok else 1


# Checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    """The soak database as the run left it, read once after the broker stopped."""

    ledger: dict[str, int]  # uid -> rows with that uid
    transfers: dict[str, int]  # uid -> rows with that uid
    balances: dict[int, int]  # account id -> balance
    moves: tuple[tuple[int, int, int], ...]  # (src, dst, amount) of every transfer


@dataclass
class _Findings:
    """What the judges found, for the report: figures, and problems in found order.

    Each judge fills in its own fields; the order they run in is the order the
    problems are printed in.
    """

    problems: list[str] = field(default_factory=list)
    fig: dict[str, int] = field(default_factory=dict)  # calls counted by outcome
    late: int = 0  # calls past their limit + SLACK
    worst: float = 0.0  # the largest overrun of a call's limit, seconds
    begun: set[str] = field(default_factory=set)  # transfers that sent BEGIN
    committing: set[str] = field(default_factory=set)  # ... and then COMMIT
    finished: set[str] = field(default_factory=set)  # transfers that got an answer
    killed_before_commit: set[str] = field(default_factory=set)
    killed_in_commit: set[str] = field(default_factory=set)
    total_ok: bool = False  # the account total is unchanged
    balances_match: bool = False  # each balance is the sum of its transfers
    before: int = 0  # most account connections at once before the reload
    peak: int = 0  # ... and over the whole run
    recovery: list[float] = field(default_factory=list)  # per outage, seconds
    failed_during: list[int] = field(default_factory=list)  # per outage, calls

    def count(self, name: str) -> None:
        """Count one more call with this outcome."""
        self.fig[name] = self.fig.get(name, 0) + 1


def _journal(journals: Path) -> list[dict]:
    entries = []
    for path in sorted(journals.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass  # a line cut by SIGKILL: its call was not acknowledged
    return entries


def _read_tables(mysql: Sandbox) -> _Tables:
    """Read what the ledger, the transfers and the accounts hold now."""
    conn = mysql.admin()
    with conn.cursor() as cur:
        cur.execute("SELECT uid, COUNT(*) FROM soak.ledger GROUP BY uid")
        ledger = dict(cur.fetchall())
        cur.execute("SELECT uid, COUNT(*) FROM soak.transfers GROUP BY uid")
        transfers = dict(cur.fetchall())
        cur.execute("SELECT id, bal FROM soak.acct")
        balances = dict(cur.fetchall())
        cur.execute("SELECT src, dst, amount FROM soak.transfers")
        moves = cur.fetchall()
    conn.close()
    return _Tables(ledger, transfers, balances, moves)


def _judge_entries(entries: list[dict], db: _Tables, found: _Findings) -> None:
    """Judge each finished call: its time, and its outcome against the tables.

    A transfer's begin and commit lines only mark how far it got; they are
    judged together in `_judge_transactions`.
    """
    for e in entries:
        kind, uid = e["k"], e["uid"]
        if kind == "begin":
            found.begun.add(uid)
            continue
        if kind == "commit":
            found.committing.add(uid)
            continue
        _judge_time(e, found)
        if kind == "transfer":
            found.finished.add(uid)
        table = {"insert": db.ledger, "transfer": db.transfers}.get(kind)
        if table is not None:
            _judge_write(e, table.get(uid, 0), found)
        else:
            _judge_read(e, found)


def _judge_time(e: dict, found: _Findings) -> None:
    """Flag a call that outlived its timeout + GRACE (per round trip) by over SLACK."""
    kind = e["k"]
    limit = CALLS.get(kind, 1) * (TIMEOUT + GRACE)
    if kind == "deadline":
        limit = 0.5 + GRACE
    over = e["t"] - limit
    found.worst = max(found.worst, over)
    if over > SLACK:
        found.late += 1
        found.problems.append(f"{kind} {e['uid']} took {e['t']:.1f} s")


def _judge_write(e: dict, n: int, found: _Findings) -> None:
    """Hold a write to what the client was told: n is how often its row is there.

    Acknowledged means present once, failed means absent, and OutcomeUnknown
    may be either, so it is only counted.
    """
    kind, uid, r = e["k"], e["uid"], e.get("r")
    if n > 1:
        found.problems.append(f"{kind} {uid} applied {n} times")
    if r == "ok":
        found.count(f"{kind}_ok")
        if n != 1:
            found.problems.append(f"acknowledged {kind} {uid} present {n} times")
    elif r == "unknown":
        found.count(f"{kind}_unknown")
        found.count(f"{kind}_unknown_applied" if n else f"{kind}_unknown_absent")
    else:
        found.count(f"{kind}_failed")
        if n:
            found.problems.append(
                f"{kind} {uid} reported failed ({e['e']}) but present"
            )


def _judge_read(e: dict, found: _Findings) -> None:
    """Check what a read returned, and that a deadline call was cut off."""
    kind, uid, r = e["k"], e["uid"], e.get("r")
    if kind == "ryw" and r == "ok":
        found.count("ryw_ok")
        if e["v"] != 1:
            found.problems.append(f"insert {uid} read back {e['v']} times")
    elif kind == "stream" and r == "ok":
        found.count("stream_ok")
        if e["v"] != [STREAM_ROWS, STREAM_ROWS * (STREAM_ROWS + 1) // 2]:
            found.problems.append(f"stream {uid} returned {e['v']}")
    elif kind == "read" and r == "ok":
        found.count("read_ok")
    elif kind == "deadline":
        found.count(
            "deadline_cut" if r == "ok" and e["v"] == "cut" else "deadline_other"
        )
        if r == "ok" and e["v"] != "cut":
            found.problems.append(f"deadline {uid}: SLEEP(5) ran past timeout 0.5")


def _judge_transactions(db: _Tables, found: _Findings) -> None:
    """Check that a transfer whose client died before COMMIT left no trace.

    One killed during COMMIT may have landed or not; it is only counted.
    """
    found.killed_before_commit = found.begun - found.committing - found.finished
    for uid in found.killed_before_commit:
        if db.transfers.get(uid):
            found.problems.append(f"transfer {uid} killed before COMMIT but present")
    found.killed_in_commit = (found.committing - found.finished) & found.begun


def _judge_balances(db: _Tables, found: _Findings) -> None:
    """Check the account total and each balance against the recorded transfers."""
    expected = {n: OPENING_BALANCE for n in db.balances}
    for src, dst, amount in db.moves:
        expected[src] -= amount
        expected[dst] += amount
    found.total_ok = sum(db.balances.values()) == OPENING_BALANCE * ACCOUNTS
    if not found.total_ok:
        found.problems.append(f"account total is {sum(db.balances.values())}")
    found.balances_match = expected == db.balances
    if not found.balances_match:
        found.problems.append("balances do not match the recorded transfers")


def _judge_connections(
    samples_conn: list[tuple[float, int]], reload_at: float, found: _Findings
) -> None:
    """Check the account never held more than max_size + 1 (KILL) connections."""
    found.before = max((n for w, n in samples_conn if w < reload_at), default=0)
    found.peak = max((n for _, n in samples_conn), default=0)
    if found.before > MAX_SIZE + 1 or found.peak > RELOAD_MAX_SIZE + 1:
        found.problems.append(
            f"{found.before}/{found.peak} connections of the account at once"
        )


def _measure_outages(
    entries: list[dict], outages: list[tuple[float, float]], found: _Findings
) -> None:
    """Time each MariaDB outage's recovery and count the calls it failed.

    Figures only: failing fast while the server is down is the documented
    behaviour, so nothing here is a problem.
    """
    db_kinds = {"insert", "ryw", "transfer", "read", "stream"}
    for killed, up in outages:
        oks = [e["w"] for e in entries if e.get("r") == "ok" and e["w"] > up]
        found.recovery.append(min(oks, default=up) - up)
        ends = min(oks, default=up)
        found.failed_during.append(
            sum(
                1
                for e in entries
                if e["k"] in db_kinds and e.get("r") and killed <= e["w"] <= ends
            )
        )


def _check(
    mysql: Sandbox,
    journals: Path,
    chaos: _Chaos,
    crashed: int,
    args: argparse.Namespace,
) -> bool:
    """Judge the tables against the journals and the samples; print the report.

    Returns whether every check held.
    """
    entries = _journal(journals)
    db = _read_tables(mysql)
    found = _Findings()
    _judge_entries(entries, db, found)
    _judge_transactions(db, found)
    _judge_balances(db, found)
    _judge_connections(chaos.samples_conn, chaos.reload_at, found)
    _measure_outages(entries, chaos.outages, found)
    _print_report(args, chaos, db, found, crashed)
    return not found.problems


def _print_report(
    args: argparse.Namespace,
    chaos: _Chaos,
    db: _Tables,
    found: _Findings,
    crashed: int,
) -> None:
    """Print the faults, the figures, the first 20 problems and the result."""
    faults, fig = chaos.faults, found.fig
    print(
        f"soak: {args.duration:.0f} s, {args.clients} clients; faults: MariaDB "
        f"kill -9 x{faults['mysql_kill']}, client SIGKILL x{faults['client_kill']}, "
        f"broker SIGKILL x{faults['broker_kill']}, SIGSTOP 8 s "
        f"x{faults['broker_stop']}, reload max_size {MAX_SIZE}->{RELOAD_MAX_SIZE} "
        f"x{faults['reload']}"
    )
    print(
        f"{fig.get('insert_ok', 0)} acknowledged INSERTs and "
        f"{fig.get('transfer_ok', 0)} acknowledged transfers each present exactly "
        f"once; {sum(v > 1 for v in db.ledger.values())} ids twice; account total "
        f"{'unchanged' if found.total_ok else 'CHANGED'}, balances "
        f"{'match' if found.balances_match else 'DO NOT MATCH'} the transfers"
    )
    print(
        f"{len(found.killed_before_commit)} transactions killed before COMMIT, "
        f"{sum(bool(db.transfers.get(u)) for u in found.killed_before_commit)} "
        f"present; {len(found.killed_in_commit)} killed during COMMIT (either way)"
    )
    print(
        f"OutcomeUnknown: {fig.get('insert_unknown', 0)} inserts "
        f"({fig.get('insert_unknown_applied', 0)} applied), "
        f"{fig.get('transfer_unknown', 0)} transfers "
        f"({fig.get('transfer_unknown_applied', 0)} applied); failures reported as "
        f"not applied: {fig.get('insert_failed', 0)} inserts, "
        f"{fig.get('transfer_failed', 0)} transfers, all absent"
        if not any("reported failed" in p for p in found.problems)
        else "some writes reported as failed were applied"
    )
    print(
        f"{fig.get('ryw_ok', 0)} read-your-write selects, {fig.get('read_ok', 0)} "
        f"point reads, {fig.get('stream_ok', 0)} {STREAM_ROWS:,}-row streams all "
        f"correct; {fig.get('deadline_cut', 0)} statements cut at their deadline"
    )
    print(
        f"calls past timeout + {GRACE:.0f} s (+{SLACK:.0f} s slack): {found.late} "
        f"(worst overrun {found.worst:+.1f} s); clients crashed: {crashed}"
    )
    rss = sorted(chaos.samples_rss)
    print(
        "MariaDB outages: first success "
        + ", ".join(f"{r:.2f}" for r in found.recovery)
        + " s after the server accepted connections again; "
        + ", ".join(map(str, found.failed_during))
        + " calls failed per outage (fail-fast, all clients)"
    )
    print(
        f"peak connections of the account: {found.before} before the reload "
        f"(max_size {MAX_SIZE}), {found.peak} after ({RELOAD_MAX_SIZE}), each + 1 "
        "KILL connection; broker RSS "
        + (f"{rss[0]:.0f}-{rss[-1]:.0f} MiB after warm-up" if rss else "n/a")
    )
    for problem in found.problems[:20]:
        print("PROBLEM:", problem)
    print("RESULT:", "ok" if not found.problems else f"{len(found.problems)} problems")


def main() -> int:
    """Parse the command line and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    return soak(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
