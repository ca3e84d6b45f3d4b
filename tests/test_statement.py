"""Statement classification and response scanning, without a server."""

import pytest

from broker.scanner import Scanner
from client.wire.statement import first_word, is_read, leaves_session_clean


@pytest.mark.parametrize(
    ("sql", "read", "clean"),
    [
        (b"SELECT 1", True, True),
        (b"  (select a FROM t)", True, True),
        (b"SHOW TABLES", True, True),
        (b"INSERT INTO t VALUES (1)", False, True),
        (b"UPDATE t SET a = 1", False, True),
        (b"SELECT @a", True, False),
        (b"SELECT GET_LOCK('x', 1)", True, False),
        (b"INSERT INTO t VALUES (LAST_INSERT_ID(5))", False, False),
        (b"SET @a = 1", False, False),
        (b"SET time_zone = '+00:00'", False, False),
        (b"CREATE TEMPORARY TABLE t (a INT)", False, False),
        (b"BEGIN", False, False),
        (b"USE other", False, False),
        (b"/* comment */ SELECT 1", False, False),
        (b"SELECTED", False, False),
        (b"", False, False),
    ],
)
def test_statement_classification(sql, read, clean):
    assert is_read(sql) is read
    assert leaves_session_clean(sql) is clean


def test_first_word_is_upper_case():
    assert first_word(b"\n\t  with x as (select 1) select * from x") == b"WITH"


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


EOF_OK = b"\xfe\x00\x00\x02\x00"  # EOF: no warnings, status AUTOCOMMIT
EOF_MORE = b"\xfe\x00\x00\x0a\x00"  # EOF with MORE_RESULTS_EXISTS


def _resultset(rows: int, last_eof: bytes = EOF_OK) -> bytes:
    out = (
        _packet(1, b"\x01") + _packet(2, b"\x03def" + b"\x00" * 20) + _packet(3, EOF_OK)
    )
    for i in range(rows):
        out += _packet(4 + i, b"\x01" + bytes([48 + i % 10]))
    return out + _packet(4 + rows, last_eof)


def test_scanner_finds_the_end_fed_byte_by_byte():
    data = _resultset(3)
    buf, scanner = bytearray(), Scanner()
    for i, byte in enumerate(data):
        buf.append(byte)
        done = scanner.scan(buf)
        assert done is (i == len(data) - 1)
    assert scanner.end == len(data)
    assert scanner.rows == 3
    assert not scanner.error


def test_scanner_handles_ok_error_and_more_results():
    ok = _packet(1, b"\x00\x01\x05\x02\x00\x00\x00")
    scanner = Scanner()
    assert scanner.scan(bytearray(ok))
    assert scanner.status == 2
    err = _packet(1, b"\xff\x26\x04#23000Duplicate")
    scanner.reset()
    assert scanner.scan(bytearray(err))
    assert scanner.error
    two = _resultset(1, EOF_MORE) + ok
    scanner.reset()
    assert not scanner.scan(bytearray(two[:-3]))
    assert scanner.scan(bytearray(two))
    assert scanner.end == len(two)


def test_scanner_stops_at_the_row_limit_for_a_chunk():
    data = bytearray(_resultset(10))
    scanner = Scanner()
    assert not scanner.scan(data, row_limit=4)
    assert scanner.rows == 4
    assert scanner.scan(data, row_limit=100)
    assert scanner.rows == 10


def test_scanner_never_mistakes_a_row_starting_with_0xfe_for_the_end():
    big_row = _packet(4, b"\xfe" + (10).to_bytes(8, "little") + b"x" * 10)
    data = _packet(1, b"\x01") + _packet(2, b"c" * 20) + _packet(3, EOF_OK) + big_row
    scanner = Scanner()
    assert not scanner.scan(bytearray(data))
    assert scanner.rows == 1
    assert scanner.scan(bytearray(data + _packet(5, EOF_OK)))
