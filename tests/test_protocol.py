"""The wire format on its own: round trips and refusal of bad frames, no sockets."""

import msgpack
import pytest

from client.wire import protocol, statement
from client.wire.protocol import Op, ProtocolError, Status


def test_request_round_trip_keeps_every_field():
    frame = protocol.encode_request(
        7, Op.QUERY, "default", 2.5, 0, b"SELECT 1", [100.5, 1.7e9]
    )
    assert protocol.decode_request(frame) == (
        7,
        Op.QUERY,
        "default",
        2.5,
        0,
        b"SELECT 1",
        [100.5, 1.7e9],
    )


def test_version_1_requests_are_still_served_without_a_deadline():
    frame = msgpack.packb([1, 7, Op.PING, "default", 2.5, 0, None])
    assert protocol.decode_request(frame) == (7, Op.PING, "default", 2.5, 0, None, None)


def test_deadline_is_on_both_clocks_and_read_by_the_right_one():
    deadline = protocol.deadline_in(5.0)
    assert 4.9 < protocol.seconds_left(deadline, same_host=True) <= 5.0
    # A tcp peer's wall clock gets the skew allowance on top.
    wall = protocol.seconds_left(deadline, same_host=False)
    assert 4.9 + protocol.SKEW_ALLOWANCE < wall <= 5.0 + protocol.SKEW_ALLOWANCE
    assert protocol.SKEW_ALLOWANCE < 2.0  # below the client's GRACE


@pytest.mark.parametrize(
    ("op", "sql", "writes"),
    [
        (Op.QUERY, b"  (SELECT 1)", False),
        (Op.QUERY, b"show tables", False),
        (Op.QUERY, b"INSERT INTO t VALUES (1)", True),
        (Op.QUERY, b"/* hint */ SELECT 1", True),  # unknown: the safe side
        (Op.EXECUTEMANY, [b"SELECT 1"], True),
        (Op.COMMIT, None, True),
        (Op.ROLLBACK, None, False),
        (Op.PING, None, False),
    ],
)
def test_may_write_judges_a_lost_request(op, sql, writes):
    assert statement.may_write(op, sql) is writes


def test_reply_round_trip_keeps_bytes_as_bytes():
    frame = protocol.encode_reply(2**64 - 1, Status.PACKETS, b"\x00\xff" * 10)
    assert protocol.decode_reply(frame) == (2**64 - 1, Status.PACKETS, b"\x00\xff" * 10)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ([3, 1, Op.PING, "default", 1.0, 0, None, None], "version"),
        ([2, 1, Op.PING, "default", 1.0, 0, None], "version 2 with 7 items"),
        ([{}, 1, Op.PING, "default", 1.0, 0, None], "version"),  # unhashable
        ([2, 1, Op.PING, "default", 1.0, 0, None, [1.0]], "deadline"),
        ([2, 1, Op.PING, "default", 1.0, 0, None, "soon"], "deadline"),
        ([1, -1, Op.PING, "default", 1.0, 0, None], "request id"),
        ([1, 1, 99, "default", 1.0, 0, None], "unknown op"),
        ([1, 1, "ping", "default", 1.0, 0, None], "unknown op"),
        ([1, 1, Op.PING, 5, 1.0, 0, None], "pool name"),
        ([1, 1, Op.PING, "default", 0, 0, None], "timeout"),
        ([1, 1, Op.PING, "default", float("nan"), 0, None], "timeout"),
        ([1, 1, Op.PING, "default", float("inf"), 0, None], "timeout"),
        ([1, 1, Op.PING, "default", 1.0, "x", None], "pin"),
        ([1, 1, Op.PING], "8 items"),
        ({"op": 1}, "8 items"),
    ],
)
def test_bad_request_fields_are_named(message, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode_request(msgpack.packb(message))


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x97\x01", b"\xdb\xff\xff\xff\xff"])
def test_garbage_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError):
        protocol.decode_request(frame)


def test_request_id_can_be_read_from_a_frame_with_a_bad_body():
    frame = msgpack.packb([1, 1234, 99, None])
    assert protocol.peek_req_id(frame) == 1234
    assert protocol.peek_req_id(b"\xc1garbage") is None
