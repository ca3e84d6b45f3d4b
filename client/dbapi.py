"""A PEP 249 (DB-API 2.0) driver over the broker: ``client.dbapi.connect()``.

Code written against pymysql (or any DB-API driver) runs unchanged on top of
the broker: ``paramstyle`` is ``pyformat`` like pymysql's, SQL is rendered by
pymysql's own escaping, rows and ``description`` type codes are pymysql's, and
the exception classes are the very objects of `client` (``client.dbapi.Error is
client.Error``), so one ``except`` clause catches both APIs.

What a `Connection` holds on the wire:

- Nothing until it runs a statement: ``connect()`` opens no socket and no
  MySQL connection, so an idle DB-API connection costs the broker nothing.
- With ``autocommit`` off (the PEP's default), the first statement pins a
  broker transaction (`client.Transaction`, ``Op.BEGIN``); every statement until
  ``commit()`` or ``rollback()`` runs on that one MySQL connection, and the pin
  ends with it. The next statement pins again.
- With ``autocommit`` on, each statement runs on any free connection, exactly
  like ``client.query``: session state (``SET @v``, temporary tables,
  ``SET SESSION``) does not carry from one statement to the next. Inside a
  transaction it does, until the transaction ends.

Connections of one process share one `client.Client` per (endpoint, pool, name),
so making a DB-API connection per request (SQLAlchemy's ``NullPool``) costs no
handshake. A `Connection` belongs to the thread that runs its transaction
(``threadsafety = 1``: threads may share the module, not connections); a
connection made before ``fork()`` works in the child as long as no transaction
was open at the fork.

`SSCursor` streams (``Op.STREAM_OPEN``) instead of buffering. A stream runs on
a connection of its own, so it cannot see an open transaction's uncommitted
writes: the cursor streams in autocommit mode, and when no transaction is open
yet and the statement is a plain read (it would have been the transaction's
first statement); otherwise it runs the statement buffered inside the
transaction, which is slower on memory but always correct.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pymysql
from pymysql.constants import FIELD_TYPE

from client import errors, protocol
from client.api import DEFAULT_TIMEOUT, Client, Params
from client.errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from client.pinned import ISOLATION_LEVELS, Stream, Transaction
from client.protocol import Op
from client.result import Result

__all__ = [
    "BINARY",
    "DATE",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "TIME",
    "TIMESTAMP",
    "Binary",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "SSCursor",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]

apilevel = "2.0"
threadsafety = 1  # threads may share the module, but not connections
paramstyle = "pyformat"  # %s and %(name)s, rendered by pymysql's escaping

# Type objects. A type code in ``cursor.description`` is pymysql's FIELD_TYPE
# number and compares equal to the object of its kind; pymysql's own sets,
# completed with the codes MySQL 5+ reports (NEWDECIMAL, VARCHAR, JSON, ...).
DBAPISet = pymysql.DBAPISet
STRING = DBAPISet(
    [
        FIELD_TYPE.ENUM,
        FIELD_TYPE.SET,
        FIELD_TYPE.STRING,
        FIELD_TYPE.VAR_STRING,
        FIELD_TYPE.VARCHAR,
        FIELD_TYPE.JSON,
    ]
)
BINARY = DBAPISet(
    [
        FIELD_TYPE.BLOB,
        FIELD_TYPE.LONG_BLOB,
        FIELD_TYPE.MEDIUM_BLOB,
        FIELD_TYPE.TINY_BLOB,
        FIELD_TYPE.BIT,
        FIELD_TYPE.GEOMETRY,
    ]
)
NUMBER = DBAPISet(
    [
        FIELD_TYPE.DECIMAL,
        FIELD_TYPE.NEWDECIMAL,
        FIELD_TYPE.DOUBLE,
        FIELD_TYPE.FLOAT,
        FIELD_TYPE.INT24,
        FIELD_TYPE.LONG,
        FIELD_TYPE.LONGLONG,
        FIELD_TYPE.SHORT,
        FIELD_TYPE.TINY,
        FIELD_TYPE.YEAR,
    ]
)
DATE = DBAPISet([FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE])
TIME = DBAPISet([FIELD_TYPE.TIME])
TIMESTAMP = DBAPISet([FIELD_TYPE.TIMESTAMP, FIELD_TYPE.DATETIME])
DATETIME = TIMESTAMP
ROWID = DBAPISet()  # MySQL has no row id type

# Type constructors (PEP 249).
Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:
    """Return the local date of a Unix timestamp."""
    return datetime.date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    """Return the local time of day of a Unix timestamp."""
    return datetime.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    """Return the local date and time of a Unix timestamp."""
    return datetime.datetime(*time.localtime(ticks)[:6])


# A statement an SSCursor may stream outside a transaction: a plain read that
# neither locks rows nor touches session state.
_READS = frozenset(
    {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "VALUES", "TABLE"}
)
_NOT_PLAIN = re.compile(
    r"\bfor\s+update\b|\bfor\s+share\b|\block\s+in\s+share\s+mode\b|\binto\b"
    r"|@|\bget_lock\b|\blast_insert_id\s*\(",
    re.IGNORECASE,
)
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")


def _plain_read(sql: str) -> bool:
    match = _FIRST_WORD.match(sql)
    return (
        match is not None
        and match.group(1).upper() in _READS
        and _NOT_PLAIN.search(sql) is None
    )


def _ends_transaction(err: Error) -> bool:
    """Whether an error inside a transaction means the broker no longer holds it."""
    return isinstance(err, errors.BrokerUnavailable | errors.OutcomeUnknown) or (
        err.errno in (errors.ER_BAD_PIN, errors.CR_SERVER_LOST, 2006)
    )


_clients: dict[tuple[str, str, str | None], Client] = {}
_clients_lock = threading.Lock()


def _shared_client(endpoint: str | None, pool: str, name: str | None) -> Client:
    """Return the process's Client for (endpoint, pool, name), made on first use."""
    key = (endpoint or "", pool, name)
    found = _clients.get(key)
    if found is None:
        with _clients_lock:
            found = _clients.get(key)
            if found is None:
                found = _clients[key] = Client(endpoint, pool=pool, name=name)
    return found


