"""MariaDB GTID positions, and the bytes they come in: OK packets and one-value results.

A position maps each replication domain to the last GTID seen in it, as
``domain-server-seq`` lists print it (``0-1-42,1-2-7``). Sequence numbers grow
within a domain, so "has this replica applied that write" is a per-domain
comparison of sequence numbers, and merging two positions keeps the larger.

A primary connection opened with CLIENT_SESSION_TRACK and
``session_track_system_variables = 'last_gtid'`` reports the GTID of each
write it commits in the OK packet that answers it: no extra statement, about
20 bytes more per write (measured against ``SELECT @@last_gtid``, which costs a
round trip per write; see the README's "Replica reads").
"""

from __future__ import annotations

from client.wire import mysql
from client.wire.mysql import lenenc

Position = dict[int, tuple[int, int]]  # domain id -> (server id, sequence number)

SESSION_TRACK_SYSTEM_VARIABLES = 0  # the entry type of a tracked variable
_LAST_GTID = b"last_gtid"


def parse(text: str) -> Position:
    """Return the position a GTID list such as ``0-1-42,1-2-7`` names."""
    if text and "," not in text:  # one GTID, as every write reports: fast path
        domain, server, seq = text.split("-")  # ValueError unless three parts
        return {int(domain): (int(server), int(seq))}
    pos: Position = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        d, s, q = (int(part) for part in item.split("-"))  # ValueError
        if d not in pos or pos[d][1] < q:
            pos[d] = (s, q)
    return pos


def to_text(pos: Position) -> str:
    """Return pos as a GTID list, the form MASTER_GTID_WAIT takes."""
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(pos.items()))


def covers(have: Position, need: Position) -> bool:
    """Return whether a server at ``have`` has applied everything up to ``need``."""
    for domain, (_, seq) in need.items():
        got = have.get(domain)
        if got is None or got[1] < seq:
            return False
    return True


def advance(pos: Position, other: Position) -> None:
    """Move pos forward to include other (per domain, the larger wins)."""
    for domain, gtid in other.items():
        mine = pos.get(domain)
        if mine is None or mine[1] < gtid[1]:
            pos[domain] = gtid


def _tracked_gtid(ok: bytes) -> str | None:
    """Return last_gtid from one OK packet payload with session tracking data."""
    _, p = lenenc(ok, 1)  # affected rows
    _, p = lenenc(ok, p)  # insert id
    p += 4  # status flags, warnings
    info, p = lenenc(ok, p)
    p += info
    total, p = lenenc(ok, p)
    end = p + total
    while p < end:
        kind = ok[p]
        size, p = lenenc(ok, p + 1)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            n, q = lenenc(ok, p)
            name = ok[q : q + n]
            v, q = lenenc(ok, q + n)
            if name == _LAST_GTID:
                if q + v > len(ok):
                    raise ValueError("tracking data cut short")
                return ok[q : q + v].decode("ascii")
        p += size
    return None


def last_gtid(data: bytes) -> Position | None:
    """Return the position of the GTID a write's response reports, or None.

    The tracking data rides on the OK packet that ends the response: the
    first packet of a plain write (looked at first: the usual case), the last
    one after a CALL's result sets.
    """
    if len(data) < 4:
        return None
    start, end = 4, 4 + mysql.payload_length(data)
    if not (data[4:5] == b"\x00" and end <= len(data)):
        packets = list(mysql.packets(data))
        if not packets:
            return None
        start, end = packets[-1]
    if end - start < 7 or data[start] != 0:
        return None
    try:
        text = _tracked_gtid(data[start:end])
        return parse(text) if text else None
    except (ValueError, IndexError, UnicodeDecodeError):
        return None  # malformed tracking data: no GTID learned


def first_value(data: bytes) -> bytes | None:
    """Return the first column of the first row of a text result, or None (NULL).

    Used on the one-row answer to ``SELECT MASTER_GTID_WAIT(...)``.
    """
    packets = list(mysql.packets(data))
    if not packets or data[packets[0][0]] in (0x00, 0xFF):
        return None  # an OK or an error, not a result set
    columns, _ = lenenc(data, packets[0][0])
    row = 1 + columns + 1  # after the column count, definitions and their EOF
    if row >= len(packets):
        return None
    start, end = packets[row]
    if start >= end or data[start] in (0xFB, 0xFE):
        return None  # NULL, or the EOF of an empty result
    n, p = lenenc(data, start)
    return data[p : p + n]
