"""The wire vocabulary fed byte by byte: ZMTP, MySQL packets, frames, statements."""

from __future__ import annotations

import struct

import pytest

from broker.scanner import Scanner
from client.wire import mysql, protocol, statement, zmtp
from client.wire.protocol import Op, ProtocolError

# --- ZMTP ----------------------------------------------------------------------


def _router() -> zmtp.Connection:
    return zmtp.Connection(b"ROUTER", (b"DEALER", b"REQ"), max_frame=1 << 20)


def _dealer() -> zmtp.Connection:
    return zmtp.Connection(b"DEALER", (b"ROUTER",), max_frame=1 << 20)


def _bytewise(conn: zmtp.Connection, data: bytes) -> list[bytes]:
    """Feed data one byte at a time; return every message it completed."""
    out: list[bytes] = []
    for i in range(len(data)):
        out += conn.receive(data[i : i + 1])
    return out


def test_handshake_and_messages_byte_by_byte() -> None:
    router, dealer = _router(), _dealer()
    hello = dealer.start({b"X-Pid": b"42", b"X-Host": b"h"})
    long_body = b"x" * 300  # an 8-byte size
    sent = hello + zmtp.encode_frame(b"one") + zmtp.encode_frame(long_body)
    assert _bytewise(router, sent) == [b"one", long_body]
    assert router.ready
    assert router.properties[b"x-pid"] == b"42"
    assert router.properties[b"socket-type"] == b"DEALER"
    assert _bytewise(dealer, router.start()) == []
    assert dealer.ready


def test_one_short_frame_is_the_fast_path_and_still_exact() -> None:
    router = _router()
    router.receive(_dealer().start())
    assert router.receive(zmtp.encode_frame(b"abc")) == [b"abc"]
    # Two frames in one read are both delivered, not only the first.
    two = zmtp.encode_frame(b"a") + zmtp.encode_frame(b"bc")
    assert router.receive(two) == [b"a", b"bc"]
    # A lone zero byte is half a header, not a crash.
    assert router.receive(b"\x00") == []
    assert router.receive(b"\x02hi") == [b"hi"]


def test_multipart_is_handed_over_as_its_first_frame() -> None:
    router = _router()
    router.receive(_dealer().start())
    data = zmtp.encode_frame(b"head", more=True) + zmtp.encode_frame(b"tail")
    (message,) = _bytewise(router, data)
    assert type(message) is zmtp.Multipart
    assert message == b"head"


def test_ping_is_answered_with_pong_carrying_its_context() -> None:
    router = _router()
    router.receive(_dealer().start())
    ping = zmtp.encode_frame(b"\x04PING" + b"\x00\x0a" + b"ctx", command=True)
    assert router.receive(ping) == []
    assert router.take_output() == zmtp.encode_frame(b"\x04PONGctx", command=True)
    assert router.output == b""


def test_error_command_raises_refused_with_the_reason() -> None:
    dealer = _dealer()
    with pytest.raises(zmtp.Refused, match="open-files limit"):
        _bytewise(dealer, zmtp.greeting() + zmtp.error("at its open-files limit"))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET / HTTP/1.1\r\n" + b"\0" * 48, "bad signature"),
        (zmtp.greeting() + zmtp.encode_frame(b"early"), "before READY"),
        (zmtp.greeting() + zmtp.ready(b"PUB"), "cannot talk to a ROUTER"),
        (
            zmtp.greeting() + zmtp.ready(b"DEALER") + zmtp.frame_header(2 << 20),
            "exceeds the limit",
        ),
    ],
)
def test_protocol_breaches_raise(data: bytes, problem: str) -> None:
    with pytest.raises(zmtp.ZmtpError, match=problem):
        _bytewise(_router(), data)


def test_old_zmtp_and_other_mechanisms_are_refused() -> None:
    old = bytearray(zmtp.greeting())
    old[10] = 2
    with pytest.raises(zmtp.ZmtpError, match="too old"):
        _router().receive(bytes(old))
    curve = bytearray(zmtp.greeting())
    curve[12:32] = b"CURVE".ljust(20, b"\0")
    with pytest.raises(zmtp.ZmtpError, match="CURVE"):
        _router().receive(bytes(curve))


# --- MySQL packets ----------------------------------------------------------------


def test_command_packets_split_at_the_packet_limit() -> None:
    small = mysql.command_packets(mysql.COM_QUERY + b"SELECT 1")
    assert small == b"\x09\x00\x00\x00\x03SELECT 1"
    payload = mysql.COM_QUERY + b"x" * (mysql.MAX_PACKET_LEN - 1)  # exactly 16 MiB-1
    big = mysql.command_packets(payload)
    spans = list(mysql.packets(big))
    assert [end - start for start, end in spans] == [mysql.MAX_PACKET_LEN, 0]
    assert (big[3], big[spans[1][0] - 1]) == (0, 1)  # sequence numbers
    assert mysql.ends_continued(big[: spans[0][1]])
    assert not mysql.ends_continued(big)


