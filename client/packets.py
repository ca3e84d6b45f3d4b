"""SQL rendering and result decoding with pymysql's own code, never its socket.

`Codec` is a pymysql `Connection` that is never connected. It lends pymysql's
escaping (for the pool's charset and SQL mode) to turn ``sql, params`` into the
bytes of a COM_QUERY, and pymysql's protocol and converter code to turn the
result packets the broker forwards into rows. Whatever a pymysql cursor would
send or return, this sends and returns: that is the whole point of the module.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pymysql
from pymysql.connections import MySQLResult
from pymysql.cursors import Cursor
from pymysql.protocol import MysqlPacket

from client import errors
from client.result import Result
from client.wire.mysql import MAX_PACKET_LEN, payload_length

COLUMN_CACHE_SIZE = 256  # distinct result shapes remembered per codec


def _repeated_names(result: MySQLResult) -> tuple[str, ...]:
    """Return the columns' table names when two columns share a name, else ()."""
    description = result.description
    if not description or len({d[0] for d in description}) == len(description):
        return ()
    return tuple(field.table_name for field in result.fields)


def info_text(message: bytes | None) -> str:
    """Return the info of an OK packet as text ("Rows matched: 1  Changed: 0 ...").

    pymysql keeps the raw rest of the packet, which MariaDB starts with the
    info's length byte.
    """
    if not message:
        return ""
    if message[0] == len(message) - 1:
        message = message[1:]
    return message.decode("utf-8", "replace")


def weak_refill(method: Callable[[], bytes]) -> Callable[[], bytes]:
    """Return a refill that calls a stream's bound method without keeping it alive.

    A stream holds its codec; a codec holding the stream's bound method would
    close a reference cycle, and the stream's ``__del__`` (which frees its
    broker connection) would then wait for the cyclic garbage collector instead
    of running as soon as a ``for`` loop breaks out and drops the stream.
    """
    ref = weakref.WeakMethod(method)

    def refill() -> bytes:
        bound = ref()
        if bound is None:
            raise errors.InternalError(0, "the stream was closed")
        return bound()

    return refill


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


class _Result(MySQLResult):
    """pymysql's result reader, remembering column definitions it has parsed.

    A point select returns the same column definitions every time, and parsing
    them is about half of pymysql's work for a one-row result; their raw bytes
    are the key, so a cached entry is exactly what parsing would give.
    """

    # Set by pymysql's column parsing, which mypy cannot see through.
    fields: Any
    converters: Any
    description: Any

    def next_row(self) -> tuple | None:
        """Return the next row of an unbuffered result, or None after the last."""
        return self._read_rowdata_packet_unbuffered()

    def _get_descriptions(self) -> None:
        conn = self.connection
        if conn.decoders is not conn._plain_decoders or not conn.use_unicode:
            super()._get_descriptions()  # a connection's own conv: not cached
            return
        data, start = conn._data, conn._pos
        end = start
        for _ in range(self.field_count + 1):  # the definitions, then their EOF
            if end + 4 > len(data):
                super()._get_descriptions()  # split across chunks: parse as usual
                return
            end += 4 + payload_length(data, end)
        key = data[start:end]
        cached = conn._columns.get(key)
        if cached is None:
            super()._get_descriptions()
            if len(conn._columns) >= COLUMN_CACHE_SIZE:
                conn._columns.clear()
            conn._columns[key] = (self.fields, self.converters, self.description)
        else:
            self.fields, self.converters, self.description = cached
            conn._pos = end


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
        self._columns: dict[bytes, tuple] = {}  # raw column definitions -> parsed
        self._plain_decoders = self.decoders
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

        Further result sets (a CALL returns one more) follow as ``next_result``,
        in the order pymysql's ``cursor.nextset()`` reads them.
        """
        self._data, self._pos = packets, 0
        try:
            read = [_Result(self)]
            read[0].read()
            while read[-1].has_next:
                read.append(_Result(self))
                read[-1].read()
        except errors.Error:
            raise  # ours (a truncated reply; a refill's error): already a client error
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        result = None
        for one in reversed(read):
            result = Result(
                list(one.rows) if one.rows is not None else [],
                one.description or (),
                one.affected_rows,
                one.insert_id,
                one.warning_count,
                info_text(one.message),
                result,
                _repeated_names(one),
            )
        return result  # type: ignore[return-value]

    def open_stream(self, packets: bytes) -> _Result:
        """Return an unbuffered pymysql result positioned at its first row."""
        self._data, self._pos = packets, 0
        result = _Result(self)
        try:
            result.init_unbuffered_query()
        except errors.Error:
            raise
        except pymysql.MySQLError as err:
            raise errors.from_pymysql(err) from err
        return result

    def _read_packet(self, packet_type: type = MysqlPacket) -> MysqlPacket:
        data, pos = self._data, self._pos
        if pos + 4 > len(data):
            self._next_data()
            data, pos = self._data, 0
        size = payload_length(data, pos)
        end = pos + 4 + size
        if end > len(data):
            raise errors.InternalError(0, "truncated result packet from broker")
        self._pos = end
        payload = data[pos + 4 : end]
        if size == MAX_PACKET_LEN:  # the payload continues in the next packet
            payload += self._read_packet(MysqlPacket).get_all_data()
        packet = packet_type(payload, self.encoding)
        if packet.is_error_packet():
            packet.raise_for_error()
        return packet

    def _next_data(self) -> None:
        if self._refill is None or self._pos != len(self._data):
            raise errors.InternalError(0, "truncated result packets from broker")
        self._data, self._pos = self._refill(), 0
