"""ZMTP 3.0 framing with the NULL mechanism: ZeroMQ's wire protocol, as bytes.

ipc:// endpoints are served and reached without libzmq's I/O threads: the
broker's loop and the client speak ZMTP directly on a unix socket. Measured on
2 cores, each libzmq message crossed two thread hand-offs per side (35-50 µs
each) and cost the client as much CPU as pymysql itself; a plain socket
speaking the same protocol removed them. Being ZMTP, any ZeroMQ DEALER can
still connect to the broker's ipc endpoint, and this client can talk to any
ZeroMQ ROUTER.

Spec: https://rfc.zeromq.org/spec/23/ (ZMTP 3.0). A peer sends a 64-byte
greeting, then a READY command carrying its socket type; after that, frames:
a flags byte (MORE 0x01, LONG 0x02, COMMAND 0x04), a 1- or 8-byte size, body.
"""

from __future__ import annotations

import struct

MORE, LONG, COMMAND = 0x01, 0x02, 0x04
GREETING_SIZE = 64
_SIGNATURE_HEAD, _SIGNATURE_TAIL = b"\xff", b"\x7f"
_long = struct.Struct(">Q")


class ZmtpError(ValueError):
    """The peer broke the protocol; the connection must be dropped."""


class Refused(ZmtpError):
    """The peer sent ERROR (ZMTP 3.1): it will not serve us, and says why."""


def greeting() -> bytes:
    """Return our greeting: ZMTP 3.0, mechanism NULL, not as-server."""
    return (
        _SIGNATURE_HEAD
        + b"\x00" * 8
        + _SIGNATURE_TAIL
        + b"\x03\x00"
        + b"NULL".ljust(20, b"\x00")
        + b"\x00"
        + b"\x00" * 31
    )


def check_greeting(data: bytes) -> None:
    """Raise ZmtpError unless data is a ZMTP 3.x NULL-mechanism greeting."""
    if data[:1] != _SIGNATURE_HEAD or data[9:10] != _SIGNATURE_TAIL:
        raise ZmtpError("not a ZeroMQ peer (bad signature)")
    if data[10] < 3:
        raise ZmtpError(f"ZMTP version {data[10]} is too old; 3.0 or later needed")
    mechanism = data[12:32].rstrip(b"\x00")
    if mechanism != b"NULL":
        raise ZmtpError(f"security mechanism {mechanism!r} not offered here")


def frame_header(size: int, flags: int = 0) -> bytes:
    """Return the flags and size bytes that precede a body of size bytes."""
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | LONG,)) + _long.pack(size)


def encode_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    """Return one frame carrying body."""
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    return frame_header(len(body), flags) + body


def ready(socket_type: bytes, metadata: dict[bytes, bytes] | None = None) -> bytes:
    """Return the READY command frame: socket type plus "X-" metadata properties."""
    props = {b"Socket-Type": socket_type, **(metadata or {})}
    body = b"".join(
        bytes((len(name),)) + name + struct.pack(">I", len(value)) + value
        for name, value in props.items()
    )
    return encode_frame(b"\x05READY" + body, command=True)


def error(reason: str) -> bytes:
    """Return the ERROR command frame: a refusal the peer can show its user."""
    text = reason.encode()[:255]
    return encode_frame(b"\x05ERROR" + bytes((len(text),)) + text, command=True)


