"""``manage.py test``: create and destroy test_NAME through the broker's pools.

A broker pool's dsn names one database, so the test database needs a pool of
its own, named by ``OPTIONS["test_pool"]``, whose dsn names test_NAME and whose
``min_size`` is 0 (the database does not exist until the test run creates it).
``CREATE DATABASE`` and ``DROP DATABASE`` run through the application's pool
(``OPTIONS["pool"]``), whose account therefore needs CREATE and DROP on
test_NAME. While the tests run, ``OPTIONS["pool"]`` names the test pool, so
every connection of the alias (other threads' too) uses it.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.creation import BaseDatabaseCreation
from django.db.backends.mysql import creation as mysql

from client.wire import protocol


class DatabaseCreation(mysql.DatabaseCreation):
    """Django's MySQL test database creation, switching to the test pool."""

    _app_pool: str | None = None  # OPTIONS["pool"] while the test pool stands in

    def _create_test_db(
        self, verbosity: int, autoclobber: bool, keepdb: bool = False
    ) -> str:
        options = self.connection.settings_dict["OPTIONS"]
        test_pool = options.get("test_pool")
        if not test_pool:
            name = self._get_test_db_name()
            raise ImproperlyConfigured(
                f"client.django: running tests needs a broker pool for the test "
                f"database {name!r}. Add to the broker's config [pools.test] with "
                f'dsn = "mysql://USER@HOST/{name}" and min_size = 0, and '
                f'"test_pool": "test" to DATABASES[{self.connection.alias!r}]'
                "['OPTIONS']; the account of the application's pool needs "
                f"CREATE and DROP on {name}"
            )
        test_name = super()._create_test_db(verbosity, autoclobber, keepdb)
        self._app_pool = options.get("pool", protocol.DEFAULT_POOL)
        options["pool"] = test_pool
        return test_name

    def destroy_test_db(
        self,
        old_database_name: str | None = None,
        verbosity: int = 1,
        keepdb: bool = False,
        suffix: str | None = None,
    ) -> None:
        """Switch back to the application's pool, then drop test_NAME through it."""
        if self._app_pool is not None and suffix is None:
            self.connection.close()
            self.connection.settings_dict["OPTIONS"]["pool"] = self._app_pool
            self._app_pool = None
        super().destroy_test_db(old_database_name, verbosity, keepdb, suffix)

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        # Django's MySQL clone pipes mysqldump into mysql; see features.
        BaseDatabaseCreation._clone_test_db(self, suffix, verbosity, keepdb)
