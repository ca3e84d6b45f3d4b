"""Hostile input: random and malformed frames never kill the broker or bloat it."""

import math
import os
import threading
import time

import msgpack
import zmq
from broker_fixtures import rss_kb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.wire.protocol import Op, Status

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=64),
    st.text(max_size=32),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
ops = st.one_of(
    st.sampled_from([int(op) for op in Op]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=4),
)
requests = st.tuples(
    st.one_of(st.just(1), values),
    st.one_of(st.integers(min_value=0, max_value=2**64 - 1), values),
    ops,
    st.one_of(st.just("default"), st.text(max_size=8), values),
    st.one_of(st.floats(min_value=0.01, max_value=1.0), st.just(math.nan), values),
    st.one_of(st.just(0), st.integers(min_value=0, max_value=2**64 - 1), values),
    st.one_of(st.binary(max_size=40), st.just(b"\xff\xfe invalid utf-8 \x80"), values),
)
ext_or_garbage = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda code, data: msgpack.packb(msgpack.ExtType(code, data)),
        st.integers(0, 127),
        st.binary(max_size=20),
    ),
    st.builds(lambda n: b"\x91" * n + b"\xc0", st.integers(1, 5000)),  # deep nesting
    st.builds(
        lambda n: b"\xdd" + n.to_bytes(4, "big"), st.integers(0, 2**32 - 1)
    ),  # huge array
    st.builds(
        lambda n: b"\xc6" + n.to_bytes(4, "big") + b"x", st.integers(0, 2**32 - 1)
    ),  # huge bin
)


def _drain(sock) -> int:
    got = 0
    while sock.poll(50):
        sock.recv()
        got += 1
    return got


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.one_of(
            requests.map(lambda r: msgpack.packb(list(r), use_bin_type=True)),
            ext_or_garbage,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_random_frames_get_replies_or_are_dropped_and_the_broker_lives(
    broker, raw, frames
):
    for frame in frames:
        raw.send(frame)
    _drain(raw)
    raw.send(msgpack.packb([1, 99, Op.QUERY, "default", 2.0, 0, b"SELECT 1"]))
    while True:
        req_id, status, _ = msgpack.unpackb(raw.recv(), raw=False)
        if req_id == 99:
            break
    assert status == Status.PACKETS
    assert broker.proc.poll() is None


def test_fuzzing_leaves_memory_bounded_and_queries_working(broker, raw):
    with broker.client() as c:
        pid = c.stats()["pid"]
        before = rss_kb(pid)
        garbage = [os.urandom(n) for n in (1, 10, 100, 1000, 100_000)]
        for _ in range(200):
            for frame in garbage:
                raw.send(frame)
        _drain(raw)
        time.sleep(0.3)
        assert rss_kb(pid) - before < 50 * 1024
        assert c.query("SELECT 1").scalar() == 1
        stats = c.stats()
        # Random bytes that happen to show a request id are answered, not dropped.
        assert stats["dropped_frames"] + stats["bad_requests"] >= 1000


def test_flood_keeps_ping_answered_and_memory_bounded(make_broker):
    b = make_broker(max_size=2, queue_timeout=1, broker={"max_inflight_per_client": 0})
    with b.client() as watcher:
        pid = watcher.stats()["pid"]
        before = rss_kb(pid)
        stop = time.monotonic() + 3
        counts = {"ok": 0, "refused": 0}

        def flood() -> None:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.connect(b.endpoint)
            n = 0
            while time.monotonic() < stop:
                sock.send(
                    msgpack.packb(
                        [1, n, Op.QUERY, "default", 5.0, 0, b"SELECT SLEEP(0.01)"]
                    )
                )
                n += 1
                while sock.poll(0):
                    _, status, _ = msgpack.unpackb(sock.recv(), raw=False)
                    counts["ok" if status == Status.PACKETS else "refused"] += 1
            sock.close()
            ctx.term()

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        pings = []
        while time.monotonic() < stop:
            pings.append(watcher.ping(timeout=2))
            time.sleep(0.1)
        for t in threads:
            t.join()
        peak = rss_kb(pid)
        assert max(pings) < 2.0
        assert len(pings) >= 10  # one every 0.1 s, each well under a second
        assert counts["ok"] > 0
        assert counts["refused"] > 0  # the bounded queue said no, at once
        assert peak - before < 200 * 1024
        time.sleep(1.5)
        assert watcher.query("SELECT 1").scalar() == 1