def _after_fork_in_child() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # a lock held by another parent thread stays held


os.register_at_fork(after_in_child=_after_fork_in_child)


def connect(
    endpoint: str | None = None,
    pool: str = protocol.DEFAULT_POOL,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    autocommit: bool = False,
    isolation_level: str | None = None,
    readonly: bool = False,
    name: str | None = None,
    client: Client | None = None,
) -> Connection:
    """Return a DB-API connection to a broker pool; nothing is sent until used.

    Args:
        endpoint: the broker's address; default ``$BROKER_ENDPOINT``, else
            `client.DEFAULT_ENDPOINT`.
        pool: the broker pool the statements run on.
        timeout: seconds each statement may take (the broker also applies the
            pool's ``query_timeout``).
        autocommit: run each statement on its own instead of in transactions.
        isolation_level: e.g. ``"READ COMMITTED"``, for every transaction.
        readonly: start transactions ``READ ONLY``.
        name: a label ``broker status`` shows beside pid and host.
        client: a `client.Client` to use instead of the shared one (its
            endpoint and pool then apply, and ``endpoint``/``pool``/``name``
            must not be given).

    Raises:
        InterfaceError: for a timeout that is not a positive number.
        ProgrammingError: for an unknown isolation level.
    """
    if client is None:
        client = _shared_client(endpoint, pool, name)
    elif endpoint is not None or pool != protocol.DEFAULT_POOL or name is not None:
        raise InterfaceError(0, "give either client= or endpoint/pool/name, not both")
    return Connection(
        client,
        timeout=timeout,
        autocommit=autocommit,
        isolation_level=isolation_level,
        readonly=readonly,
    )


