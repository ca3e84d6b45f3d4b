"""What a statement may do, judged from its first words: read, write, session state.

One classifier for both sides, on bytes (the broker sees rendered SQL) or str
(the DB-API adapter sees the caller's). The decisions that hang on it: a
statement lost with its connection is reported as `OperationalError` when it
only reads and as `OutcomeUnknown` when it may have written (`is_read`,
`may_write`); a connection goes back to the pool unreset only after statements
that cannot leave session state behind (`leaves_session_clean`: SET, user
variables, temporary tables, locks, USE, PREPARE, ... earn a reset); a
``replica=True`` read may go to a replica (`replica_safe`: a plain read that
locks, assigns and writes nothing); and an SSCursor may stream a read that
does not lock (`plain_read`). Unknown or oddly written statements count as
writes that dirty the session: the safe side.
"""

from __future__ import annotations

import re
from typing import Any, AnyStr

from client.wire.protocol import Op

# Statements that only read: one lost with its reply changed nothing.
READS = frozenset(
    {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "VALUES", "TABLE"}
)
# Statements that leave nothing in the session unless they mention a variable
# or a lock: plain reads and plain DML.
CLEAN = READS | frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "DO"})


class _Pattern:
    """One regular expression compiled for bytes and for str."""

    __slots__ = ("_bytes", "_str")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._str = re.compile(pattern, flags)
        self._bytes = re.compile(pattern.encode(), flags)

    def of(self, sql: AnyStr) -> re.Pattern[AnyStr]:
        return self._bytes if type(sql) is bytes else self._str  # type: ignore[return-value]


_FIRST_WORD = _Pattern(r"[\s(]*([A-Za-z]+)")
_READ = _Pattern(  # as first_word(sql) in READS, in one C-level match
    r"[\s(]*(?:" + "|".join(sorted(READS)) + r")(?![A-Za-z])", re.IGNORECASE
)
# One C-level match: a clean first keyword, and no stateful mark anywhere after.
_CLEAN_STATEMENT = _Pattern(
    r"[\s(]*(?:" + "|".join(sorted(CLEAN)) + r")\b"
    r"(?!.*(?:@|get_lock|last_insert_id\s*\())",
    re.IGNORECASE | re.DOTALL,
)
# Reads that still need the primary: locking reads and named locks (a replica
# has locks of its own), SELECT ... INTO, sequences, and a WITH that fronts a
# write. Matching inside a string literal only sends a read to the primary:
# the safe side. Session state (a user variable set by a read) is no reason:
# the connection is reset afterwards wherever it ran.
_NOT_FOR_REPLICA = _Pattern(
    r"\b(?:FOR\s+UPDATE|LOCK\s+IN\s+SHARE\s+MODE|INTO|UPDATE|DELETE|INSERT"
    r"|REPLACE|NEXTVAL|SETVAL|LASTVAL|GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS"
    r"|IS_USED_LOCK|IS_FREE_LOCK)\b|\bNEXT\s+VALUE\s+FOR\b",
    re.IGNORECASE,
)
# What makes a read more than a plain one to the DB-API adapter: it locks,
# assigns or writes into something.
_NOT_PLAIN = _Pattern(
    r"\bfor\s+update\b|\bfor\s+share\b|\block\s+in\s+share\s+mode\b|\binto\b"
    r"|@|\bget_lock\b|\blast_insert_id\s*\(",
    re.IGNORECASE,
)


def first_word(sql: AnyStr) -> AnyStr:
    """Return the statement's first keyword in upper case (empty when it has none)."""
    match = _FIRST_WORD.of(sql).match(sql)
    return match.group(1).upper() if match else sql[:0]


def is_read(sql: AnyStr) -> bool:
    """Return whether the statement only reads (safe to report as a plain failure)."""
    return _READ.of(sql).match(sql) is not None


def may_write(op: int, body: Any) -> bool:
    """Return whether a request may change data if it ran (unknown SQL: yes)."""
    if op == Op.QUERY:
        return type(body) is not bytes or not is_read(body)
    return op in (Op.EXECUTEMANY, Op.COMMIT)


def leaves_session_clean(sql: AnyStr) -> bool:
    """Return whether the connection can serve another caller without a reset."""
    return _CLEAN_STATEMENT.of(sql).match(sql) is not None


def replica_safe(sql: AnyStr) -> bool:
    """Return whether a replica may run the statement: a read that locks nothing."""
    return is_read(sql) and _NOT_FOR_REPLICA.of(sql).search(sql) is None


def plain_read(sql: AnyStr) -> bool:
    """Return whether the statement reads without locking, assigning or writing."""
    return is_read(sql) and _NOT_PLAIN.of(sql).search(sql) is None
