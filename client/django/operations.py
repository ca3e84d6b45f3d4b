"""Django's MySQL operations, plus the TIME conversion Django's ``conv`` gave."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from django.db.backends.mysql import operations as mysql


class DatabaseOperations(mysql.DatabaseOperations):
    """Django's MySQL operations; TimeField values arrive as ``datetime.time``.

    Django's MySQL backend connects with a ``conv`` mapping that decodes TIME
    columns to ``datetime.time``. The broker's client decodes with pymysql's
    converters, which give ``datetime.timedelta`` (as pymysql does), so the
    ORM converts TimeField values here. Raw cursors see pymysql's timedelta.
    """

    def get_db_converters(self, expression: Any) -> list[Callable]:
        """Return Django's converters, with the TIME one for a TimeField."""
        converters = super().get_db_converters(expression)
        if expression.output_field.get_internal_type() == "TimeField":
            converters.append(self.convert_timefield_value)
        return converters

    def convert_timefield_value(
        self, value: Any, expression: Any, connection: Any
    ) -> Any:
        """Turn a TIME value within one day into a ``datetime.time``."""
        if isinstance(value, datetime.timedelta) and (
            datetime.timedelta(0) <= value < datetime.timedelta(days=1)
        ):
            return (datetime.datetime.min + value).time()
        return value
