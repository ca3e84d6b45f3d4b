"""What a request that got no reply came to: provably never run, or unknown.

The client can prove a request never ran in three cases, and only for ipc://
links (a unix socket it reads and writes itself):

- the frame never went out whole (connect or send failed): the broker cannot
  decode half a frame;
- the kernel still holds bytes the broker has not read (``SIOCOUTQ`` on a unix
  stream socket counts what the peer has not consumed yet) and the request
  was the last thing written: the broker never read it whole, and once its
  deadline has passed the broker will never start it (`client.wire.protocol`);
- the broker's socket closed with our bytes unread: Linux then reports
  ``ECONNRESET`` to us rather than end-of-file (``unix_release_sock``).

Anything else that was sent is unknown: `ReplyLost` for a request that may
write (an `OutcomeUnknown` and a `BrokerUnavailable` at once), plain
`BrokerUnavailable` for one that only reads. Through libzmq (tcp://) nothing
can be proven once the socket accepted the frame.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import termios
from typing import Any

from client import errors
from client.wire.statement import may_write

_SIOCOUTQ = termios.TIOCOUTQ  # the same ioctl number on sockets


def unread_bytes(sock: socket.socket) -> int:
    """Return how much sent on a unix stream socket its peer has not read yet."""
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0  # closed or unsupported: proves nothing
    return struct.unpack("i", raw)[0]


def reset_by_peer(err: BaseException) -> bool:
    """Return whether err is the kernel's ECONNRESET (closed with our data unread)."""
    return isinstance(err, ConnectionResetError) and err.errno == errno.ECONNRESET


def no_reply(
    endpoint: str,
    op: int,
    body: Any,
    elapsed: float,
    *,
    sent: bool,
    unread: bool,
    why: str = "",
) -> errors.Error:
    """Return the error for a request that got no reply after elapsed seconds.

    Args:
        endpoint: the broker's address, for the message.
        op: the request's op.
        body: its body (the SQL decides read or write).
        elapsed: seconds since the call began (what the message states).
        sent: whether the whole frame was handed to the socket.
        unread: whether the broker provably never read the whole frame.
        why: the cause to add in parentheses, if any.
    """
    cause = f" ({why})" if why else ""
    if not sent:
        return errors.BrokerUnavailable(
            errors.ER_BROKER_UNAVAILABLE,
            f"cannot reach a broker at {endpoint} after {elapsed:.1f} s{cause}; "
            "the request was not sent",
        )
    if unread:
        return errors.BrokerUnavailable(
            errors.ER_BROKER_UNAVAILABLE,
            f"the broker at {endpoint} did not read the request within "
            f"{elapsed:.1f} s{cause}; it was not run",
        )
    msg = f"no reply from the broker at {endpoint} after {elapsed:.1f} s{cause}"
    if may_write(op, body):
        return errors.ReplyLost(
            errors.ER_OUTCOME_UNKNOWN,
            msg + "; the broker had read the request, so the statement may or "
            "may not have been applied",
        )
    return errors.BrokerUnavailable(errors.ER_BROKER_UNAVAILABLE, msg)
