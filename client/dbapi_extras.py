"""What pymysql's connection has beyond PEP 249, for `client.dbapi.Connection`.

Code moved from pymysql calls these (``conn.escape``, ``insert_id()``,
``ping()``, Django's ``character_set_name()``, ...); where a method means
something only for a connection that owns one MySQL connection (``select_db``,
``thread_id``, ``kill``) it raises NotSupportedError saying what to do instead.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from client.errors import NotSupportedError
from client.wire import protocol

if TYPE_CHECKING:
    from client.api import Client
    from client.packets import Codec
    from client.result import Result


class PymysqlExtensions:
    """pymysql's extensions, mixed into `client.dbapi.Connection`."""

    _client: Client
    timeout: float
    last_result: Result | None

    if TYPE_CHECKING:  # provided by client.dbapi.Connection

        def check_open(self) -> None: ...  # noqa: D102

        def count_rows(self, rowcount: int, matched: int | None) -> int: ...  # noqa: D102

        def _converters(self) -> AbstractContextManager[Codec]: ...

        def _own_converters(self) -> tuple[dict, dict, bool]: ...

    def ping(self, reconnect: bool = False) -> float:
        """Check the broker answers; return the round trip in seconds.

        Args:
            reconnect: accepted for pymysql compatibility; the broker keeps its
                MySQL connections alive, so there is nothing to reconnect.

        Raises:
            BrokerUnavailable: when the broker does not answer in time.
        """
        self.check_open()
        return self._client.ping(timeout=self.timeout)

    def character_set_name(self) -> str:
        """Return the pool's connection charset, e.g. ``"utf8mb4"``."""
        self.check_open()
        return self._client.pool_info(timeout=self.timeout)[protocol.INFO_CHARSET]

    def get_server_info(self) -> str:
        """Return the MySQL server version string, as pymysql does."""
        self.check_open()
        info = self._client.pool_info(timeout=self.timeout)
        return info[protocol.INFO_SERVER_VERSION]

    def escape(self, value: Any, mapping: dict | None = None) -> str:
        """Return value as a SQL literal, escaped for the pool's charset and mode."""
        self.check_open()
        with self._converters() as codec:
            return codec.escape(value, mapping)

    def literal(self, value: Any) -> str:
        """Return value as a SQL literal (pymysql's name for escape)."""
        return self.escape(value)

    @property
    def encoding(self) -> str:
        """The Python codec of the pool's charset, e.g. ``"utf8"``, as pymysql's."""
        self.check_open()
        return self._client.codec(timeout=self.timeout).encoding

    @property
    def encoders(self) -> dict:
        """This connection's encoders by Python type, as pymysql's; edits apply."""
        return self._own_converters()[1]

    @property
    def decoders(self) -> dict:
        """This connection's decoders by field type, as pymysql's; edits apply."""
        return self._own_converters()[0]

    def insert_id(self) -> int:
        """Return the last statement's AUTO_INCREMENT id, or 0, as pymysql does."""
        last = self.last_result
        return (last.lastrowid or 0) if last is not None else 0

    def affected_rows(self) -> int:
        """Return the last statement's affected (or, with FOUND_ROWS, matched) rows."""
        last = self.last_result
        return self.count_rows(last.rowcount, last.matched) if last is not None else 0

    def select_db(self, db: str) -> None:
        """Raise NotSupportedError: the database is the broker pool's."""
        raise NotSupportedError(
            0,
            "select_db(): the broker pool's dsn names the database and a DB-API "
            "connection has no MySQL connection of its own; use a pool per "
            "database, or qualify table names",
        )

    def thread_id(self) -> int:
        """Raise NotSupportedError: statements run on any of the pool's connections."""
        raise NotSupportedError(
            0,
            "thread_id(): a DB-API connection's statements run on whichever MySQL "
            "connection the broker picks; SELECT CONNECTION_ID() inside a "
            "transaction gives the one it holds",
        )

    def kill(self, thread_id: int) -> None:
        """Raise NotSupportedError: the broker cancels statements (timeout=) itself."""
        raise NotSupportedError(
            0,
            "kill(): the broker cancels a statement past its timeout with KILL "
            "QUERY itself; run KILL through a statement if you must",
        )