class Connection:
    """A DB-API connection: a lazily pinned broker transaction, or autocommit.

    Args:
        client: the `client.Client` statements go through.
        timeout: seconds each statement may take.
        autocommit: run each statement on its own instead of in transactions.
        isolation_level: isolation of every transaction; None: the server's.
        readonly: start transactions ``READ ONLY``.
    """

    # PEP 249 optional extension: the exceptions as connection attributes.
    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(
        self,
        client: Client,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        autocommit: bool = False,
        isolation_level: str | None = None,
        readonly: bool = False,
    ) -> None:
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        self._client = client
        self.timeout = float(timeout)
        self._autocommit = bool(autocommit)
        self.isolation_level = isolation_level
        self.readonly = bool(readonly)
        self._tx: Transaction | None = None
        self._lost: Error | None = None  # why the open transaction is gone
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<client.dbapi.Connection {state} {self._client!r}>"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Properties ---------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The `client.Client` this connection's statements go through."""
        return self._client

    @property
    def open(self) -> bool:
        """Whether the connection is usable (not closed), as pymysql names it."""
        return not self._closed

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is pinned (a statement ran since the last end)."""
        return self._tx is not None or self._lost is not None

    @property
    def autocommit(self) -> bool:
        """Whether each statement runs on its own; setting True commits an open one."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check_open()
        value = bool(value)
        if value and not self._autocommit and self.in_transaction:
            self.commit()  # as MySQL's SET autocommit = 1 does
        self._autocommit = value

    @property
    def isolation_level(self) -> str | None:
        """Isolation level of the next transactions; None means the server's."""
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, level: str | None) -> None:
        if level is not None:
            level = level.upper().replace("-", " ").replace("_", " ")
            if level not in ISOLATION_LEVELS:
                raise ProgrammingError(
                    0,
                    f"isolation_level must be one of {sorted(ISOLATION_LEVELS)}, "
                    f"got {level!r}",
                )
        self._isolation_level = level

    def get_autocommit(self) -> bool:
        """Return the autocommit mode (pymysql's spelling)."""
        return self._autocommit

    # PEP 249 --------------------------------------------------------------------

    def cursor(self, cursorclass: type[Cursor] | None = None) -> Cursor:
        """Return a new cursor; ``cursorclass`` may be `SSCursor` for streaming."""
        self._check_open()
        return (cursorclass or Cursor)(self)

    def begin(self) -> None:
        """Pin a transaction now rather than at the first statement."""
        self._check_open()
        if self._autocommit:
            raise ProgrammingError(0, "begin() needs autocommit off")
        tx = self._transaction()
        if not tx.pin:
            tx.begin()

    def commit(self) -> None:
        """Commit the open transaction and free its MySQL connection, if any."""
        self._check_open()
        tx, lost = self._tx, self._lost
        self._tx = self._lost = None
        if lost is not None:
            raise OperationalError(
                lost.errno,
                f"cannot commit: the transaction was lost ({lost.msg}); "
                "MySQL rolled it back",
                lost.sqlstate,
            ) from lost
        if tx is not None:
            tx.commit(timeout=self.timeout)

    def rollback(self) -> None:
        """Roll back the open transaction and free its MySQL connection, if any."""
        self._check_open()
        self._end_transaction()

    def close(self) -> None:
        """Roll back an open transaction and make the connection unusable.

        Closing twice does nothing. The shared `client.Client` stays open for
        the process's other connections.
        """
        if self._closed:
            return
        try:
            self._end_transaction()
        except Error:
            pass  # the broker rolls back a transaction whose client goes silent
        finally:
            self._closed = True

    # Extensions, as pymysql has them ------------------------------------------------

    def ping(self, reconnect: bool = False) -> float:
        """Check the broker answers; return the round trip in seconds.

        Args:
            reconnect: accepted for pymysql compatibility; the broker keeps its
                MySQL connections alive, so there is nothing to reconnect.

        Raises:
            BrokerUnavailable: when the broker does not answer in time.
        """
        self._check_open()
        return self._client.ping(timeout=self.timeout)

    def character_set_name(self) -> str:
        """Return the pool's connection charset, e.g. ``"utf8mb4"``."""
        self._check_open()
        return self._client._pool_info(self.timeout)[protocol.INFO_CHARSET]

    def get_server_info(self) -> str:
        """Return the MySQL server version string, as pymysql does."""
        self._check_open()
        return self._client._pool_info(self.timeout)[protocol.INFO_SERVER_VERSION]

    def escape(self, value: Any) -> str:
        """Return value as a SQL literal, escaped for the pool's charset and mode."""
        self._check_open()
        return self._client._codec(self.timeout).escape(value)

    # Running statements (for cursors) ------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError(0, "connection is closed")

    def _transaction(self) -> Transaction:
        if self._lost is not None:
            raise OperationalError(
                errors.ER_BAD_PIN,
                f"the transaction was lost ({self._lost.msg}); call rollback() "
                "before running more statements",
            )
        tx = self._tx
        if tx is None:
            tx = Transaction(
                self._client,
                isolation=self._isolation_level,
                readonly=self.readonly,
                timeout=self.timeout,
            )
            self._tx = tx  # it begins with its first statement, in the same trip
        return tx

    def _end_transaction(self) -> None:
        tx, lost = self._tx, self._lost
        self._tx = self._lost = None
        if tx is None or not tx.pin or tx._pid != os.getpid():
            return  # nothing open, or the parent's transaction (after fork): not ours
        try:
            tx.rollback(timeout=self.timeout)
        except Error as err:
            # A transaction the broker no longer holds was rolled back by MySQL.
            if lost is None and not _ends_transaction(err):
                raise

    def _run(self, statements: Sequence[tuple[str, Params]]) -> Result:
        """Run statements in order on one connection; return the last Result."""
        self._check_open()
        if self._autocommit:
            if len(statements) == 1:
                sql, params = statements[0]
                return self._client.query(sql, params, timeout=self.timeout)
            with self._client.session(timeout=self.timeout) as session:
                for sql, params in statements:
                    result = session.query(sql, params)
            return result
        tx = self._transaction()
        try:
            for sql, params in statements:
                result = tx.query(sql, params)
        except Error as err:
            if _ends_transaction(err):
                self._lost = err
            raise
        return result

    def _run_many(self, sql: str, seq_params: Iterable[Params]) -> Result:
        self._check_open()
        if self._autocommit:
            return self._client.executemany(sql, seq_params, timeout=self.timeout)
        tx = self._transaction()
        try:
            return tx.executemany(sql, seq_params)
        except Error as err:
            if _ends_transaction(err):
                self._lost = err
            raise

    def _streams(self, sql: str) -> bool:
        """Whether an SSCursor may stream sql rather than run it in the transaction."""
        return self._autocommit or (not self.in_transaction and _plain_read(sql))

    def __del__(self) -> None:
        tx = self._tx
        if (
            tx is not None
            and tx.pin
            and tx._pid == os.getpid()
            and tx._thread == threading.get_ident()
        ):
            try:
                self._client._send_only(Op.ROLLBACK, tx.pin)
            except Exception:  # noqa: S110  the broker's idle timeout rolls back
                pass


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
        self.rownumber = 0
        self._rows: list[tuple] | None = None
        self._executed: str | None = None
        self._closed = False

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    # Statements ----------------------------------------------------------------------

    def execute(self, query: str, args: Params = None) -> int:
        """Run one statement with ``%s`` or ``%(name)s`` parameters; return rowcount."""
        self._check_open()
        self._clear()
        self._set_result(self.connection._run([(query, args)]))
        self._executed = query
        return self.rowcount

    def executemany(self, query: str, args: Iterable[Params]) -> int:
        """Run query once per parameter set (INSERTs batched as pymysql does).

        Returns:
            The total of the affected rows, which ``rowcount`` also holds.
        """
        self._check_open()
        self._clear()
        self._set_result(self.connection._run_many(query, args))
        self._executed = query
        return self.rowcount

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Sequence[Any]:
        """Call a stored procedure, as pymysql does; return args unchanged.

        The arguments go into server variables ``@_procname_0``, ... and the
        procedure is called with them; ``SELECT @_procname_0`` afterwards reads
        an OUT or INOUT value back. With autocommit off that works as in
        pymysql (the transaction keeps the variables); in autocommit mode the
        call runs in a session of its own, and the variables end with it. The
        cursor holds the procedure's first result set.
        """
        self._check_open()
        self._clear()
        names = [f"@_{procname}_{i}" for i in range(len(args))]
        statements: list[tuple[str, Params]] = []
        if args:
            assigns = ",".join(f"{name}=%s" for name in names)
            statements.append((f"SET {assigns}", tuple(args)))
        call = f"CALL {procname}({','.join(names)})"
        statements.append((call, None))
        self._set_result(self.connection._run(statements))
        self._executed = call
        return args

    def mogrify(self, query: str, args: Params = None) -> str:
        """Return the statement execute() would send, as pymysql's cursor does."""
        self._check_open()
        codec = self.connection.client._codec(self.connection.timeout)
        return codec.render(query, args).decode(codec.encoding)

    def setinputsizes(self, sizes: Any) -> None:
        """Do nothing (PEP 249 allows it)."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Do nothing (PEP 249 allows it)."""

    def nextset(self) -> bool | None:
        """Return None: only a statement's first result set is kept."""
        self._check_open()
        return None

    def close(self) -> None:
        """Drop the rows; the cursor can no longer be used. Closing twice is fine."""
        self._clear()
        self._closed = True

    # Rows ----------------------------------------------------------------------------

    def fetchone(self) -> tuple | None:
        """Return the next row, or None when there are no more."""
        rows = self._result_rows()
        if self.rownumber >= len(rows):
            return None
        row = rows[self.rownumber]
        self.rownumber += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        """Return up to ``size`` (default ``arraysize``) next rows."""
        rows = self._result_rows()
        end = self.rownumber + (self.arraysize if size is None else size)
        out = rows[self.rownumber : end]
        self.rownumber += len(out)
        return out

    def fetchall(self) -> list[tuple]:
        """Return all remaining rows."""
        rows = self._result_rows()
        out = rows[self.rownumber :]
        self.rownumber = len(rows)
        return out

    def scroll(self, value: int, mode: str = "relative") -> None:
        """Move the row position (PEP 249 extension); IndexError when out of range."""
        rows = self._result_rows()
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
        self.connection._check_open()

    def _clear(self) -> None:
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self.rownumber = 0
        self._rows = None

    def _set_result(self, result: Result) -> None:
        self.description = result.description or None
        self._rows = result.rows if result.description else None
        self.rowcount = result.rowcount
        self.lastrowid = result.lastrowid

    def _result_rows(self) -> list[tuple]:
        self._check_open()
        if self._rows is None:
            raise ProgrammingError(
                0, "no result set: the last statement returned no rows, or none ran"
            )
        return self._rows


