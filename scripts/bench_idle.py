#!/usr/bin/env python3
"""What idle clients cost the broker, and whether they slow the active ones.

    .venv/bin/python scripts/bench_idle.py [--idle 1000] [--active 100]

A sandbox MariaDB and a broker are started in a temporary directory. With
--idle ZMTP peers connected and silent, the broker's CPU over 10 s is shown;
then --active client processes run ``SELECT 1`` for 4 s alone and beside the
idle peers, in alternating order over 4 rounds (medians, and each round).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

import client
from broker.launch import ServeProcess
from broker.sandbox import Sandbox
from client.wire import zmtp

ROUNDS = 4
SECONDS = 4.0


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_peer(path: str) -> socket.socket:
    """Connect and finish the ZMTP handshake, then stay silent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    conn = zmtp.Connection(b"DEALER", (b"ROUTER",), 1 << 20)
    sock.sendall(conn.start({b"X-Pid": str(os.getpid()).encode()}))
    while not conn.ready:
        conn.receive(sock.recv(4096))
    return sock


def _worker(endpoint: str, seconds: float, out: multiprocessing.Queue) -> None:
    with client.Client(endpoint=endpoint, timeout=10) as c:
        c.query("SELECT 1")
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            c.query("SELECT 1")
            n += 1
    out.put(n)


def _active(endpoint: str, n: int, seconds: float) -> float:
    """Return the queries/s n client processes reach together."""
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_worker, args=(endpoint, seconds, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    """Start the sandbox and broker, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--active", type=int, default=100)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="broker-idle-"))
    mysql = Sandbox(tmp / "mysql")
    mysql.start()
    path = tmp / "broker.sock"
    broker = ServeProcess(tmp, f"ipc://{path}")
    broker.write(
        {"endpoint": [broker.endpoint]},
        {"default": {"dsn": mysql.dsn(), "max_size": 4, "pipeline_depth": 4}},
    )
    broker.start()
    try:
        broker.wait_ready()
        _active(broker.endpoint, args.active, 1.0)  # warm up
        alone: list[float] = []
        beside: list[float] = []
        for round_ in range(ROUNDS):
            for kind in ("alone", "beside")[:: 1 if round_ % 2 == 0 else -1]:
                if kind == "alone":
                    alone.append(_active(broker.endpoint, args.active, SECONDS))
                    continue
                peers = [_idle_peer(str(path)) for _ in range(args.idle)]
                time.sleep(1.0)  # past the handshakes
                if round_ == 0:
                    start, t0 = _cpu(broker.pid), time.monotonic()
                    time.sleep(10.0)
                    share = (_cpu(broker.pid) - start) / (time.monotonic() - t0)
                    print(f"{args.idle} idle clients: broker CPU {share:.2%}")
                beside.append(_active(broker.endpoint, args.active, SECONDS))
                for sock in peers:
                    sock.close()
        ratio = statistics.median(beside) / statistics.median(alone)
        print(
            f"{args.active} active, queries/s: alone {statistics.median(alone):,.0f}"
            f" {[round(x) for x in alone]}; beside {args.idle} idle "
            f"{statistics.median(beside):,.0f} {[round(x) for x in beside]} "
            f"({ratio:.2f}x)"
        )
    finally:
        broker.stop()
        mysql.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
