"""One run of `broker bench`: fork N clients, line them up, measure, collect.

A run is one side ("broker" or "direct") of one scenario at one client count.
Its children each open their own connection (a `client.Client` or a pymysql
connection), warm up, wait for the common start, run their op in a closed
loop until the end, and report through a pipe. Around the run the parent
reads the CPU time and context switches of the broker, MySQL and the host.

Invariants a reader needs first:

- A child process never returns into the parent's code: it leaves with
  ``os._exit()``, so no atexit hook (the sandbox's) and no finaliser runs in it.
- Every wait is bounded: children must be ready, run and report within
  deadlines and are killed otherwise.
- All processes share CLOCK_MONOTONIC, so the one start time the parent sends
  lines the children up; nothing measured includes connecting or warming up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import struct
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pymysql.cursors

from broker.bench_settings import RANGE_ROWS, ROW_SCENARIOS, BenchError, Settings
from broker.bench_setup import ACCOUNTS, INSERTS, Target, connect

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
_FRAME = struct.Struct("!cI")  # kind, payload length
_GO = struct.Struct("d")  # the common start, in time.monotonic() seconds


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


# -- the scenarios, one op per call -------------------------------------------------


_Run = Callable[..., int]  # (sql, params=None) -> rows
_Txn = Callable[[list[tuple[str, tuple]]], None]
_Stream = Callable[[str], Iterator[tuple]]
_Calls = tuple[_Run, _Txn, _Stream, Callable[[], None]]


def _direct_calls(job: Job) -> _Calls:
    """Return (run, txn, stream, close) on a pymysql connection of this child's."""
    conn = connect(job.target.connect_args, job.settings.timeout)
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

    return run, txn, stream, conn.close


def _broker_calls(job: Job) -> _Calls:
    """Return (run, txn, stream, close) through the broker's client."""
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

    return run, txn, stream, close


def _open_op(
    job: Job, rng: random.Random
) -> tuple[Callable[[], int], Callable[[], object], Callable[[], None]]:
    """Return (op, warm-up op, close) for this child; op returns rows or 1."""
    rows = job.settings.rows
    calls = _direct_calls if job.side == "direct" else _broker_calls
    run, txn, stream, close = calls(job)

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

    def _take(self, fd: int, kind: bytes, got: dict[int, bytes], what: str) -> None:
        """Move fd's frame of kind into got, if it has come; raise if it cannot."""
        while fd not in got and (frame := self._frame(fd)) is not None:
            if frame[0] == b"F":
                raise BenchError(f"a client failed: {frame[1].decode()}")
            if frame[0] == kind:
                got[fd] = frame[1]
        if fd not in got and fd in self.closed:
            raise BenchError(f"a client exited before it could {what}")

    def collect(self, kind: bytes, deadline: float, what: str) -> list[bytes]:
        """Return one frame of kind from every child, reading until deadline."""
        got: dict[int, bytes] = {}
        with selectors.DefaultSelector() as sel:
            for fd in self.fds:
                if fd not in self.closed:
                    sel.register(fd, selectors.EVENT_READ)
            while True:
                for fd in self.fds:
                    self._take(fd, kind, got, what)
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


def measure(job: Job, n: int) -> RunResult:
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
        mysql_before = cpu_seconds(job.target.mysql_pid)
        host_before = _host_switches()
        switches_before = _switches(job.target.broker_pid) if broker else None
        start = time.monotonic() + START_DELAY
        go = memoryview(_GO.pack(start) * n)
        while go:
            go = go[os.write(go_w, go) :]
        report_by = start + job.seconds + job.settings.timeout + REPORT_GRACE
        reports = children.collect(b"D", report_by, "report")
        cpu_after = _broker_cpu(job.target.broker_pid) if broker else None
        mysql_after = cpu_seconds(job.target.mysql_pid)
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
    spent = [cpu_seconds(p) for p in _family(pid)]
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


def cpu_seconds(pid: int | None) -> float | None:
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
