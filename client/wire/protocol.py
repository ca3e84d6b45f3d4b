"""The wire format between client and broker: the one copy both sides import.

Transport: the client's DEALER socket talks to the broker's ROUTER socket. Every
message is a single ZeroMQ frame holding one msgpack array (the ROUTER adds and
strips the peer's routing id frame).

Request, client to broker::

    [VERSION, req_id, op, pool, timeout, pin, body, deadline]

- ``req_id`` (int) is echoed in the reply; a reply whose id is not the one the
  client waits for is a late answer to an abandoned request and is dropped.
- ``op`` is an `Op` value; ``pool`` the pool name; ``timeout`` float seconds the
  caller will wait (the broker's deadline is the smaller of it and the pool's
  ``query_timeout``); ``pin`` is 0, or the id of the transaction, session or
  stream the request belongs to.
- ``deadline`` is ``[monotonic, wall]``: the instant, on the client's
  ``CLOCK_MONOTONIC`` and on its wall clock (``time.time()``), after which the
  request's statement must not start (`deadline_in`). The client stops
  waiting ``GRACE`` later. An ipc peer shares the broker's host and so its
  monotonic clock, which no one can set; a tcp peer may sit on another host,
  so the broker reads its wall clock with `SKEW_ALLOWANCE` to spare
  (`seconds_left`). Either way a request that waited unread in a stopped
  broker's socket past its deadline is answered `QueryTimeout`, never run.
  Version 1 frames (7 items, no deadline) are still accepted: their deadline
  starts when the broker reads them.
- ``body`` depends on ``op``; SQL always travels as bytes already encoded in the
  pool's charset with the parameters interpolated by pymysql's own escaping
  (the client learns charset and SQL mode from `Op.HELLO`).

Reply, broker to client::

    [req_id, status, body]

- `Status.PACKETS`: ``body`` is MySQL's own response to one command, packets
  with their 4-byte headers, forwarded unparsed. The client decodes them with
  pymysql's protocol and converter code, so values, types and database errors
  are exactly pymysql's.
- `Status.BATCH`: a list of such responses (one per statement of executemany).
- `Status.CHUNK`: ``[pin, done, packets]``: part of a streamed result.
- `Status.VALUE`: a plain msgpack value (ping, hello, stats, a new pin id).
- `Status.ERROR`: ``[class_name, errno, msg, sqlstate]``, see `client.errors`.
- `Status.SERVED`: ``[served_by, status, body]``: the reply to a ``*_REPLICA``
  op, a PACKETS or CHUNK body with the server that ran it (`SERVED_BY_PRIMARY`
  or ``"replica HOST:PORT"``). Plain ops never get it: they always run on the
  primary, so their replies cost what they did before replicas existed.

Why passthrough: parsing rows costs pymysql ~44 µs for one row and ~8.8 ms for a
thousand; doing it in the single broker thread made the broker the ceiling.
Forwarding packets moves that work into the many client processes and makes
type fidelity pymysql's by construction. This module deals in bytes and values
only, never sockets.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgpack

VERSION = 2
VERSIONS = frozenset({1, 2})  # 1: without the deadline item; still served
# Seconds a tcp peer's wall clock may run ahead of or behind the broker's. Below
# the client's GRACE (2 s), so a statement never starts after its caller gave up
# while the clocks agree to within a second (NTP keeps them to milliseconds).
SKEW_ALLOWANCE = 1.0

DEFAULT_ENDPOINT = "ipc:///run/broker/broker.sock"  # broker.service's RuntimeDirectory
DEFAULT_POOL = "default"


class Op(enum.IntEnum):
    """What a request asks for; the body each one carries is in its comment."""

    PING = 1  # body None; reply VALUE with the broker version
    HELLO = 2  # body {pid, host, program, name}; reply VALUE: the pool's INFO_*
    STATS = 3  # body None; reply VALUE, the `broker status --json` dict
    QUERY = 4  # body SQL bytes; reply PACKETS
    EXECUTEMANY = 5  # body [SQL bytes, ...] run in order, stop at an error; BATCH
    BEGIN = 6  # body {isolation, readonly, who[, sql]}; VALUE pin id, or [pin, PACKETS]
    COMMIT = 7  # pin; body None; reply PACKETS; the pin ends
    ROLLBACK = 8  # pin; body None; reply PACKETS; the pin ends
    SESSION_OPEN = 9  # body {who}; reply VALUE pin id
    SESSION_CLOSE = 10  # pin; body None; reply VALUE None; the pin ends
    STREAM_OPEN = 11  # body [SQL bytes, chunk_rows, who]; reply CHUNK
    STREAM_NEXT = 12  # pin; body None; reply CHUNK
    STREAM_CLOSE = 13  # pin; body None; reply VALUE None; the pin ends
    CANCEL = 14  # body: req_id of this peer's running or queued request; VALUE bool
    QUERY_REPLICA = 15  # body as QUERY; an eligible replica may run it; SERVED
    STREAM_OPEN_REPLICA = 16  # body as STREAM_OPEN; may run on a replica; SERVED


class Status(enum.IntEnum):
    """The kind of a reply body."""

    PACKETS = 0
    BATCH = 1
    CHUNK = 2
    VALUE = 3
    ERROR = 4
    SERVED = 5


# Keys of the HELLO reply: what a client needs to render SQL for a pool.
INFO_CHARSET = "charset"  # connection charset, e.g. "utf8mb4"
INFO_SERVER_STATUS = "server_status"  # MySQL status flags (NO_BACKSLASH_ESCAPES)
INFO_SERVER_VERSION = "server_version"
INFO_MAX_MESSAGE_BYTES = "max_message_bytes"

# What Op.BEGIN's "isolation" may name (either side refuses anything else).
ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)

SERVED_BY_PRIMARY = "primary"  # Result.served_by of anything the primary ran

_packer = msgpack.Packer(use_bin_type=True)
_OPS = frozenset(Op)


class ProtocolError(ValueError):
    """A frame that is not a well-formed message of this protocol."""


def deadline_in(seconds: float) -> list[float]:
    """Return the deadline field for a statement that may start within seconds."""
    return [time.monotonic() + seconds, time.time() + seconds]


def seconds_left(deadline: list[float], same_host: bool) -> float:
    """Return how long, by this process's clocks, a request's statement may start."""
    if same_host:
        return deadline[0] - time.monotonic()
    return deadline[1] + SKEW_ALLOWANCE - time.time()


def encode_request(
    req_id: int,
    op: int,
    pool: str,
    timeout: float,
    pin: int,
    body: Any,
    deadline: list[float] | None = None,
) -> bytes:
    """Return the frame for one request; deadline defaults to timeout from now."""
    if deadline is None:
        deadline = deadline_in(timeout)
    return _packer.pack([VERSION, req_id, op, pool, timeout, pin, body, deadline])


def _number(value: Any) -> bool:
    return type(value) in (int, float) and -1e18 < value < 1e18


def decode_request(
    frame: bytes,
) -> tuple[int, int, str, float, int, Any, list[float] | None]:
    """Return (req_id, op, pool, timeout, pin, body, deadline), or raise ProtocolError.

    deadline is None for a version 1 frame.

    The broker calls this on untrusted bytes: every header field is checked,
    and the message says which one is wrong so the sender can be told.
    """
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise ProtocolError(f"frame is not valid msgpack: {err}") from err
    if type(msg) is not list or len(msg) not in (7, 8):
        raise ProtocolError("frame must be a msgpack array of 8 items (7 in version 1)")
    version = msg[0]
    if type(version) is not int or version not in VERSIONS or len(msg) != 6 + version:
        raise ProtocolError(
            f"protocol version {version!r} with {len(msg)} items not supported "
            f"(this broker speaks {sorted(VERSIONS)})"
        )
    req_id, op, pool, timeout, pin, body = msg[1:7]
    deadline = msg[7] if version >= 2 else None
    if deadline is not None and not (
        type(deadline) is list and len(deadline) == 2 and all(map(_number, deadline))
    ):
        raise ProtocolError("deadline must be [monotonic, wall] seconds")
    if type(req_id) is not int or not 0 <= req_id < 2**64:
        raise ProtocolError("request id must be an unsigned 64-bit integer")
    if type(op) is not int or op not in _OPS:
        raise ProtocolError(f"unknown op {op!r}")
    if type(pool) is not str:
        raise ProtocolError("pool name must be a string")
    if type(timeout) not in (int, float) or not 0 < timeout < 1e9:
        raise ProtocolError("timeout must be a positive number of seconds")
    if type(pin) is not int or not 0 <= pin < 2**64:
        raise ProtocolError("pin must be an unsigned 64-bit integer")
    return req_id, op, pool, float(timeout), pin, body, deadline


def encode_reply(req_id: int, status: int, body: Any) -> bytes:
    """Return the frame for one reply."""
    return _packer.pack([req_id, status, body])


def decode_reply(frame: bytes) -> tuple[int, int, Any]:
    """Return (req_id, status, body) of a reply frame."""
    try:
        req_id, status, body = msgpack.unpackb(frame, raw=False)
    except Exception as err:  # msgpack raises several unrelated types
        raise ProtocolError(f"reply is not a valid frame: {err}") from err
    return req_id, status, body


def peek_req_id(frame: bytes) -> int | None:
    """Return the request id of a frame too broken to decode, if it shows one.

    Lets the broker address an error reply to a sender whose header is bad.
    """
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=max(len(frame), 1))
        unpacker.feed(frame)
        if unpacker.read_array_header() >= 2:
            unpacker.skip()
            req_id = unpacker.unpack()
            if type(req_id) is int and 0 <= req_id < 2**64:
                return req_id
    except Exception:  # noqa: S110  any failure just means "no id to answer to"
        pass
    return None
