"""Django's MySQL schema editor, quoting literals through the broker's codec."""

from __future__ import annotations

from typing import Any

from django.db.backends.mysql import schema as mysql


class DatabaseSchemaEditor(mysql.DatabaseSchemaEditor):
    """Django's MySQL schema editor (used by migrations)."""

    def quote_value(self, value: Any) -> str:
        """Return value as a SQL literal for the pool's charset and SQL mode.

        Django's MySQL editor passes the driver connection's ``encoders`` to
        ``escape()``; `client.dbapi` escapes with the pool's own codec instead.
        """
        self.connection.ensure_connection()
        return self.connection.connection.escape(value)