class _CursorStream(Stream):
    """A `client.Stream` that opens on demand and shows its result's metadata."""

    def __next__(self) -> tuple:
        try:
            return super().__next__()
        except pymysql.MySQLError as err:  # an error packet in mid-stream
            raise errors.from_pymysql(err) from err

    def start(self) -> None:
        """Send the statement and read up to its first row."""
        self._check_owner()
        self._open()

    @property
    def result(self) -> Any:
        """The unbuffered pymysql result: description, affected_rows, insert_id."""
        return self._result


class SSCursor(Cursor):
    """An unbuffered cursor: rows arrive from the broker in chunks as they are read.

    Streams in autocommit mode, and for a plain read when no transaction is
    open; otherwise runs buffered in the transaction (see the module docstring).
    ``rowcount`` of a streamed result set is -1 (unknown until read), and
    ``chunk_rows`` is how many rows one round trip brings.
    """

    chunk_rows = 1000

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._stream: _CursorStream | None = None

    def execute(self, query: str, args: Params = None) -> int:
        """Run one statement, streaming its rows when possible; return rowcount."""
        self._check_open()
        self._clear()
        conn = self.connection
        if not conn._streams(query):
            return super().execute(query, args)
        stream = _CursorStream(
            conn.client,
            query,
            args,
            chunk_rows=self.chunk_rows,
            timeout=conn.timeout,
            pin=0,
        )
        stream.start()
        result = stream.result
        self._executed = query
        self.description = result.description or None
        self.lastrowid = result.insert_id
        if self.description is None:
            self.rowcount = result.affected_rows
        else:
            self._stream = stream
        return self.rowcount

    def fetchone(self) -> tuple | None:
        """Return the next row, or None when there are no more."""
        stream = self._current_stream()
        if stream is None:
            return super().fetchone()
        row = next(stream, None)
        if row is not None:
            self.rownumber += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        """Return up to ``size`` (default ``arraysize``) next rows."""
        stream = self._current_stream()
        if stream is None:
            return super().fetchmany(size)
        out = list(itertools.islice(stream, self.arraysize if size is None else size))
        self.rownumber += len(out)
        return out

    def fetchall(self) -> list[tuple]:
        """Return all remaining rows (which, for a stream, are then in memory)."""
        stream = self._current_stream()
        if stream is None:
            return super().fetchall()
        out = list(stream)
        self.rownumber += len(out)
        return out

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

    def _current_stream(self) -> _CursorStream | None:
        self._check_open()
        stream = self._stream
        if stream is None and self._rows is None:
            raise ProgrammingError(
                0, "no result set: the last statement returned no rows, or none ran"
            )
        return stream

    def _clear(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            self._stream = None
            stream.close()  # frees the broker connection of an unfinished stream
        super()._clear()
