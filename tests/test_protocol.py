"""The wire format on its own: round trips and refusal of bad frames, no sockets."""

import msgpack
import pytest

from client import protocol
from client.protocol import Op, ProtocolError, Status


def test_request_round_trip_keeps_every_field():
    frame = protocol.encode_request(7, Op.QUERY, "default", 2.5, 0, b"SELECT 1")
    assert protocol.decode_request(frame) == (
        7,
        Op.QUERY,
        "default",
        2.5,
        0,
        b"SELECT 1",
    )


def test_reply_round_trip_keeps_bytes_as_bytes():
    frame = protocol.encode_reply(2**64 - 1, Status.PACKETS, b"\x00\xff" * 10)
    assert protocol.decode_reply(frame) == (2**64 - 1, Status.PACKETS, b"\x00\xff" * 10)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ([2, 1, Op.PING, "default", 1.0, 0, None], "version"),
        ([1, -1, Op.PING, "default", 1.0, 0, None], "request id"),
        ([1, 1, 99, "default", 1.0, 0, None], "unknown op"),
        ([1, 1, "ping", "default", 1.0, 0, None], "unknown op"),
        ([1, 1, Op.PING, 5, 1.0, 0, None], "pool name"),
        ([1, 1, Op.PING, "default", 0, 0, None], "timeout"),
        ([1, 1, Op.PING, "default", float("nan"), 0, None], "timeout"),
        ([1, 1, Op.PING, "default", float("inf"), 0, None], "timeout"),
        ([1, 1, Op.PING, "default", 1.0, "x", None], "pin"),
        ([1, 1, Op.PING], "7 items"),
        ({"op": 1}, "7 items"),
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
