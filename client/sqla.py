"""The SQLAlchemy dialect ``mysql+broker://``: SQLAlchemy's MySQL over client.dbapi.

Only the driver layer is ours; SQL compilation, types, reflection and the
MySQL/MariaDB differences are SQLAlchemy's own `MySQLDialect`. Install with
``pip install 'mysql-broker[sqlalchemy]'``; the ``sqlalchemy.dialects`` entry
point makes the URL work without importing this module::

    engine = create_engine("mysql+broker:///?endpoint=ipc:///run/broker/broker.sock")

URL query keys: ``endpoint``, ``pool``, ``timeout`` (seconds per statement),
``name`` (shown by ``broker status``). Host, user, password and database are
the broker's business (its pool's DSN), so a URL naming them is refused.

The broker is the pool: the dialect's default pool is ``NullPool``, and a
checkout costs nothing on the wire, because a `client.dbapi.Connection` pins a
MySQL connection only from its first statement to its commit or rollback.
Pre-ping (``pool_pre_ping``) pings the broker; the broker checks its own MySQL
connections. Isolation levels (``create_engine(isolation_level=...)`` or
``execution_options``) are applied to each transaction as it begins, since a
broker connection keeps no session state between transactions; ``AUTOCOMMIT``
runs each statement on any free connection. ``stream_results=True`` uses
`client.dbapi.SSCursor`.

Rowcounts are ``mysql+pymysql``'s: the dialect connects with
``client_flag=CLIENT.FOUND_ROWS``, so an UPDATE's rowcount is the rows it
matched (from the info MySQL sends with every UPDATE) and the ORM's checks
(``version_id_col``, an UPDATE or DELETE of a row gone meanwhile) raise
``StaleDataError`` as they do there. Two-phase transactions
(``begin_twophase()``) run on a session pinned without BEGIN (see
`client.dbapi`). ``mariadb+broker://`` is the same driver under SQLAlchemy's
MariaDB dialect. Session state (``SET @v``, temporary tables) lasts until the
transaction ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pymysql.constants import CLIENT
from sqlalchemy import exc, pool
from sqlalchemy.dialects.mysql.base import MySQLDialect, MySQLExecutionContext
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.engine.interfaces import DBAPICursor, IsolationLevel
from sqlalchemy.engine.url import URL

from client import dbapi, errors

_URL_KEYS = {"endpoint": str, "pool": str, "timeout": float, "name": str}


class MySQLExecutionContext_broker(MySQLExecutionContext):
    """Execution context: ``stream_results`` gets a `client.dbapi.SSCursor`."""

    def create_server_side_cursor(self) -> DBAPICursor:
        """Return an unbuffered cursor on this execution's DB-API connection."""
        return self._dbapi_connection.cursor(dbapi.SSCursor)