def parse_command(body: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Return (name, properties) of a command body; properties only for READY.

    Raises Refused for an ERROR command, with the peer's reason.
    """
    if not body or len(body) < 1 + body[0]:
        raise ZmtpError("truncated command")
    name = body[1 : 1 + body[0]]
    if name == b"ERROR":
        pos = 1 + body[0]
        size = body[pos] if pos < len(body) else 0
        raise Refused(body[pos + 1 : pos + 1 + size].decode(errors="replace"))
    props: dict[bytes, bytes] = {}
    if name == b"READY":
        pos = 1 + body[0]
        while pos < len(body):
            key_len = body[pos]
            key = body[pos + 1 : pos + 1 + key_len]
            pos += 1 + key_len
            if pos + 4 > len(body):
                raise ZmtpError("truncated READY property")
            (value_len,) = struct.unpack_from(">I", body, pos)
            pos += 4
            if pos + value_len > len(body):
                raise ZmtpError("truncated READY property value")
            props[key.lower()] = body[pos : pos + value_len]
            pos += value_len
    return name, props


class FrameReader:
    """Cuts frames out of a byte stream: feed bytes in, take (flags, body) out.

    Args:
        max_size: a frame declaring a larger body is a protocol error, so a
            hostile peer cannot make us buffer without bound.
    """

    __slots__ = ("_buf", "_pos", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_size = max_size

    @property
    def empty(self) -> bool:
        """Whether no bytes wait to be parsed."""
        return self._pos == len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def take(self, size: int) -> bytes | None:
        """Return the next size raw bytes (the greeting), or None if not here yet."""
        if len(self._buf) - self._pos < size:
            return None
        out = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size
        return out

    def greeting(self) -> bool:
        """Take and check the peer's greeting; False until all of it has arrived."""
        data = self.take(GREETING_SIZE)
        if data is None:
            return False
        check_greeting(data)
        return True

    def next(self) -> tuple[int, bytes] | None:
        """Return the next whole frame as (flags, body), or None."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        flags = buf[pos]
        if flags & LONG:
            if avail < 9:
                return None
            (size,) = _long.unpack_from(buf, pos + 1)
            start = pos + 9
        else:
            size = buf[pos + 1]
            start = pos + 2
        if size > self.max_size:
            raise ZmtpError(
                f"frame of {size} bytes exceeds the limit of {self.max_size}"
            )
        end = start + size
        if end > len(buf):
            return None
        self._pos = end
        return flags, bytes(buf[start:end])


class Multipart(bytes):
    """The first frame of a multi-frame message: this protocol refuses those.

    Delivered in place of the message so the receiver can address its refusal
    (the first frame holds the request id).
    """


class Connection:
    """One ZMTP connection's protocol state, sans I/O: bytes in, messages out.

    The broker's ipc peers and both client links drive one each over their own
    sockets: `start` gives the greeting and READY to send, `receive` takes what
    arrived and returns the whole messages in it, `output` holds anything the
    protocol itself must answer (PONG to a PING). ``ready`` turns true when the
    peer's READY has arrived; ``properties`` then holds its metadata (lower-case
    names). Raises ZmtpError when the peer breaks the protocol, Refused when it
    says ERROR.

    Args:
        socket_type: ours, b"ROUTER" or b"DEALER".
        accepts: socket types we can talk to.
        max_frame: a frame declaring a larger body is a protocol error.
    """

    __slots__ = (
        "_accepts",
        "_greeted",
        "_multipart",
        "_reader",
        "_socket_type",
        "output",
        "properties",
        "ready",
    )

    def __init__(
        self, socket_type: bytes, accepts: tuple[bytes, ...], max_frame: int
    ) -> None:
        self._socket_type = socket_type
        self._accepts = accepts
        self._reader = FrameReader(max_frame)
        self._greeted = False
        self._multipart: bytes | None = None  # first frame of a multipart message
        self.ready = False
        self.properties: dict[bytes, bytes] = {}
        self.output = b""

    def start(self, metadata: dict[bytes, bytes] | None = None) -> bytes:
        """Return our greeting and READY, to be sent first."""
        return greeting() + ready(self._socket_type, metadata)

    def receive(self, data: bytes) -> list[bytes]:
        """Take received bytes; return the whole messages they complete, in order."""
        reader = self._reader
        if (
            self.ready
            and len(data) > 1
            and data[0] == 0
            and len(data) == data[1] + 2
            and self._multipart is None
            and reader.empty
        ):
            return [data[2:]]  # the usual case: exactly one short message
        reader.feed(data)
        if not self._greeted:
            if not reader.greeting():
                return []
            self._greeted = True
        messages: list[bytes] = []
        while (frame := reader.next()) is not None:
            flags, body = frame
            if flags & COMMAND:
                self._command(body)
            elif not self.ready:
                raise ZmtpError("message before READY")
            elif flags & MORE or self._multipart is not None:
                if self._multipart is None:
                    self._multipart = body
                if not flags & MORE:
                    messages.append(Multipart(self._multipart))
                    self._multipart = None
            else:
                messages.append(body)
        return messages

    def take_output(self) -> bytes:
        """Return and clear what the protocol must send back."""
        out, self.output = self.output, b""
        return out

    def _command(self, body: bytes) -> None:
        name, props = parse_command(body)
        if name == b"READY":
            if props.get(b"socket-type") not in self._accepts:
                raise ZmtpError(
                    f"socket type {props.get(b'socket-type')!r} cannot talk to a "
                    f"{self._socket_type.decode()}"
                )
            self.ready, self.properties = True, props
        elif name == b"PING":
            # Heartbeat (ZMTP 3.1): answer PONG with the ping's context.
            context = body[1 + body[0] + 2 :]
            self.output += encode_frame(b"\x04PONG" + context, command=True)
