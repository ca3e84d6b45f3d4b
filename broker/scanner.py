"""Where a MySQL response ends, found from packet headers without parsing rows.

The broker forwards MySQL's result packets unparsed, so it only needs to know
when a command's response is complete, whether it failed, the final status
flags, and, for streams, how many rows have gone by. `Scanner` walks packet
headers incrementally over a growing buffer; row payloads are never touched
beyond their first byte.

Response grammar (text protocol, without CLIENT_DEPRECATE_EOF, as pymysql
connects)::

    response  = OK | ERR | LOCAL_INFILE | resultset
    resultset = column_count column_def* EOF row* (EOF | ERR)

and a final OK or EOF with SERVER_MORE_RESULTS_EXISTS is followed by another
response (a CALL returns several).
"""

from __future__ import annotations

from client.wire.mysql import MAX_PACKET_LEN, MORE_RESULTS_EXISTS, lenenc

# States of a scan; plain ints because the loop runs once per packet.
_FIRST = 1  # expecting OK, ERR, LOCAL INFILE or a column count
_COLUMNS = 2  # reading column definitions, then one EOF
_ROWS = 3  # reading rows until EOF or ERR
_DONE = 4  # the response is complete


class Scanner:
    """Incremental scan of one command's response in a receive buffer.

    Call `scan` after each read; it returns True once the response is complete.
    ``end`` is then the offset just past it. In ROWS state a scan stops early
    once ``rows`` reaches ``row_limit`` so a stream can cut a chunk there.
    """

    __slots__ = ("_columns", "_continued", "_state", "end", "error", "rows", "status")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Prepare for the response to a new command."""
        self._state = _FIRST
        self._columns = 0
        self._continued = False
        self.end = 0
        self.rows = 0
        self.error = False
        self.status = 0

    @property
    def done(self) -> bool:
        """Whether the response is complete."""
        return self._state == _DONE

    def scan(self, buf: bytearray, row_limit: int = 0) -> bool:
        """Advance over whole packets in buf from ``end``; return whether done."""
        pos, size = self.end, len(buf)
        state, rows, continued = self._state, self.rows, self._continued
        while state != _DONE and pos + 4 <= size:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            nxt = pos + 4 + length
            if nxt > size:
                break
            if continued:  # the tail of a payload of 16 MiB or more
                continued = length == MAX_PACKET_LEN
                pos = nxt
                continue
            continued = length == MAX_PACKET_LEN
            first = buf[pos + 4] if length else 0
            if state == _ROWS:
                if first == 0xFE and length < 9:
                    self.status = buf[pos + 7] | buf[pos + 8] << 8
                    state = _FIRST if self.status & MORE_RESULTS_EXISTS else _DONE
                elif first == 0xFF:
                    self.error, state = True, _DONE
                else:
                    rows += 1
                    if rows == row_limit:
                        pos = nxt
                        break
            elif state == _COLUMNS:
                if self._columns:
                    self._columns -= 1
                elif first == 0xFE:
                    state = _ROWS
            elif first == 0x00:
                _, p = lenenc(buf, pos + 5)
                _, p = lenenc(buf, p)
                self.status = buf[p] | buf[p + 1] << 8
                state = _FIRST if self.status & MORE_RESULTS_EXISTS else _DONE
            elif first == 0xFF:
                self.error, state = True, _DONE
            elif first == 0xFB:  # LOCAL INFILE: never asked for; ends the response
                state = _DONE
            else:
                self._columns, _ = lenenc(buf, pos + 4)
                state = _COLUMNS
            pos = nxt
        self.end, self._state, self.rows, self._continued = pos, state, rows, continued
        return state == _DONE
