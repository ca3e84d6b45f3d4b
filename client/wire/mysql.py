"""MySQL packet framing, once: headers, split payloads, length-encoded integers.

Every MySQL packet is a 3-byte little-endian payload length, a sequence byte
and the payload; a payload of 16 MiB - 1 or more continues in the next packet
(``MAX_PACKET_LEN``). The broker writes commands and walks response headers
without parsing rows, the client reads the packets it is forwarded; both use
these helpers. Constants come from `pymysql.constants` where pymysql has them.
"""

from __future__ import annotations

from collections.abc import Iterator

from pymysql.constants import COMMAND, SERVER_STATUS

MAX_PACKET_LEN = 0xFFFFFF  # a payload this long continues in the next packet

COM_QUIT = bytes((COMMAND.COM_QUIT,))
COM_QUERY = bytes((COMMAND.COM_QUERY,))
COM_PING = bytes((COMMAND.COM_PING,))
COM_RESET_CONNECTION = b"\x1f"  # MySQL 5.7 / MariaDB 10.2; pymysql has no name

IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
MORE_RESULTS_EXISTS = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS
SESSION_STATE_CHANGED = 0x4000  # the OK packet carries session tracking data

_LENENC_WIDTH = {0xFC: 2, 0xFD: 3, 0xFE: 8}
QUIT_PACKET = b"\x01\x00\x00" + b"\x00" + COM_QUIT


def payload_length(buf: bytes | bytearray, pos: int = 0) -> int:
    """Return the payload length in the header at pos."""
    return buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16


def command_packets(command: bytes) -> bytes:
    """Frame a command payload (command byte first) as packets from sequence 0."""
    if len(command) < MAX_PACKET_LEN:
        return len(command).to_bytes(3, "little") + b"\x00" + command
    parts, pos, seq = [], 0, 0
    while True:
        chunk = command[pos : pos + MAX_PACKET_LEN]
        parts.append(len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk)
        pos += MAX_PACKET_LEN
        seq += 1
        if len(chunk) < MAX_PACKET_LEN:
            return b"".join(parts)


def packets(data: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """Yield (payload start, payload end) of each whole packet in data, in order."""
    pos, size = 0, len(data)
    while pos + 4 <= size:
        end = pos + 4 + payload_length(data, pos)
        if end > size:
            return
        yield pos + 4, end
        pos = end


def ends_continued(data: bytes | bytearray) -> bool:
    """Whether data's last whole packet is full size, so its payload goes on."""
    last = -1
    for start, end in packets(data):
        last = end - start
    return last == MAX_PACKET_LEN


def lenenc(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Return (value, position after) of a length-encoded integer at pos."""
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    width = _LENENC_WIDTH.get(first)
    if width is None:  # 0xFB is NULL, 0xFF an error packet: not integers
        raise ValueError("not a length-encoded integer")
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little"), pos + 1 + width
