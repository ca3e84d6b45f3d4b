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


def soak(args: argparse.Namespace) -> int:
    """Run the soak; print its figures; return 0 when every check held."""
    rnd = random.Random(args.seed)  # noqa: S311  a reproducible fault plan
    work = Path(tempfile.mkdtemp(prefix="broker-soak-"))
    journals = work / "journals"
    journals.mkdir()
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

    faults = {"mysql_kill": 0, "client_kill": 0, "broker_kill": 0}
    faults.update(broker_stop=0, reload=0)
    clients: dict[int, int] = {}  # pid -> client id
    next_cid = 0
    for _ in range(args.clients):
        next_cid += 1
        clients[_spawn(next_cid, broker.endpoint, journals, rnd.randrange(2**32))] = (
            next_cid
        )

    start = time.monotonic()
    end = start + args.duration
    mysql_every = args.duration / 3
    plan = {  # one-off broker faults, at fractions of the run
        "broker_kill": start + args.duration * 0.35,
        "broker_stop": start + args.duration * 0.55,
        "reload": start + args.duration * 0.75,
    }
    next_mysql_kill = start + mysql_every / 2
    next_client_kill = start + rnd.uniform(15, 25)
    samples_conn: list[tuple[float, int]] = []  # (wall time, connections)
    outages: list[tuple[float, float]] = []  # (killed, accepting again), wall time
    samples_rss: list[float] = []
    admin = None
    while (now := time.monotonic()) < end:
        if admin is None:
            try:
                admin = mysql.admin()
            except pymysql.err.MySQLError:
                admin = None
        try:
            if (n := _account_connections(admin)) is not None:
                samples_conn.append((time.time(), n))
        except pymysql.err.MySQLError:
            admin = None
        if now - start > 20 and (rss := broker.rss_mib()) is not None:
            samples_rss.append(rss)  # after warm-up
        if now >= next_mysql_kill:
            next_mysql_kill += mysql_every
            faults["mysql_kill"] += 1
            admin = None
            killed = time.time()
            mysql.kill()
            time.sleep(rnd.uniform(0.5, 2.0))
            mysql.start()  # returns once the server accepts a connection
            outages.append((killed, time.time()))
        if now >= next_client_kill:
            next_client_kill = now + rnd.uniform(15, 25)
            victim = rnd.choice(list(clients))
            os.kill(victim, signal.SIGKILL)
            os.waitpid(victim, 0)
            del clients[victim]
            faults["client_kill"] += 1
            next_cid += 1
            pid = _spawn(next_cid, broker.endpoint, journals, rnd.randrange(2**32))
            clients[pid] = next_cid
        if now >= plan["broker_kill"]:
            plan["broker_kill"] = float("inf")
            faults["broker_kill"] += 1
            broker.signal(signal.SIGKILL)
            broker.proc.wait()  # type: ignore[union-attr]
            time.sleep(1.0)  # systemd's RestartSec
            broker.start()
        if now >= plan["broker_stop"]:
            plan["broker_stop"] = float("inf")
            faults["broker_stop"] += 1
            broker.signal(signal.SIGSTOP)
            time.sleep(8)
            broker.signal(signal.SIGCONT)
        if now >= plan["reload"]:
            plan["reload"] = float("inf")
            faults["reload"] += 1
            broker.write(RELOAD_MAX_SIZE)
            broker.signal(signal.SIGHUP)
            faults["reload_at"] = time.time()
        time.sleep(0.5)

    for pid in clients:
        os.kill(pid, signal.SIGTERM)
    crashed = 0
    for pid in clients:
        _, status = os.waitpid(pid, 0)
        crashed += os.waitstatus_to_exitcode(status) != 0
    broker.signal(signal.SIGTERM)
    broker.proc.wait(60)  # type: ignore[union-attr]
    ok = _check(
        mysql, journals, faults, samples_conn, samples_rss, outages, crashed, args
    )
    mysql.stop()
    shutil.rmtree(work / "mysql" / "data", ignore_errors=True)  # just disk
    print(f"journals and logs kept in {work}")
    return 0 if ok else 1


# Checks ----------------------------------------------------------------------------


