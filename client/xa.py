"""An XA transaction of a `client.dbapi` connection, on a session of its own.

``XA START`` must be the first statement of its MySQL connection's
transaction, so it cannot travel inside the BEGIN a DB-API transaction opens
with: it pins a session instead (no BEGIN), and every statement up to
``XA COMMIT`` / ``XA ROLLBACK`` runs there. A connection that ends with the XA
transaction still open finishes it (`XaTransaction.finish`): a prepared XA
transaction left on a connection the broker resets would stay prepared on the
server, holding its locks, and MariaDB 10.11 without a binary log refuses to
``XA COMMIT`` it from another connection (error 1031, measured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from client.errors import Error
from client.result import Result

if TYPE_CHECKING:
    from client.api import Client
    from client.settings import Params

_BEGINS = re.compile(
    r"\s*XA\s+(?:START|BEGIN)\s+(.*?)(?:\s+(?:JOIN|RESUME))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_STEP = re.compile(r"\s*XA\s+(END|PREPARE)\b", re.IGNORECASE)
_ENDS = re.compile(r"\s*XA\s+(COMMIT|ROLLBACK)\b", re.IGNORECASE)


def begins_xa(sql: str) -> bool:
    """Whether sql is ``XA START`` / ``XA BEGIN``."""
    return _BEGINS.match(sql) is not None


class XaTransaction:
    """One XA transaction: its session, its xid as written, and its state."""

    def __init__(self, client: Client, timeout: float, first_sql: str) -> None:
        begins = _BEGINS.match(first_sql)
        self.xid = begins.group(1) if begins else ""
        self.state = "active"  # "idle" after XA END, "prepared" after XA PREPARE
        self.ended = False  # XA COMMIT or ROLLBACK ran; the session is closed
        self._timeout = timeout
        self._session = client.session(timeout=timeout)
        self._session.open()

    def run(self, statements: Sequence[tuple[str, Params]]) -> Result:
        """Run statements in order on the session; close it after the XA's end."""
        for sql, params in statements:
            result = self._session.query(sql, params)
            step = _STEP.match(sql)
            if step:
                self.state = "idle" if step.group(1).upper() == "END" else "prepared"
            elif _ENDS.match(sql):
                self.ended = True
                self._session.close(timeout=self._timeout)
        return result

    def executemany(self, sql: str, seq_params: Iterable[Params]) -> Result:
        """Run sql once per parameter set on the session."""
        return self._session.executemany(sql, seq_params)

    def finish(self, how: str, check: bool) -> None:
        """COMMIT or ROLLBACK what is still open, then close the session.

        Args:
            how: "COMMIT" (``ONE PHASE`` before PREPARE) or "ROLLBACK".
            check: raise an error of the XA statements instead of ignoring it.
        """
        session = self._session
        if self.ended or not session.pin or not session.owned:
            return
        self.ended = True
        steps = [f"XA END {self.xid}"] if self.state == "active" else []
        if how == "COMMIT" and self.state != "prepared":
            steps.append(f"XA COMMIT {self.xid} ONE PHASE")
        else:
            steps.append(f"XA {how} {self.xid}")
        try:
            for sql in steps:
                session.query(sql)
        except Error:
            if check:
                raise
        finally:
            try:
                session.close(timeout=self._timeout)
            except Error:
                pass  # the broker frees a session whose client goes silent
