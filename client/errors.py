"""The PEP 249 exception tree, the broker's own conditions, and their wire form.

A database error carries exactly what pymysql reports for it (same class name,
``errno``, ``msg``) plus the ``sqlstate`` from the server's error packet, so
code written against pymysql catches the same classes here. Each class is also
a subclass of the pymysql class of its name (``client.IntegrityError`` is a
``pymysql.err.IntegrityError``, every error a ``pymysql.MySQLError``), so
handlers written for pymysql keep working; the PEP 249 tree among our own
classes is unchanged. The broker's own conditions subclass `OperationalError`,
so existing ``except`` clauses catch them.
"""

from __future__ import annotations

import pymysql


class Error(pymysql.err.Error):
    """Base of every error the client raises."""

    def __init__(
        self, errno: int = 0, msg: str = "", sqlstate: str | None = None
    ) -> None:
        super().__init__(errno, msg)
        self.errno = errno
        self.msg = msg
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        return f"({self.errno}, {self.msg!r})" if self.errno else self.msg


class Warning(pymysql.err.Warning):  # PEP 249 names it so, shadowing the builtin
    """Important warnings such as data truncation (PEP 249)."""


class InterfaceError(Error, pymysql.err.InterfaceError):
    """The request could not be accepted: bad frame, misuse of the client."""


class DatabaseError(Error, pymysql.err.DatabaseError):
    """An error reported by the database."""


class DataError(DatabaseError, pymysql.err.DataError):
    """A problem with processed data: division by zero, value out of range."""


class OperationalError(DatabaseError, pymysql.err.OperationalError):
    """The database or the path to it failed; not the caller's statement."""


class IntegrityError(DatabaseError, pymysql.err.IntegrityError):
    """A constraint failed: duplicate key, foreign key."""


class InternalError(DatabaseError, pymysql.err.InternalError):
    """The database or the broker is in an unexpected state."""


class ProgrammingError(DatabaseError, pymysql.err.ProgrammingError):
    """The statement is wrong: syntax, missing table, wrong parameters, no pool."""


class NotSupportedError(DatabaseError, pymysql.err.NotSupportedError):
    """A method or database API was used that is not supported."""


class BrokerUnavailable(OperationalError):
    """No broker answered in time, or the broker is shutting down."""


class PoolTimeout(OperationalError):
    """No connection of the pool came free within its queue_timeout."""


class QueryTimeout(OperationalError):
    """The statement's deadline passed; it was cancelled or never sent."""


class OutcomeUnknown(OperationalError):
    """The connection died after a write was sent: it may or may not have run."""


class ReplyLost(OutcomeUnknown, BrokerUnavailable):
    """A write reached the broker and no reply came: it may or may not have run.

    Both classes at once: code that catches `BrokerUnavailable` keeps working,
    and code that must not run a write twice can catch `OutcomeUnknown`.
    """


_CLASSES: dict[str, type[Error]] = {
    cls.__name__: cls
    for cls in (
        Error,
        InterfaceError,
        DatabaseError,
        DataError,
        OperationalError,
        IntegrityError,
        InternalError,
        ProgrammingError,
        NotSupportedError,
        BrokerUnavailable,
        PoolTimeout,
        QueryTimeout,
        OutcomeUnknown,
        ReplyLost,
    )
}

# Error codes of conditions the broker reports itself (client-side range, like CR_*).
ER_BROKER_UNAVAILABLE = 2900
ER_POOL_TIMEOUT = 2901
ER_QUERY_TIMEOUT = 2902
ER_OUTCOME_UNKNOWN = 2903
ER_BAD_REQUEST = 2904
ER_UNKNOWN_POOL = 2905
ER_BAD_PIN = 2906
ER_WRONG_OWNER = 2907
ER_TOO_LARGE = 2908
ER_TOO_MANY_INFLIGHT = 2909
ER_TOO_MANY_PINS = 2910  # a client holds max_pins_per_client pins of the pool
CR_SERVER_LOST = 2013  # pymysql's "Lost connection to MySQL server during query"


def to_wire(err: Error) -> list:
    """Return the wire form of an error: [class name, errno, msg, sqlstate]."""
    return [type(err).__name__, err.errno, err.msg, err.sqlstate]


def from_wire(body: object) -> Error:
    """Rebuild the error a reply carries; an unknown class becomes InternalError."""
    if not isinstance(body, list | tuple) or len(body) != 4:
        return InternalError(0, f"malformed error reply: {body!r}")
    name, errno, msg, sqlstate = body
    cls = _CLASSES.get(name, InternalError) if isinstance(name, str) else InternalError
    return cls(
        errno if isinstance(errno, int) else 0,
        str(msg),
        sqlstate if isinstance(sqlstate, str) else None,
    )


def from_pymysql(err: pymysql.MySQLError) -> Error:
    """Return the client error of the same class and values as a pymysql error."""
    if isinstance(err, Error):
        return err  # ours already (our classes are pymysql's too)
    cls = _CLASSES.get(type(err).__name__, InternalError)
    args = err.args if len(err.args) >= 2 else (0, *err.args, "")
    errno, msg = args[0], args[1]
    sqlstate = getattr(err, "sqlstate", None)  # pymysql >= 1.2 keeps it
    return cls(errno if isinstance(errno, int) else 0, str(msg), sqlstate)
