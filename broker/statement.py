"""What a statement may do, judged from its first bytes: read, write, session state.

Three decisions hang on it; the third is whether a ``replica=True`` read may
go to a replica (`replica_safe`: a plain read that locks, assigns and writes
nothing). A statement lost with its connection is reported as
`OperationalError` when it only reads, and as `OutcomeUnknown` when it may have
written. And a connection goes back to the pool unreset only after statements
that cannot leave session state behind; anything else (SET, user variables,
temporary tables, locks, USE, PREPARE, ...) earns a reset first. Unknown or
oddly written statements count as writes that dirty the session: the safe side.
"""

from __future__ import annotations

import re

from client.protocol import READ_KEYWORDS as READS  # the client judges lost replies

# Statements that leave nothing in the session unless they mention a variable
# or a lock: plain reads and plain DML.
CLEAN = READS | frozenset({b"INSERT", b"UPDATE", b"DELETE", b"REPLACE", b"DO"})
_FIRST_WORD = re.compile(rb"[\s(]*([A-Za-z]+)")
# One C-level match: a clean first keyword, and no stateful mark anywhere after.
_CLEAN_STATEMENT = re.compile(
    rb"[\s(]*(?:" + b"|".join(sorted(CLEAN)) + rb")\b"
    rb"(?!.*(?:@|get_lock|last_insert_id\s*\())",
    re.IGNORECASE | re.DOTALL,
)


# Reads that still need the primary: locking reads and named locks (a replica
# has locks of its own), SELECT ... INTO, sequences, and a WITH that fronts a
# write. Matching inside a string literal only sends a read to the primary:
# the safe side. Session state (a user variable set by a read) is no reason:
# the connection is reset afterwards wherever it ran.
_NOT_FOR_REPLICA = re.compile(
    rb"\b(?:FOR\s+UPDATE|LOCK\s+IN\s+SHARE\s+MODE|INTO|UPDATE|DELETE|INSERT"
    rb"|REPLACE|NEXTVAL|SETVAL|LASTVAL|GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS"
    rb"|IS_USED_LOCK|IS_FREE_LOCK)\b|\bNEXT\s+VALUE\s+FOR\b",
    re.IGNORECASE,
)


def first_word(sql: bytes) -> bytes:
    """Return the statement's first keyword in upper case (b"" when it has none)."""
    match = _FIRST_WORD.match(sql)
    return match.group(1).upper() if match else b""


def is_read(sql: bytes) -> bool:
    """Return whether the statement only reads (safe to report as a plain failure)."""
    return first_word(sql) in READS


def leaves_session_clean(sql: bytes) -> bool:
    """Return whether the connection can serve another caller without a reset."""
    return _CLEAN_STATEMENT.match(sql) is not None


def replica_safe(sql: bytes) -> bool:
    """Return whether a replica may run the statement: a read that locks nothing."""
    return is_read(sql) and _NOT_FOR_REPLICA.search(sql) is None
