"""DB-API cursors of `client.dbapi`: buffered, unbuffered, and their dict forms.

They behave as pymysql's classes of the same names: ``fetchall()`` of a
buffered cursor returns a tuple, fetching after a statement without a result
set gives None / ``()`` / ``[]``, ``nextset()`` walks the result sets of a
``CALL``, and ``lastrowid``, ``rowcount`` and ``description`` stay readable
after ``close()`` (SQLAlchemy reads them there). ``_executed`` holds the
statement as sent, parameters rendered (Django's ``last_executed_query``).
Where PEP 249 and pymysql differ, a second ``close()`` raises
`ProgrammingError` as PEP 249 asks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pymysql

from client.errors import NotSupportedError, ProgrammingError
from client.packets import info_text
from client.pinned import Stream
from client.result import Result, matched_rows

if TYPE_CHECKING:
    from client.dbapi import Connection
    from client.settings import Params


def _backquote(name: str) -> str:
    return name.replace("`", "``")


class Cursor:
    """A buffered cursor: each statement's rows arrive whole, as pymysql's Cursor.

    Args:
        connection: the `Connection` this cursor runs statements on.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        self.description: tuple | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.warning_count = 0
        self.rownumber = 0
        self._result: Result | None = None
        self._rows: tuple | None = None
        self._executed: str | None = None
        self._closed = False

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchone, None)

    # Statements ----------------------------------------------------------------------

    def execute(self, query: str, args: Params = None) -> int:
        """Run one statement with ``%s`` or ``%(name)s`` parameters; return rowcount."""
        self._check_open()
        self._clear()
        sql = self.connection.render(query, args)
        self._executed = sql
        self._set_result(self.connection.run([(sql, None)]))
        return self.rowcount

    def executemany(self, query: str, args: Iterable[Params]) -> int:
        """Run query once per parameter set (INSERTs batched as pymysql does).

        Returns:
            The total of the affected rows, which ``rowcount`` also holds.
        """
        self._check_open()
        self._clear()
        self._executed = query
        self._set_result(self.connection.run_many(query, args))
        return self.rowcount

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Sequence[Any]:
        """Call a stored procedure, as pymysql 1.2 does; return args unchanged.

        The arguments go into server variables ``@_procname_0``, ... and the
        procedure is called with them; ``SELECT @_procname_0`` afterwards reads
        an OUT or INOUT value back. With autocommit off that works as in
        pymysql (the transaction keeps the variables); in autocommit mode the
        call runs in a session of its own, and the variables end with it. The
        cursor holds the procedure's result sets (`nextset`).
        """
        self._check_open()
        self._clear()
        name = _backquote(procname)
        names = [f"@`_{name}_{i}`" for i in range(len(args))]
        statements: list[tuple[str, Params]] = []
        if args:
            assigns = ",".join(f"{var}=%s" for var in names)
            statements.append((f"SET {assigns}", tuple(args)))
        call = f"CALL `{name}`({','.join(names)})"
        statements.append((call, None))
        self._set_result(self.connection.run(statements))
        self._executed = call
        return args

    def mogrify(self, query: str, args: Params = None) -> str:
        """Return the statement execute() would send, as pymysql's cursor does."""
        self._check_open()
        return self.connection.render(query, args)

    def setinputsizes(self, sizes: Any) -> None:
        """Do nothing (PEP 249 allows it)."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Do nothing (PEP 249 allows it)."""

    def nextset(self) -> bool | None:
        """Move to the statement's next result set; None when there is none."""
        self._check_open()
        result = self._result
        if result is None or result.next_result is None:
            return None
        self._set_result(result.next_result)
        return True

    def close(self) -> None:
        """Drop the rows; counts stay readable, anything else raises ProgrammingError.

        Raises:
            ProgrammingError: when the cursor is already closed (PEP 249).
        """
        if self._closed:
            raise ProgrammingError(0, "cursor is already closed")
        self._rows = None
        self._result = None
        self._closed = True

    # Rows ----------------------------------------------------------------------------

    def fetchone(self) -> Any:
        """Return the next row, or None when there are no more (or no result set)."""
        rows = self._fetch_rows()
        if rows is None or self.rownumber >= len(rows):
            return None
        row = rows[self.rownumber]
        self.rownumber += 1
        return row

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        """Return up to ``size`` (default ``arraysize``) next rows, as a tuple."""
        rows = self._fetch_rows()
        if rows is None:
            return ()
        end = self.rownumber + (size or self.arraysize)
        out = rows[self.rownumber : end]
        self.rownumber = min(end, len(rows))
        return out

    def fetchall(self) -> Sequence[Any]:
        """Return all remaining rows: a tuple, or ``[]`` after a statement without."""
        rows = self._fetch_rows()
        if rows is None:
            return []
        out = rows[self.rownumber :] if self.rownumber else rows
        self.rownumber = len(rows)
        return out

    def scroll(self, value: int, mode: str = "relative") -> None:
        """Move the row position (PEP 249 extension); IndexError when out of range."""
        rows = self._fetch_rows() or ()
        if mode == "relative":
            target = self.rownumber + value
        elif mode == "absolute":
            target = value
        else:
            raise ProgrammingError(0, f"unknown scroll mode {mode!r}")
        if not 0 <= target <= len(rows):
            raise IndexError("out of range")
        self.rownumber = target

    # Internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError(0, "cursor is closed")
        self.connection.check_open()

    def _fetch_rows(self) -> tuple | None:
        self._check_open()
        if self._executed is None:
            raise ProgrammingError(0, "execute() first")
        return self._rows

    def _clear(self) -> None:
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self.warning_count = 0
        self.rownumber = 0
        self._result = None
        self._rows = None

    def _set_result(self, result: Result) -> None:
        self._result = result
        self.rownumber = 0
        self.description = result.description or None
        self._rows = self._convert(result) if result.description else None
        self.rowcount = self.connection.count_rows(result.rowcount, result.matched)
        self.lastrowid = result.lastrowid
        self.warning_count = result.warnings
        self.connection.last_result = result

    def _convert(self, result: Result) -> tuple:
        return tuple(result.rows)


