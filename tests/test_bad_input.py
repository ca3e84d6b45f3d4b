"""Hostile or broken frames get a clear error, and the broker keeps serving."""

import msgpack
import pytest
import zmq

import client
from client.wire.protocol import Op, Status


def _reply(sock):
    return msgpack.unpackb(sock.recv(), raw=False)


@pytest.mark.parametrize(
    ("message", "cls", "text"),
    [
        ([1, 11, 99, "default", 1.0, 0, None], "InterfaceError", "unknown op"),
        ([9, 11, Op.PING, "default", 1.0, 0, None], "InterfaceError", "version"),
        (
            [1, 11, Op.QUERY, "default", 1.0, 0, "not bytes"],
            "InterfaceError",
            "query body",
        ),
        (
            [1, 11, Op.QUERY, "default", "soon", 0, b"SELECT 1"],
            "InterfaceError",
            "timeout",
        ),
        (
            [1, 11, Op.EXECUTEMANY, "default", 1.0, 0, [b"SELECT 1", 5]],
            "InterfaceError",
            "executemany body",
        ),
        ([1, 11, Op.COMMIT, "default", 1.0, 0, None], "InterfaceError", "needs a pin"),
        (
            [1, 11, Op.COMMIT, "default", 1.0, 12345, None],
            "OperationalError",
            "unknown pin",
        ),
        (
            [1, 11, Op.QUERY, "nopool", 1.0, 0, b"SELECT 1"],
            "ProgrammingError",
            "unknown pool",
        ),
        (
            [1, 11, Op.STREAM_OPEN, "default", 1.0, 0, [b"SELECT 1", -1, {}]],
            "InterfaceError",
            "chunk_rows",
        ),
        (
            [1, 11, Op.BEGIN, "default", 1.0, 0, {"isolation": "CHAOS"}],
            "InterfaceError",
            "isolation",
        ),
    ],
)
def test_bad_request_gets_an_error_reply(raw, broker, message, cls, text):
    raw.send(msgpack.packb(message))
    req_id, status, body = _reply(raw)
    assert (req_id, status) == (11, Status.ERROR)
    assert body[0] == cls
    assert text in body[2]
    with broker.client() as c:
        assert c.query("SELECT 1").scalar() == 1


def test_garbage_frames_are_dropped_and_counted(raw, broker):
    for frame in [b"", b"\xc1\xc1", b"\x93\x01", b"hello", b"\xdd\xff\xff\xff\xff"]:
        raw.send(frame)
    raw.send_multipart(
        [msgpack.packb([1, 5, Op.PING, "default", 1.0, 0, None]), b"extra"]
    )
    req_id, status, body = _reply(raw)
    assert (req_id, status, body[0]) == (5, Status.ERROR, "InterfaceError")
    raw.send(msgpack.packb([1, 6, Op.PING, "default", 1.0, 0, None]))
    assert _reply(raw)[:2] == [6, Status.VALUE]
    with broker.client() as c:
        stats = c.stats()
        assert stats["dropped_frames"] >= 5
        assert c.query("SELECT 1").scalar() == 1


def test_oversized_message_is_refused_and_broker_survives(make_broker):
    b = make_broker(broker={"max_message_bytes": 65536})
    with b.client() as c:
        with pytest.raises(client.InterfaceError, match="max_message_bytes"):
            c.query("SELECT %s", ("x" * 100_000,))
        assert c.query("SELECT 1").scalar() == 1
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(b.endpoint)
    sql = b"SELECT '" + b"x" * 100_000 + b"'"
    sock.send(msgpack.packb([1, 77, Op.QUERY, "default", 1.0, 0, sql]))
    req_id, status, body = msgpack.unpackb(sock.recv(), raw=False)
    assert (req_id, status, body[0]) == (77, Status.ERROR, "InterfaceError")
    assert "max_message_bytes" in body[2]
    sock.send(b"\x00" * 1_000_000)  # past the hard limit: libzmq drops the peer
    sock.close()
    ctx.term()
    with b.client() as c:
        assert c.query("SELECT 2").scalar() == 2


def test_no_broker_raises_broker_unavailable_within_the_timeout(broker_dir):
    import time

    with client.Client(endpoint=f"ipc://{broker_dir}/nobody.sock", timeout=0.5) as c:
        start = time.monotonic()
        with pytest.raises(client.BrokerUnavailable):
            c.query("SELECT 1")
        assert time.monotonic() - start < 0.5 + 2.5
        with pytest.raises(client.BrokerUnavailable):
            c.ping(timeout=0.2)
