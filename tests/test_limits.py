"""Many clients: idle peers cost nothing, and the open-files limit is met calmly."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time

import pytest

import client
from client.wire import zmtp


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_wakeups(pid: int) -> int:
    """Return how often the broker's loop thread has gone to sleep and woken."""
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


def connect_raw(path: str) -> tuple[socket.socket, bytes]:
    """Connect and handshake as a DEALER; return the socket and the broker's command."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    try:
        sock.sendall(zmtp.greeting() + zmtp.ready(b"DEALER"))
    except BrokenPipeError:
        pass  # refused before we spoke: the reason is still there to read
    reader = zmtp.FrameReader(1 << 20)
    while True:
        data = sock.recv(4096)
        if not data:
            return sock, b""
        reader.feed(data)
        if reader.greeting() and (frame := reader.next()) is not None:
            return sock, frame[1]


def ask_loop(c: client.Client, seconds: float, wrong: list) -> int:
    n = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        n += 1
        if c.query("SELECT %s", (n,)).scalar() != n:
            wrong.append(n)
    return n


@pytest.mark.timeout(120)
def test_idle_peers_cost_the_broker_next_to_nothing(make_broker):
    broker = make_broker(max_size=4, pipeline_depth=4)
    pid = broker.proc.pid
    path = broker.endpoint[len("ipc://") :]
    idle = [connect_raw(path)[0] for _ in range(300)]
    try:
        time.sleep(0.6)  # past the handshakes' fine ticks
        start, woken = cpu_seconds(pid), loop_wakeups(pid)
        time.sleep(2.0)
        idle_cpu = cpu_seconds(pid) - start
        idle_wakeups = loop_wakeups(pid) - woken

        wrong: list = []
        counts: list[int] = []
        clients = [broker.client() for _ in range(20)]
        threads = [
            threading.Thread(target=lambda c=c: counts.append(ask_loop(c, 2.0, wrong)))
            for c in clients
        ]
        start = cpu_seconds(pid)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy_cpu = cpu_seconds(pid) - start
        for c in clients:
            c.close()
    finally:
        for sock in idle:
            sock.close()
    print(
        f"300 idle peers: broker cpu {idle_cpu:.3f} s/2 s, loop woke "
        f"{idle_wakeups} times; 20 active: {busy_cpu:.3f} s"
    )
    # Idle, the loop ticks twice a second (JANITOR_EVERY), not every TICK (50/s).
    assert idle_wakeups <= 20, idle_wakeups
    assert wrong == []
    assert sum(counts) > 100
    assert idle_cpu < 0.2 * busy_cpu, (idle_cpu, busy_cpu)


@pytest.mark.timeout(120)
def test_open_files_limit_refuses_with_a_reason_and_does_not_spin(make_broker):
    broker = make_broker(max_size=2)
    pid = broker.proc.pid
    path = broker.endpoint[len("ipc://") :]
    served = broker.client(timeout=10)
    assert served.query("SELECT 1").scalar() == 1
    limit = served.stats()["open_files"] + 12
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))

    held: list[socket.socket] = []
    refusal = b""
    for _ in range(limit + 10):
        sock, command = connect_raw(path)
        if command.startswith(b"\x05READY"):
            held.append(sock)
            continue
        refusal = command
        sock.close()
        break
    try:
        assert refusal.startswith(b"\x05ERROR"), refusal
        assert b"open-files limit (%d)" % limit in refusal
        assert 0 < len(held) <= 12

        # A client that cannot be served hears why at once, not after its timeout.
        excess = client.Client(endpoint=broker.endpoint, timeout=10)
        start = time.monotonic()
        with pytest.raises(client.BrokerUnavailable, match=r"open-files limit \(\d+\)"):
            excess.ping()
        assert time.monotonic() - start < 5.0
        excess.close()

        # Refusing 20 more costs little: no spinning on a failing accept().
        start_cpu = cpu_seconds(pid)
        for _ in range(20):
            sock, command = connect_raw(path)
            assert command.startswith(b"\x05ERROR")
            sock.close()
        time.sleep(2.0)
        refusing_cpu = cpu_seconds(pid) - start_cpu
        wrong: list = []
        start_cpu = cpu_seconds(pid)
        assert ask_loop(served, 2.0, wrong) > 50  # served clients keep working
        busy_cpu = cpu_seconds(pid) - start_cpu
        print(f"refusing: {refusing_cpu:.3f} s cpu over 2 s; serving {busy_cpu:.3f} s")
        assert wrong == []
        assert refusing_cpu < 0.5 * busy_cpu, (refusing_cpu, busy_cpu)

        stats = served.stats()
        assert stats["open_files_limit"] == limit
        assert stats["refused_at_fd_limit"] >= 21
    finally:
        for sock in held:
            sock.close()

    # Room again once others leave.
    deadline = time.monotonic() + 10
    while True:
        try:
            with client.Client(endpoint=broker.endpoint, timeout=2) as c:
                assert c.query("SELECT 2").scalar() == 2
            break
        except client.BrokerUnavailable:
            assert time.monotonic() < deadline, "no room after clients left"
            time.sleep(0.2)
    served.close()
    lines = [ln for ln in broker.log().splitlines() if "open-files limit" in ln]
    assert 1 <= len(lines) <= 3, lines