def _journal(journals: Path) -> list[dict]:
    entries = []
    for path in sorted(journals.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass  # a line cut by SIGKILL: its call was not acknowledged
    return entries


def _check(
    mysql: Sandbox,
    journals: Path,
    faults: dict[str, int],
    samples_conn: list[tuple[float, int]],
    samples_rss: list[float],
    outages: list[tuple[float, float]],
    crashed: int,
    args: argparse.Namespace,
) -> bool:
    entries = _journal(journals)
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
    problems: list[str] = []
    fig: dict[str, int] = {}

    def count(name: str) -> None:
        fig[name] = fig.get(name, 0) + 1

    begun, committing, finished = set(), set(), set()
    late, worst = 0, 0.0
    for e in entries:
        kind, uid, r = e["k"], e["uid"], e.get("r")
        if kind == "begin":
            begun.add(uid)
            continue
        if kind == "commit":
            committing.add(uid)
            continue
        limit = CALLS.get(kind, 1) * (TIMEOUT + GRACE)
        if kind == "deadline":
            limit = 0.5 + GRACE
        over = e["t"] - limit
        worst = max(worst, over)
        if over > SLACK:
            late += 1
            problems.append(f"{kind} {uid} took {e['t']:.1f} s")
        table = {"insert": ledger, "transfer": transfers}.get(kind)
        if kind == "transfer":
            finished.add(uid)
        if table is not None:
            n = table.get(uid, 0)
            if n > 1:
                problems.append(f"{kind} {uid} applied {n} times")
            if r == "ok":
                count(f"{kind}_ok")
                if n != 1:
                    problems.append(f"acknowledged {kind} {uid} present {n} times")
            elif r == "unknown":
                count(f"{kind}_unknown")
                count(f"{kind}_unknown_applied" if n else f"{kind}_unknown_absent")
            else:
                count(f"{kind}_failed")
                if n:
                    problems.append(
                        f"{kind} {uid} reported failed ({e['e']}) but present"
                    )
        elif kind == "ryw" and r == "ok":
            count("ryw_ok")
            if e["v"] != 1:
                problems.append(f"insert {uid} read back {e['v']} times")
        elif kind == "stream" and r == "ok":
            count("stream_ok")
            if e["v"] != [STREAM_ROWS, STREAM_ROWS * (STREAM_ROWS + 1) // 2]:
                problems.append(f"stream {uid} returned {e['v']}")
        elif kind == "read" and r == "ok":
            count("read_ok")
        elif kind == "deadline":
            count("deadline_cut" if r == "ok" and e["v"] == "cut" else "deadline_other")
            if r == "ok" and e["v"] != "cut":
                problems.append(f"deadline {uid}: SLEEP(5) ran past timeout 0.5")
    killed_before_commit = begun - committing - finished
    for uid in killed_before_commit:
        if transfers.get(uid):
            problems.append(f"transfer {uid} killed before COMMIT but present")
    killed_in_commit = (committing - finished) & begun
    expected = {n: OPENING_BALANCE for n in balances}
    for src, dst, amount in moves:
        expected[src] -= amount
        expected[dst] += amount
    if sum(balances.values()) != OPENING_BALANCE * ACCOUNTS:
        problems.append(f"account total is {sum(balances.values())}")
    if expected != balances:
        problems.append("balances do not match the recorded transfers")
    reload_at = faults.pop("reload_at", float("inf"))
    before = max((n for w, n in samples_conn if w < reload_at), default=0)
    peak = max((n for _, n in samples_conn), default=0)
    if before > MAX_SIZE + 1 or peak > RELOAD_MAX_SIZE + 1:
        problems.append(f"{before}/{peak} connections of the account at once")
    recovery, failed_during = [], []
    db_kinds = {"insert", "ryw", "transfer", "read", "stream"}
    for killed, up in outages:
        oks = [e["w"] for e in entries if e.get("r") == "ok" and e["w"] > up]
        recovery.append(min(oks, default=up) - up)
        ends = min(oks, default=up)
        failed_during.append(
            sum(
                1
                for e in entries
                if e["k"] in db_kinds and e.get("r") and killed <= e["w"] <= ends
            )
        )

    print(
        f"soak: {args.duration:.0f} s, {args.clients} clients; faults: MariaDB "
        f"kill -9 x{faults['mysql_kill']}, client SIGKILL x{faults['client_kill']}, "
        f"broker SIGKILL x{faults['broker_kill']}, SIGSTOP 8 s "
        f"x{faults['broker_stop']}, reload max_size {MAX_SIZE}->{RELOAD_MAX_SIZE} "
        f"x{faults['reload']}"
    )
    total_ok = sum(balances.values()) == OPENING_BALANCE * ACCOUNTS
    print(
        f"{fig.get('insert_ok', 0)} acknowledged INSERTs and "
        f"{fig.get('transfer_ok', 0)} acknowledged transfers each present exactly "
        f"once; {sum(v > 1 for v in ledger.values())} ids twice; account total "
        f"{'unchanged' if total_ok else 'CHANGED'}, balances "
        f"{'match' if expected == balances else 'DO NOT MATCH'} the transfers"
    )
    print(
        f"{len(killed_before_commit)} transactions killed before COMMIT, "
        f"{sum(bool(transfers.get(u)) for u in killed_before_commit)} present; "
        f"{len(killed_in_commit)} killed during COMMIT (either way)"
    )
    print(
        f"OutcomeUnknown: {fig.get('insert_unknown', 0)} inserts "
        f"({fig.get('insert_unknown_applied', 0)} applied), "
        f"{fig.get('transfer_unknown', 0)} transfers "
        f"({fig.get('transfer_unknown_applied', 0)} applied); failures reported as "
        f"not applied: {fig.get('insert_failed', 0)} inserts, "
        f"{fig.get('transfer_failed', 0)} transfers, all absent"
        if not any("reported failed" in p for p in problems)
        else "some writes reported as failed were applied"
    )
    print(
        f"{fig.get('ryw_ok', 0)} read-your-write selects, {fig.get('read_ok', 0)} "
        f"point reads, {fig.get('stream_ok', 0)} {STREAM_ROWS:,}-row streams all "
        f"correct; {fig.get('deadline_cut', 0)} statements cut at their deadline"
    )
    print(
        f"calls past timeout + {GRACE:.0f} s (+{SLACK:.0f} s slack): {late} "
        f"(worst overrun {worst:+.1f} s); clients crashed: {crashed}"
    )
    rss = sorted(samples_rss)
    print(
        "MariaDB outages: first success "
        + ", ".join(f"{r:.2f}" for r in recovery)
        + " s after the server accepted connections again; "
        + ", ".join(map(str, failed_during))
        + " calls failed per outage (fail-fast, all clients)"
    )
    print(
        f"peak connections of the account: {before} before the reload (max_size "
        f"{MAX_SIZE}), {peak} after ({RELOAD_MAX_SIZE}), each + 1 KILL connection"
        "; broker RSS "
        + (f"{rss[0]:.0f}-{rss[-1]:.0f} MiB after warm-up" if rss else "n/a")
    )
    for problem in problems[:20]:
        print("PROBLEM:", problem)
    print("RESULT:", "ok" if not problems else f"{len(problems)} problems")
    return not problems


def main() -> int:
    """Parse the command line and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    return soak(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
