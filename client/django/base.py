"""The database wrapper of ``ENGINE: "client.django"``: Django's MySQL over the broker.

Settings a project writes::

    DATABASES = {
        "default": {
            "ENGINE": "client.django",
            "NAME": "appdb",  # informational: the pool's dsn names the database
            "OPTIONS": {
                "endpoint": "ipc:///run/broker/broker.sock",  # default $BROKER_ENDPOINT
                "pool": "default",       # the broker pool statements run on
                "timeout": 30,           # seconds per statement
                "test_pool": "test",     # manage.py test: the pool of test_NAME
            },
        }
    }

HOST, PORT, USER and PASSWORD are the broker's business (the pool's ``dsn``
and ``password_file``), so setting them is refused. Everything above the
connection is Django's ``django.db.backends.mysql``: that module imports
``MySQLdb``, so when mysqlclient is not installed pymysql stands in for it
(`client.django.mysqldb`, as ``pymysql.install_as_MySQLdb()``), which is how
that backend already runs on pymysql; the connections are `client.dbapi` ones.

What a Django connection holds: nothing while idle (``connect()`` opens no
socket and no MySQL connection). Outside ``atomic()`` each statement runs on
any free MySQL connection; ``atomic()`` turns autocommit off, so its first
statement pins one MySQL connection, savepoints run on it, and the pin ends
with the block's commit or rollback. ``CONN_MAX_AGE`` is therefore moot (a
Django connection costs no handshake; ``0``, the default, is right), and
``CONN_HEALTH_CHECKS`` pings the broker, not MySQL (the broker checks its own
connections). Session state set outside ``atomic()`` (``SET ...``) lasts one
statement; ``isolation_level`` (default ``"read committed"``, as Django's
MySQL backend) applies to each ``atomic()`` transaction as it begins.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError
from django.db.backends.mysql import base as mysql

from client import dbapi
from client.django.client import DatabaseClient
from client.django.creation import DatabaseCreation
from client.django.features import DatabaseFeatures
from client.django.operations import DatabaseOperations
from client.django.schema import DatabaseSchemaEditor
from client.wire import protocol

OPTIONS = frozenset(
    {"endpoint", "pool", "test_pool", "timeout", "name", "isolation_level"}
)
_REFUSED = ("HOST", "PORT", "USER", "PASSWORD")

# Keyword arguments this client.dbapi.connect() does not take are left out rather
# than failing every connection (client_flag came later than the rest).
_CONNECT = inspect.signature(dbapi.connect).parameters
_CONNECT_TAKES_ALL = any(p.kind is p.VAR_KEYWORD for p in _CONNECT.values())


class CursorWrapper(mysql.CursorWrapper):
    """Django's MySQL cursor wrapper, catching `client.dbapi`'s error classes.

    Django's wrapper re-raises some errors MySQL files under OperationalError
    (CHECK constraint failed, ...) as IntegrityError, but catches the class of
    the MySQLdb module it imported, which need not be ours.
    """

    def execute(self, query: str, args: Any = None) -> int:
        """Run one statement (``args=None``: no interpolation)."""
        try:
            return self.cursor.execute(query, args)
        except dbapi.OperationalError as err:
            if err.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*err.args) from err
            raise

    def executemany(self, query: str, args: Any) -> int:
        """Run one statement per parameter set."""
        try:
            return self.cursor.executemany(query, args)
        except dbapi.OperationalError as err:
            if err.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*err.args) from err
            raise

    def fetchmany(self, size: int | None = None) -> Any:
        """Return the next rows; no more rows is ``()``, as MySQLdb and pymysql say.

        Django's MySQL features declare ``empty_fetchmany_value = ()`` and stop
        reading at exactly that value; `client.dbapi` returns a list.
        """
        return self.cursor.fetchmany(size) or ()


class DatabaseWrapper(mysql.DatabaseWrapper):
    """Django's MySQL backend whose connections are `client.dbapi` connections."""

    Database = dbapi
    SchemaEditorClass = DatabaseSchemaEditor
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures
    ops_class = DatabaseOperations

    def get_connection_params(self) -> dict[str, Any]:
        """Return `client.dbapi.connect` arguments from OPTIONS.

        Raises:
            ImproperlyConfigured: for HOST, PORT, USER or PASSWORD set, an
                unknown OPTIONS key or isolation level.
        """
        settings_dict = self.settings_dict
        for key in _REFUSED:
            if settings_dict.get(key):
                raise ImproperlyConfigured(
                    f"client.django: DATABASES[{self.alias!r}][{key!r}] is set, but "
                    "the broker's pool decides where to connect and as whom (its "
                    f"dsn and password_file); remove {key}"
                )
        options = settings_dict["OPTIONS"]
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"client.django: unknown key(s) {', '.join(map(repr, unknown))} in "
                f"DATABASES[{self.alias!r}]['OPTIONS']; known: "
                f"{', '.join(sorted(OPTIONS))}"
            )
        # Django's own params: validates isolation_level, sets self.isolation_level
        # and asks for CLIENT.FOUND_ROWS (UPDATE counts matched rows).
        django_params = super().get_connection_params()
        params: dict[str, Any] = {
            "endpoint": options.get("endpoint"),
            "pool": options.get("pool", protocol.DEFAULT_POOL),
            "name": options.get("name"),
            "client_flag": django_params["client_flag"],
        }
        if "timeout" in options:
            params["timeout"] = options["timeout"]
        if self.isolation_level:
            params["isolation_level"] = self.isolation_level.upper()
        if _CONNECT_TAKES_ALL:
            return params
        return {key: value for key, value in params.items() if key in _CONNECT}

    def get_new_connection(self, conn_params: dict[str, Any]) -> dbapi.Connection:
        """Return a `client.dbapi` connection; nothing goes on the wire yet."""
        return dbapi.connect(**conn_params)

    def init_connection_state(self) -> None:
        """Check the server version; the per-session SETs are not sent.

        Django's MySQL backend sets the isolation level and SQL_AUTO_IS_NULL on
        its session. A broker connection has no session between statements: the
        isolation level goes with each transaction instead, and SQL_AUTO_IS_NULL
        must be off on the pool's connections.

        Raises:
            ImproperlyConfigured: when the pool's connections have
                SQL_AUTO_IS_NULL on.
        """
        mysql.BaseDatabaseWrapper.init_connection_state(self)
        if self.features.is_sql_auto_is_null_enabled:
            pool = self.settings_dict["OPTIONS"].get("pool", protocol.DEFAULT_POOL)
            raise ImproperlyConfigured(
                f"client.django: the connections of pool {pool!r} have "
                "sql_auto_is_null on, which Django's queries for NULL cannot work "
                f'with; add init_sql = ["SET SESSION sql_auto_is_null = 0"] to '
                f"[pools.{pool}] in the broker's config"
            )

    def create_cursor(self, name: str | None = None) -> CursorWrapper:
        """Return a buffered cursor in Django's MySQL wrapper."""
        return CursorWrapper(self.connection.cursor())

    def _set_autocommit(self, autocommit: bool) -> None:
        with self.wrap_database_errors:
            mode = self.connection.autocommit
            if callable(mode):
                mode(autocommit)  # pymysql's spelling, as client.dbapi has it
            else:
                self.connection.autocommit = autocommit

    def disable_constraint_checking(self) -> bool:
        """Turn foreign key checks off inside a transaction; outside, do nothing.

        Outside a transaction ``SET foreign_key_checks`` would last one
        statement, so report (False) that checks stay on.
        """
        if self.get_autocommit():
            return False
        return super().disable_constraint_checking()

    def is_usable(self) -> bool:
        """Whether the broker answers a ping (``CONN_HEALTH_CHECKS``)."""
        try:
            self.connection.ping()
        except dbapi.Error:
            return False
        return True