def test_packets_stop_at_a_partial_packet() -> None:
    data = b"\x01\x00\x00\x00A" + b"\x02\x00\x00\x01B"  # the second is cut short
    assert list(mysql.packets(data)) == [(4, 5)]
    assert [list(mysql.packets(data[:n])) for n in range(4)] == [[]] * 4


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\xfa", 250),
        (b"\xfc\x01\x02", 0x0201),
        (b"\xfd\x01\x02\x03", 0x030201),
        (b"\xfe" + struct.pack("<Q", 2**40), 2**40),
    ],
)
def test_lenenc_reads_every_width(encoded: bytes, value: int) -> None:
    assert mysql.lenenc(b"\x00" + encoded, 1) == (value, 1 + len(encoded))


def test_lenenc_refuses_null_and_error_markers() -> None:
    for marker in (b"\xfb", b"\xff"):
        with pytest.raises(ValueError, match="length-encoded"):
            mysql.lenenc(marker, 0)


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload


OK = _packet(1, b"\x00\x01\x00" + struct.pack("<HH", mysql.IN_TRANS, 0))
ERR = _packet(1, b"\xff\x26\x04#42S02no such table")
EOF_MORE = _packet(5, b"\xfe\x00\x00" + struct.pack("<H", mysql.MORE_RESULTS_EXISTS))
RESULTSET = (
    _packet(1, b"\x01")  # one column
    + _packet(2, b"\x03def" + b"\x00" * 20)  # its definition (not parsed)
    + _packet(3, b"\xfe\x00\x00\x02\x00")
    + _packet(4, b"\x011")
    + _packet(5, b"\x012")
    + _packet(6, b"\xfe\x00\x00\x02\x00")
)


@pytest.mark.parametrize(
    ("response", "error", "rows", "status"),
    [
        (OK, False, 0, mysql.IN_TRANS),
        (ERR, True, 0, 0),
        (RESULTSET, False, 2, 2),
        (RESULTSET[:-9] + EOF_MORE + OK, False, 2, mysql.IN_TRANS),
    ],
)
def test_scanner_finds_the_end_byte_by_byte(
    response: bytes, error: bool, rows: int, status: int
) -> None:
    scanner, buf = Scanner(), bytearray()
    for i, byte in enumerate(response):
        buf.append(byte)
        done = scanner.scan(buf)
        assert done is (i == len(response) - 1)
    assert (scanner.error, scanner.rows, scanner.status) == (error, rows, status)
    assert scanner.end == len(response)


# --- frames --------------------------------------------------------------------------


def test_request_round_trip_and_every_truncation_is_a_protocol_error() -> None:
    frame = protocol.encode_request(7, Op.QUERY, "default", 5.0, 0, b"SELECT 1")
    req_id, op, pool, timeout, pin, body, deadline = protocol.decode_request(frame)
    assert (req_id, op, pool, timeout, pin, body) == (
        7,
        Op.QUERY,
        "default",
        5.0,
        0,
        b"SELECT 1",
    )
    assert deadline is not None
    assert len(deadline) == 2
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            protocol.decode_request(frame[:cut])


# --- statements: one classifier for bytes and str ------------------------------------

CORPUS = [
    "SELECT 1",
    "  (select * from t)",
    "select * from t for update",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "SELECT @x := 1",
    "SELECT GET_LOCK('a', 1)",
    "SELECT LAST_INSERT_ID()",
    "select 1 into @v",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SHOW TABLES",
    "describe t",
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "SET @a = 1",
    "SET SESSION sql_mode = ''",
    "CREATE TEMPORARY TABLE t (a INT)",
    "USE other",
    "SELECTED",
    "DO 1",
    "/* hint */ SELECT 1",
    "",
]


@pytest.mark.parametrize("sql", CORPUS)
def test_bytes_and_str_are_judged_alike(sql: str) -> None:
    raw = sql.encode()
    for judge in (
        statement.is_read,
        statement.leaves_session_clean,
        statement.replica_safe,
        statement.plain_read,
    ):
        assert judge(raw) is judge(sql), judge.__name__
    assert statement.first_word(raw).decode() == statement.first_word(sql)


@pytest.mark.parametrize(
    ("sql", "read", "clean", "replica", "plain"),
    [
        ("SELECT 1", True, True, True, True),
        ("select * from t for update", True, True, False, False),
        ("SELECT @x := 1", True, False, True, False),
        ("INSERT INTO t VALUES (1)", False, True, False, False),
        ("SET @a = 1", False, False, False, False),
        ("SELECTED", False, False, False, False),
        ("/* hint */ SELECT 1", False, False, False, False),  # the safe side
    ],
)
def test_statement_decisions(
    sql: str, read: bool, clean: bool, replica: bool, plain: bool
) -> None:
    assert statement.is_read(sql) is read
    assert statement.leaves_session_clean(sql) is clean
    assert statement.replica_safe(sql) is replica
    assert statement.plain_read(sql) is plain
    assert statement.may_write(Op.QUERY, sql.encode()) is not read
