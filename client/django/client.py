"""``manage.py dbshell``: refused, with what to run instead."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db.backends.base.client import BaseDatabaseClient


class DatabaseClient(BaseDatabaseClient):
    """No shell: the broker speaks ZeroMQ, not the MySQL protocol a shell needs."""

    executable_name = "mysql"

    def runshell(self, parameters: list[str]) -> None:
        """Refuse, naming the pool so the user can reach its server directly."""
        options = self.connection.settings_dict["OPTIONS"]
        raise CommandError(
            "client.django: dbshell cannot run through the broker, which does not "
            "speak the MySQL protocol. Connect the mysql client to the server in "
            f"the dsn of the broker's [pools.{options.get('pool', 'default')}] "
            "instead, e.g. `mysql -h HOST -u USER DATABASE`."
        )