def _dict_fields(description: Sequence[Sequence[Any]], tables: Sequence[str]) -> list:
    """Return the dict keys of a row: column names, ``table.name`` for a repeat."""
    fields: list[str] = []
    for i, column in enumerate(description):
        name = column[0]
        if name in fields and i < len(tables):
            name = f"{tables[i]}.{name}"
        fields.append(name)
    return fields


def _dict_rows(result: Result, dict_type: type) -> tuple:
    """Return a buffered result's rows as dicts of dict_type."""
    fields = _dict_fields(result.description, result.table_names)
    return tuple(dict_type(zip(fields, row, strict=False)) for row in result.rows)


class DictCursor(Cursor):
    """A buffered cursor whose rows are dicts {column: value}, as pymysql's."""

    dict_type = dict

    def _convert(self, result: Result) -> tuple:
        return _dict_rows(result, self.dict_type)


class SSCursor(Cursor):
    """An unbuffered cursor: rows arrive from the broker in chunks as they are read.

    Streams in autocommit mode, and for a plain read when no transaction is
    open; otherwise runs buffered in the transaction (see `client.dbapi`).
    ``rowcount`` of a streamed result set is -1 (unknown until read), and
    ``chunk_rows`` is how many rows one round trip brings. A streamed
    statement's later result sets are not read (``nextset()`` returns None).
    """

    chunk_rows = 1000

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._stream: Stream | None = None
        self._fields: list[str] | None = None

    def execute(self, query: str, args: Params = None) -> int:
        """Run one statement, streaming its rows when possible; return rowcount."""
        self._check_open()
        self._clear()
        conn = self.connection
        sql = conn.render(query, args)
        if not conn.may_stream(sql):
            return super().execute(sql)
        stream = conn.open_stream(sql, self.chunk_rows)
        result = stream.result
        self._executed = sql
        self.description = result.description or None
        self.lastrowid = result.insert_id
        self.warning_count = result.warning_count
        if self.description is None:
            matched = matched_rows(info_text(result.message))
            self.rowcount = conn.count_rows(result.affected_rows, matched)
        else:
            self._stream = stream
            self._fields = self._stream_fields(result)
        return self.rowcount

    def _stream_fields(self, result: Any) -> list[str] | None:
        return None

    def _row(self, row: tuple) -> Any:
        return row

    def fetchone(self) -> Any:
        """Return the next row, or None when there are no more."""
        stream = self._current_stream()
        if stream is None:
            return super().fetchone()
        row = next(stream, None)
        if row is None:
            return None
        self.rownumber += 1
        return self._row(row)

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        """Return up to ``size`` (default ``arraysize``) next rows, as a list."""
        stream = self._current_stream()
        if stream is None:
            return list(super().fetchmany(size))
        out = list(itertools.islice(stream, size or self.arraysize))
        self.rownumber += len(out)
        return [self._row(row) for row in out]

    def fetchall(self) -> Sequence[Any]:
        """Return all remaining rows (which, for a stream, are then in memory)."""
        stream = self._current_stream()
        if stream is None:
            return list(super().fetchall())
        out = list(stream)
        self.rownumber += len(out)
        return [self._row(row) for row in out]

    def scroll(self, value: int, mode: str = "relative") -> None:
        """Skip forward through a stream; NotSupportedError for going back."""
        stream = self._current_stream()
        if stream is None:
            super().scroll(value, mode)
            return
        skip = value if mode == "relative" else value - self.rownumber
        if skip < 0:
            raise NotSupportedError(0, "an unbuffered cursor cannot scroll backwards")
        for _ in range(skip):
            if next(stream, None) is None:
                raise IndexError("out of range")
            self.rownumber += 1

    def close(self) -> None:
        """Stop an unfinished stream (freeing its connection), then close."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        super().close()

    def _current_stream(self) -> Stream | None:
        self._fetch_rows()
        return self._stream

    def _clear(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            self._stream = None
            stream.close()  # frees the broker connection of an unfinished stream
        super()._clear()


class SSDictCursor(SSCursor):
    """An unbuffered cursor whose rows are dicts, as pymysql's SSDictCursor."""

    dict_type = dict

    def _convert(self, result: Result) -> tuple:
        return _dict_rows(result, self.dict_type)

    def _stream_fields(self, result: Any) -> list[str] | None:
        tables = [f.table_name for f in result.fields]
        return _dict_fields(result.description, tables)

    def _row(self, row: tuple) -> Any:
        return self.dict_type(zip(self._fields or (), row, strict=False))


# pymysql's cursor classes, as code moved from pymysql passes them to cursor().
PYMYSQL_CURSORS: dict[type, type[Cursor]] = {
    pymysql.cursors.Cursor: Cursor,
    pymysql.cursors.DictCursor: DictCursor,
    pymysql.cursors.SSCursor: SSCursor,
    pymysql.cursors.SSDictCursor: SSDictCursor,
}
