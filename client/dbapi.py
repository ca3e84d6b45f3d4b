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

- An XA transaction (``XA START``) pins a session instead, without BEGIN,
  until its ``XA COMMIT`` / ``XA ROLLBACK``; the connection's ``commit()``
  commits one still open, ``rollback()`` and ``close()`` roll it back, so no
  prepared XA transaction is left behind without its session (MariaDB would
  keep it, and its locks, and without a binary log refuses to commit it from
  another connection: error 1031). ``XA RECOVER`` from any connection lists
  prepared ones.

The cursors are in `client.cursors`; which ``pymysql.connect()`` keywords are
honoured is in `client.connect_args`; pymysql's extensions (``escape``,
``insert_id``, ``ping``, ...) in `client.dbapi_extras`. `SSCursor` streams
(``Op.STREAM_OPEN``) instead of buffering. A stream runs on a connection of
its own, so it cannot see an open transaction's uncommitted
writes: the cursor streams in autocommit mode, and when no transaction is open
yet and the statement is a plain read (it would have been the transaction's
first statement); otherwise it runs the statement buffered inside the
transaction, which is slower on memory but always correct.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pymysql

from client import errors
from client.api import Client
from client.connect_args import SUPERSETS, pymysql_options_for
from client.cursors import PYMYSQL_CURSORS, Cursor, DictCursor, SSCursor, SSDictCursor
from client.dbapi_extras import PymysqlExtensions
from client.dbtypes import (
    BINARY,
    DATE,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    TIME,
    TIMESTAMP,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)
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
from client.pinned import Stream, Transaction
from client.result import Result
from client.settings import DEFAULT_TIMEOUT, Params
from client.wire import protocol, statement
from client.wire.protocol import ISOLATION_LEVELS
from client.xa import XaTransaction, begins_xa

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
    "DictCursor",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "SSCursor",
    "SSDictCursor",
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


# A statement an SSCursor may stream outside a transaction: a plain read that
# neither locks rows nor touches session state.
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
    timeout: float | None = None,
    autocommit: bool | None = False,
    isolation_level: str | None = None,
    readonly: bool = False,
    name: str | None = None,
    client: Client | None = None,
    **pymysql_options: Any,
) -> Connection:
    """Return a DB-API connection to a broker pool; nothing is sent until used.

    Args:
        endpoint: the broker's address; default ``$BROKER_ENDPOINT``, else
            `client.DEFAULT_ENDPOINT`.
        pool: the broker pool the statements run on.
        timeout: seconds each statement may take (the broker also applies the
            pool's ``query_timeout``); default `client.settings.DEFAULT_TIMEOUT`.
        autocommit: run each statement on its own instead of in transactions
            (None, pymysql's "server default", is False).
        isolation_level: e.g. ``"READ COMMITTED"``, for every transaction.
        readonly: start transactions ``READ ONLY``.
        name: a label ``broker status`` shows beside pid and host.
        client: a `client.Client` to use instead of the shared one (its
            endpoint and pool then apply, and ``endpoint``/``pool``/``name``
            must not be given).
        **pymysql_options: ``pymysql.connect()``'s keywords, honoured as
            pymysql does where they mean something here: ``client_flag``
            (``CLIENT.FOUND_ROWS``: an UPDATE's rowcount counts matched rows),
            ``conv``, ``use_unicode``, ``charset`` (the pool's, or one it
            encodes identically), ``cursorclass``, ``read_timeout`` /
            ``write_timeout`` (as ``timeout``), ``program_name`` (as ``name``);
            ``connect_timeout``, ``defer_connect``, ``max_allowed_packet`` are
            accepted and mean nothing. The README lists the rest.

    Raises:
        InterfaceError: for a timeout that is not a positive number.
        ProgrammingError: for an unknown isolation level.
        NotSupportedError: for a pymysql argument that cannot be honoured
            (host, user, database, init_command, sql_mode, ...), naming it.
    """
    options = pymysql_options_for(pymysql_options)
    name = options.pop("name", None) if name is None else name
    if timeout is None:
        timeout = options.pop("timeout", DEFAULT_TIMEOUT)
    options.pop("timeout", None)
    if client is None:
        client = _shared_client(endpoint, pool, name)
    elif endpoint is not None or pool != protocol.DEFAULT_POOL or name is not None:
        raise InterfaceError(0, "give either client= or endpoint/pool/name, not both")
    return Connection(
        client,
        timeout=timeout,
        autocommit=bool(autocommit),
        isolation_level=isolation_level,
        readonly=readonly,
        **options,
    )


class _Autocommit(int):
    """``conn.autocommit``: reads as a bool, and ``conn.autocommit(True)`` sets it.

    PEP 249 drivers have an attribute, pymysql (and Django, which calls it) a
    method of that name: this value is both.
    """

    _connection: Connection

    def __new__(cls, value: bool, connection: Connection) -> _Autocommit:
        self = super().__new__(cls, bool(value))
        self._connection = connection
        return self

    def __call__(self, value: bool) -> None:
        self._connection.autocommit = value

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__