class MySQLDialect_broker(MySQLDialect):
    """``mysql+broker://``: statements go through the host's broker."""

    driver = "broker"
    supports_statement_cache = True
    supports_unicode_statements = True
    supports_native_decimal = True
    supports_server_side_cursors = True
    supports_sane_rowcount = True  # matched rows: client_flag=CLIENT.FOUND_ROWS
    supports_sane_multi_rowcount = True  # executemany totals them
    default_paramstyle = "pyformat"
    poolclass = pool.NullPool  # the broker is the pool
    execution_ctx_cls = MySQLExecutionContext_broker

    @classmethod
    def load_provisioning(cls) -> None:
        """Load SQLAlchemy's MySQL testing hooks, for its dialect compliance suite.

        SQLAlchemy looks for a ``provision`` module beside the dialect's; the
        broker needs none of its own, MySQL's are right.
        """
        import sqlalchemy.dialects.mysql.provision  # noqa: F401

    @classmethod
    def import_dbapi(cls) -> Any:
        """Return the DB-API module: `client.dbapi`."""
        return dbapi

    def create_connect_args(self, url: URL) -> tuple[list, dict[str, Any]]:
        """Turn the URL's query keys into `client.dbapi.connect` arguments.

        Raises:
            sqlalchemy.exc.ArgumentError: for a host, user, password or
                database in the URL, or an unknown or malformed query key.
        """
        named = [
            part
            for part, value in (
                ("user", url.username),
                ("password", url.password),
                ("host", url.host),
                ("port", url.port),
                ("database", url.database),
            )
            if value
        ]
        if named:
            raise exc.ArgumentError(
                f"mysql+broker:// URLs name no {', '.join(named)}: the broker's pool "
                "has the DSN; use ?endpoint=...&pool=..."
            )
        opts: dict[str, Any] = {"client_flag": CLIENT.FOUND_ROWS}
        for key, value in url.query.items():
            kind = _URL_KEYS.get(key)
            if kind is None:
                raise exc.ArgumentError(
                    f"unknown mysql+broker:// URL key {key!r}; "
                    f"known: {', '.join(sorted(_URL_KEYS))}"
                )
            text = value[-1] if isinstance(value, tuple) else value
            try:
                opts[key] = kind(text)
            except ValueError:
                raise exc.ArgumentError(
                    f"URL key {key}: not a number: {text!r}"
                ) from None
        return [], opts

    def do_ping(self, dbapi_connection: Any) -> bool:
        """Ping the broker (it keeps its MySQL connections healthy itself)."""
        dbapi_connection.ping()
        return True

    def do_executemany(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any = None,
    ) -> None:
        """Run executemany, keeping its total rowcount, as the mysqldb dialect does."""
        rowcount = cursor.executemany(statement, parameters)
        if context is not None:
            context._rowcount = rowcount

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        """Whether the error means the connection's transaction or broker is gone."""
        if super().is_disconnect(e, connection, cursor):
            return True
        if isinstance(e, errors.BrokerUnavailable | errors.OutcomeUnknown):
            return True
        return isinstance(e, errors.Error) and (
            e.errno == errors.ER_BAD_PIN or str(e) == "connection is closed"
        )

    def _extract_error_code(self, exception: Any) -> int | None:
        return getattr(exception, "errno", None)

    def _detect_charset(self, connection: Any) -> str:
        return connection.connection.character_set_name()

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        # The broker reports its connections' server version: no pin needed.
        version = connection.connection.dbapi_connection.get_server_info()
        if not version:
            return super()._get_server_version_info(connection)
        return self._parse_server_version(version)

    def get_isolation_level_values(
        self, dbapi_connection: Any
    ) -> Sequence[IsolationLevel]:
        """Return the levels ``isolation_level`` accepts, AUTOCOMMIT included."""
        return (
            "SERIALIZABLE",
            "READ UNCOMMITTED",
            "READ COMMITTED",
            "REPEATABLE READ",
            "AUTOCOMMIT",
        )

    def set_isolation_level(self, dbapi_connection: Any, level: str) -> None:
        """Apply level to the connection's next transactions (or autocommit)."""
        if level == "AUTOCOMMIT":
            dbapi_connection.autocommit = True
            return
        dbapi_connection.autocommit = False
        dbapi_connection.isolation_level = level

    def get_isolation_level(self, dbapi_connection: Any) -> IsolationLevel:
        """Return the isolation the connection's transactions get."""
        level = dbapi_connection.isolation_level
        if level is not None:
            return cast(IsolationLevel, level)
        return super().get_isolation_level(dbapi_connection)

    def detect_autocommit_setting(self, dbapi_connection: Any) -> bool:
        """Return whether the DB-API connection is in autocommit mode."""
        return bool(dbapi_connection.autocommit)


class MariaDBDialect_broker(MariaDBDialect, MySQLDialect_broker):
    """``mariadb+broker://``: SQLAlchemy's MariaDB dialect through the broker."""

    supports_statement_cache = True


dialect = MySQLDialect_broker
mariadb_dialect = MariaDBDialect_broker
