"""Result: the rows and counts of one statement, as a pymysql cursor gives them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from client.protocol import SERVED_BY_PRIMARY


class Result:
    """Rows, column names and counts of one statement.

    ``rows`` hold values typed exactly as pymysql returns them. ``rowcount`` is
    the affected rows of a write or the number of rows of a read; ``lastrowid``
    the AUTO_INCREMENT id of an INSERT, else what pymysql gives (0 or None).
    ``served_by`` is ``"primary"``, or ``"replica HOST:PORT"`` for a
    ``replica=True`` read a replica ran.
    """

    __slots__ = (
        "columns",
        "description",
        "lastrowid",
        "rowcount",
        "rows",
        "served_by",
        "warnings",
    )

    def __init__(
        self,
        rows: list[tuple],
        description: tuple,
        rowcount: int,
        lastrowid: int | None,
        warnings: int = 0,
        served_by: str = SERVED_BY_PRIMARY,
    ) -> None:
        self.rows = rows
        self.description = description  # PEP 249 7-tuples, as pymysql builds them
        self.columns: tuple[str, ...] = tuple(d[0] for d in description)
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.warnings = warnings
        self.served_by = served_by

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple:
        return self.rows[index]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return (
            f"<Result columns={self.columns!r} rows={len(self.rows)} "
            f"rowcount={self.rowcount} lastrowid={self.lastrowid}>"
        )

    def scalar(self) -> Any:
        """Return the first column of the first row, or None when there is no row."""
        return self.rows[0][0] if self.rows and self.rows[0] else None

    def dicts(self) -> list[dict[str, Any]]:
        """Return the rows as {column: value} dicts."""
        columns = self.columns
        return [dict(zip(columns, row, strict=False)) for row in self.rows]
