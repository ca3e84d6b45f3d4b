"""Result: the rows and counts of one statement, as a pymysql cursor gives them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from client.wire.protocol import SERVED_BY_PRIMARY

# MySQL's info for an UPDATE, sent whatever the connection's CLIENT_FOUND_ROWS.
_MATCHED = re.compile(r"Rows matched: (\d+)")


def matched_rows(info: str) -> int | None:
    """Return the rows an UPDATE matched, from its info text; None for others."""
    found = _MATCHED.search(info) if info else None
    return int(found.group(1)) if found else None


class Result:
    """Rows, column names and counts of one statement.

    ``rows`` hold values typed exactly as pymysql returns them. ``rowcount`` is
    the affected rows of a write or the number of rows of a read; for an
    UPDATE the rows it *changed* (pymysql's default, without
    ``CLIENT_FOUND_ROWS``), and ``matched`` the rows its WHERE matched, from
    the info MySQL sends with every UPDATE ("Rows matched: 3  Changed: 1
    Warnings: 0", also in ``info``). ``lastrowid`` is the AUTO_INCREMENT id of
    an INSERT, else what pymysql gives (0 or None). A reply of several result
    sets (a ``CALL``) is a chain: ``next_result`` is the following one, as
    pymysql's ``cursor.nextset()`` reads them, or None after the last.
    ``served_by`` is ``"primary"``, or ``"replica HOST:PORT"`` for a
    ``replica=True`` read a replica ran.
    """

    __slots__ = (
        "columns",
        "description",
        "info",
        "lastrowid",
        "matched",
        "next_result",
        "rowcount",
        "rows",
        "served_by",
        "table_names",
        "warnings",
    )

    def __init__(
        self,
        rows: list[tuple],
        description: tuple,
        rowcount: int,
        lastrowid: int | None,
        warnings: int = 0,
        info: str = "",
        next_result: Result | None = None,
        table_names: tuple[str, ...] = (),
        served_by: str = SERVED_BY_PRIMARY,
    ) -> None:
        self.rows = rows
        self.description = description  # PEP 249 7-tuples, as pymysql builds them
        self.columns: tuple[str, ...] = tuple(d[0] for d in description)
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.warnings = warnings
        self.served_by = served_by
        self.info = info
        self.matched = matched_rows(info)
        self.next_result = next_result
        self.table_names = table_names  # of each column, when two share a name

    @classmethod
    def combine(cls, results: Sequence[Result]) -> Result:
        """Return one Result for statements run in turn (executemany).

        ``rowcount`` and ``matched`` are totals, as pymysql's executemany
        returns; everything else is the last statement's.
        """
        last = results[-1]
        total = cls(
            last.rows,
            last.description,
            sum(r.rowcount for r in results),
            last.lastrowid,
            last.warnings,
            last.info,
        )
        if all(r.matched is not None for r in results):
            total.matched = sum(r.matched for r in results)  # type: ignore[misc]
        return total

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
