"""SQL rendering and result decoding with pymysql's own code, never its socket.

`Codec` is a pymysql `Connection` that is never connected. It lends pymysql's
escaping (for the pool's charset and SQL mode) to turn ``sql, params`` into the
bytes of a COM_QUERY, and pymysql's protocol and converter code to turn the
result packets the broker forwards into rows. Whatever a pymysql cursor would
send or return, this sends and returns: that is the whole point of the module.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pymysql
from pymysql.connections import MySQLResult
from pymysql.constants import SERVER_STATUS
from pymysql.cursors import Cursor
from pymysql.protocol import MysqlPacket

from client import errors
from client.result import Result

_MAX_PACKET_LEN = 0xFFFFFF
_header = struct.Struct("<HBB")


class _Recorder(Cursor):
    """A cursor whose execute() records the rendered statement instead of running it.

    pymysql's own executemany() drives it, so multi-row INSERT batching and
    max_stmt_length are exactly pymysql's.
    """

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec)
        self.statements: list[bytes] = []

    def execute(self, query: Any, args: Any = None) -> int:
        sql = self.mogrify(query, args)
        if isinstance(sql, str):
            sql = sql.encode(self.connection.encoding)
        self.statements.append(bytes(sql))
        return 0


class Codec(pymysql.connections.Connection):
    """pymysql's escaping and decoding for one pool's charset and SQL mode.

    Args:
        charset: the pool's connection charset, as the broker reports it.
        server_status: the status flags of the pool's connections; only
            NO_BACKSLASH_ESCAPES matters, it changes how strings are quoted.
        refill: for streams, called when the packets run out; returns more.
    """

    def __init__(
        self,
        charset: str,
        server_status: int = 0,
        refill: Callable[[], bytes] | None = None,
    ) -> None:
        super().__init__(charset=charset, defer_connect=True)
        self.server_status = server_status
        self._refill = refill
        self._data = b""
        self._pos = 0
        self._cursor = Cursor(self)

    def render(self, sql: str, params: Sequence | dict | None) -> bytes:
        """Return the bytes pymysql's cursor.execute would send for sql and params."""
        try:
            text = self._cursor.mogrify(sql, params)
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        except (TypeError, ValueError, KeyError) as err:
            raise errors.ProgrammingError(0, f"bad parameters: {err}") from err
        return text.encode(self.encoding)

    def render_many(self, sql: str, seq_params: Iterable) -> list[bytes]:
        """Return the statements pymysql's cursor.executemany would send."""
        recorder = _Recorder(self)
        try:
            recorder.executemany(sql, list(seq_params))
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        except (TypeError, ValueError, KeyError) as err:
            raise errors.ProgrammingError(0, f"bad parameters: {err}") from err
        return recorder.statements

    def decode(self, packets: bytes) -> Result:
        """Return the Result of one command's response, or raise its error.

        Further result sets (a CALL returns one more) are read and dropped, as a
        pymysql cursor does unless nextset() is called.
        """
        self._data, self._pos = packets, 0
        try:
            first = MySQLResult(self)
            first.read()
            more = first
            while more.has_next:
                more = MySQLResult(self)
                more.read()
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        return Result(
            list(first.rows) if first.rows is not None else [],
            first.description or (),
            first.affected_rows,
            first.insert_id,
            first.warning_count,
        )

    def open_stream(self, packets: bytes) -> MySQLResult:
        """Return an unbuffered pymysql result positioned at its first row."""
        self._data, self._pos = packets, 0
        result = MySQLResult(self)
        try:
            result.init_unbuffered_query()
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        return result

    @property
    def no_backslash_escapes(self) -> bool:
        """Whether the pool's SQL mode quotes strings without backslashes."""
        return bool(
            self.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
        )

    def _read_packet(self, packet_type: type = MysqlPacket) -> MysqlPacket:
        parts = []
        while True:
            if self._pos + 4 > len(self._data):
                self._next_data()
            low, high, _seq = _header.unpack_from(self._data, self._pos)
            size = low + (high << 16)
            start = self._pos + 4
            self._pos = start + size
            if self._pos > len(self._data):
                raise errors.InternalError(0, "truncated result packet from broker")
            parts.append(self._data[start : self._pos])
            if size < _MAX_PACKET_LEN:
                break
        packet = packet_type(
            parts[0] if len(parts) == 1 else b"".join(parts), self.encoding
        )
        if packet.is_error_packet():
            packet.raise_for_error()
        return packet

    def _next_data(self) -> None:
        if self._refill is None or self._pos != len(self._data):
            raise errors.InternalError(0, "truncated result packets from broker")
        self._data, self._pos = self._refill(), 0
