"""The mysql-broker client: query MySQL through the host's broker, fork-safely.

Application processes import this package and hold only ZeroMQ sockets, never a
database socket. See README.md for the API; `client.wire` for the wire format.
"""

from client.api import (
    Client,
    default_client,
    executemany,
    query,
    session,
    stream,
    transaction,
)
from client.errors import (
    BrokerUnavailable,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    OutcomeUnknown,
    PoolTimeout,
    ProgrammingError,
    QueryTimeout,
    ReplyLost,
    Warning,
)
from client.pinned import Session, Stream, Transaction
from client.result import Result
from client.wire.protocol import DEFAULT_ENDPOINT

__all__ = [
    "DEFAULT_ENDPOINT",
    "BrokerUnavailable",
    "Client",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "OutcomeUnknown",
    "PoolTimeout",
    "ProgrammingError",
    "QueryTimeout",
    "ReplyLost",
    "Result",
    "Session",
    "Stream",
    "Transaction",
    "Warning",
    "default_client",
    "executemany",
    "query",
    "session",
    "stream",
    "transaction",
]