_LOAD_LOCAL = re.compile(
    r"\s*LOAD\s+(DATA|XML)\s+(LOW_PRIORITY\s+|CONCURRENT\s+)?LOCAL\b", re.IGNORECASE
)


class Connection(PymysqlExtensions):
    """A DB-API connection: a lazily pinned broker transaction, or autocommit.

    Args:
        client: the `client.Client` statements go through.
        timeout: seconds each statement may take.
        autocommit: run each statement on its own instead of in transactions.
        isolation_level: isolation of every transaction; None: the server's.
        readonly: start transactions ``READ ONLY``.
        found_rows: an UPDATE's rowcount counts the rows it matched, not the
            rows it changed (pymysql's ``CLIENT.FOUND_ROWS``), from the info
            MySQL sends with every UPDATE.
        cursorclass: what ``cursor()`` makes; pymysql's classes map to ours.
        conv: pymysql's ``conv``: decoders by field type, encoders by class.
        use_unicode: False returns text columns as bytes, as in pymysql.
        charset: the caller's charset; the pool's must encode it identically.

    XA transactions (``XA START`` ... ``XA COMMIT``/``XA ROLLBACK``) run on a
    session pinned without BEGIN, which the connection holds until the XA
    transaction's COMMIT or ROLLBACK. ``commit()`` of the connection commits
    an XA transaction still open (``ONE PHASE`` before PREPARE);
    ``rollback()`` and ``close()`` roll it back, prepared or not.
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
        found_rows: bool = False,
        cursorclass: type | None = None,
        conv: dict | None = None,
        use_unicode: bool = True,
        charset: str | None = None,
    ) -> None:
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
        self._client = client
        self.timeout = float(timeout)
        self._autocommit = bool(autocommit)
        self.isolation_level = isolation_level
        self.readonly = bool(readonly)
        self._tx: Transaction | None = None
        self._xa: XaTransaction | None = None  # on a session of its own
        self._lost: Error | None = None  # why the open transaction is gone
        self._closed = False
        self._found_rows = bool(found_rows)
        self._cursorclass = self._cursor_class(cursorclass or Cursor)
        self._charset = charset
        # The result a cursor read last (nextset moves it on): insert_id() and
        # affected_rows() report it, as pymysql's connection does.
        self.last_result: Result | None = None
        self._conv: tuple[dict, dict, bool] | None = None
        if conv is not None or not use_unicode:
            self._own_converters(conv, use_unicode)

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
        return self._tx is not None or self._lost is not None or self._xa is not None

    @property
    def autocommit(self) -> _Autocommit:
        """Whether each statement runs on its own; setting True commits an open one.

        ``conn.autocommit = True`` (PEP 249 drivers) and ``conn.autocommit(True)``
        (pymysql) both set it.
        """
        return _Autocommit(self._autocommit, self)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self.check_open()
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

    def cursor(self, cursorclass: type | None = None) -> Cursor:
        """Return a new cursor: `Cursor`, `DictCursor`, `SSCursor`, `SSDictCursor`.

        pymysql's classes of those names (``pymysql.cursors.DictCursor``) give
        ours.
        """
        self.check_open()
        cls = (
            self._cursorclass
            if cursorclass is None
            else self._cursor_class(cursorclass)
        )
        return cls(self)

    @staticmethod
    def _cursor_class(cursorclass: type) -> type[Cursor]:
        if isinstance(cursorclass, type) and issubclass(cursorclass, Cursor):
            return cursorclass
        for theirs, ours in PYMYSQL_CURSORS.items():
            if cursorclass is theirs:
                return ours
        raise NotSupportedError(
            0,
            f"cursor class {cursorclass!r}: use client.dbapi.Cursor, DictCursor, "
            "SSCursor or SSDictCursor (or pymysql's classes of those names)",
        )

    def begin(self) -> None:
        """Pin a transaction now rather than at the first statement."""
        self.check_open()
        if self._autocommit:
            raise ProgrammingError(0, "begin() needs autocommit off")
        tx = self._transaction()
        if not tx.pin:
            tx.begin()

    def commit(self) -> None:
        """Commit the open transaction and free its MySQL connection, if any."""
        self.check_open()
        self._end_xa("COMMIT", check=True)
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
        self.check_open()
        self._end_xa("ROLLBACK", check=True)
        self._end_transaction()

    def close(self) -> None:
        """Roll back an open transaction and make the connection unusable.

        Closing twice does nothing. The shared `client.Client` stays open for
        the process's other connections.
        """
        if self._closed:
            return
        try:
            self._end_xa()
            self._end_transaction()
        except Error:
            pass  # the broker rolls back a transaction whose client goes silent
        finally:
            self._closed = True

    # Running statements (what the cursors call) ------------------------------------

    def check_open(self) -> None:
        """Raise InterfaceError if the connection is closed."""
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
        if tx is None or not tx.pin or not tx.owned:
            return  # nothing open, or the parent's transaction (after fork): not ours
        try:
            tx.rollback(timeout=self.timeout)
        except Error as err:
            # A transaction the broker no longer holds was rolled back by MySQL.
            if lost is None and not _ends_transaction(err):
                raise

    @contextlib.contextmanager
    def _converters(self, codec: Any = None) -> Iterator[Any]:
        """Lend this connection's conv and use_unicode to the thread's codec."""
        if codec is None:
            codec = self._client.codec(timeout=self.timeout)
        if self._charset is not None:
            self._check_charset(codec)
        if self._conv is None:
            yield codec
            return
        saved = codec.decoders, codec.encoders, codec.use_unicode
        codec.decoders, codec.encoders, codec.use_unicode = self._conv
        try:
            yield codec
        finally:
            codec.decoders, codec.encoders, codec.use_unicode = saved

    def _own_converters(
        self, conv: dict | None = None, use_unicode: bool = True
    ) -> tuple[dict, dict, bool]:
        if self._conv is None:
            conv = pymysql.converters.conversions if conv is None else conv
            self._conv = (
                {k: v for k, v in conv.items() if type(k) is int},
                {k: v for k, v in conv.items() if type(k) is not int},
                bool(use_unicode),
            )
        return self._conv

    def _check_charset(self, codec: Any) -> None:
        pool = codec.charset
        if self._charset != pool and self._charset not in SUPERSETS.get(pool, ()):
            raise NotSupportedError(
                0,
                f"charset {self._charset!r}: the broker pool's connections use "
                f"{pool!r} (its dsn's charset=); connect with that",
            )
        self._charset = None  # checked once

    def render(self, query: str, args: Params) -> str:
        """Return the statement as sent: args rendered by pymysql's escaping."""
        if args is None:
            return query
        with self._converters() as codec:
            return codec.render(query, args).decode(codec.encoding)

    def count_rows(self, rowcount: int, matched: int | None) -> int:
        """Return an UPDATE's rowcount as this connection counts (FOUND_ROWS)."""
        return matched if self._found_rows and matched is not None else rowcount

    def open_stream(self, sql: str, chunk_rows: int) -> Stream:
        """Return a `client.Stream` of sql opened with this connection's conv."""
        stream = Stream(
            self._client,
            sql,
            None,
            chunk_rows=chunk_rows,
            timeout=self.timeout,
            conv=self._conv,
        )
        with self._converters():
            stream.open()
        return stream

    def _end_xa(self, how: str = "ROLLBACK", check: bool = False) -> None:
        xa, self._xa = self._xa, None
        if xa is not None:
            xa.finish(how, check)

    def _run_xa(self, statements: Sequence[tuple[str, Params]]) -> Result:
        xa = self._xa
        if xa is None:
            xa = XaTransaction(self._client, self.timeout, statements[0][0])
            self._xa = xa
        try:
            return xa.run(statements)
        finally:
            if xa.ended:
                self._xa = None

    def run(self, statements: Sequence[tuple[str, Params]]) -> Result:
        """Run statements in order on one connection; return the last Result."""
        self.check_open()
        if self._conv is not None or self._charset is not None:
            with self._converters():
                return self._run_plain(statements)
        return self._run_plain(statements)

    def _run_plain(self, statements: Sequence[tuple[str, Params]]) -> Result:
        if _LOAD_LOCAL.match(statements[-1][0]):
            raise NotSupportedError(
                0,
                "LOAD DATA LOCAL: the file would be read by the broker, not by "
                "this process; load from the server's side or with executemany",
            )
        if self._xa is not None or (self._tx is None and begins_xa(statements[0][0])):
            return self._run_xa(statements)
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

    def run_many(self, sql: str, seq_params: Iterable[Params]) -> Result:
        """Run sql once per parameter set, in the transaction unless autocommit."""
        self.check_open()
        with self._converters():
            return self._run_many_plain(sql, seq_params)

    def _run_many_plain(self, sql: str, seq_params: Iterable[Params]) -> Result:
        if self._xa is not None:
            return self._xa.executemany(sql, seq_params)
        if self._autocommit:
            return self._client.executemany(sql, seq_params, timeout=self.timeout)
        tx = self._transaction()
        try:
            return tx.executemany(sql, seq_params)
        except Error as err:
            if _ends_transaction(err):
                self._lost = err
            raise

    def may_stream(self, sql: str) -> bool:
        """Whether an SSCursor may stream sql rather than run it in the transaction."""
        if self._xa is not None:
            return False  # a stream's own connection would not see the XA's writes
        return self._autocommit or (
            not self.in_transaction and statement.plain_read(sql)
        )

    def __del__(self) -> None:
        tx = self._tx
        if tx is not None:
            try:
                tx.discard()
            except Exception:  # noqa: S110  the broker's idle timeout rolls back
                pass
