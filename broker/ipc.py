"""ipc:// endpoints served by the I/O thread itself: ZMTP 3.0 on unix sockets.

libzmq moves every message through its own I/O thread, two thread hand-offs
per direction; on 2 cores those cost more than the broker's own work per
query. So ipc endpoints are plain unix stream sockets in the loop's poller,
speaking ZMTP (`client.zmtp`) as a ROUTER would: any ZeroMQ DEALER can
connect. tcp:// endpoints stay on a libzmq ROUTER (remote peers, CurveZMQ).

A `Peer` is one connected client socket. It is identified to the rest of the
server by the object itself; replies are written to it without blocking, and
what the kernel does not take waits in the peer's output buffer (bounded: a
peer that stops reading is disconnected, not buffered for without end).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
from collections.abc import Callable

from broker.poller import POLLIN, POLLOUT, Poller
from client import zmtp

log = logging.getLogger(__name__)

RECV_BYTES = 65536
MAX_OUTPUT_BYTES = 256 * 1024 * 1024  # a peer this far behind on replies is cut off
BACKLOG = 1024
# Replies shorter than this are joined to their header and sent with send():
# copying a few KiB costs less than sendmsg()'s two-buffer call (~1.3 µs).
ZERO_COPY_BYTES = 16384
ACCEPTS_PER_WAKE = 64
_SOCKET_TYPES = (b"DEALER", b"REQ")


class Peer:
    """One client connection: handshake, frames in, replies out."""

    __slots__ = (
        "_handle",
        "_multipart",
        "_on_close",
        "_out",
        "_poller",
        "_reader",
        "_stage",
        "client",
        "closed",
        "fd",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        poller: Poller,
        handle: Callable[[Peer, bytes | None, str | None], None],
        max_frame: int,
        on_close: Callable[[Peer], None],
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._poller = poller
        self._handle = handle
        self._on_close = on_close
        self._reader = zmtp.FrameReader(max_frame)
        self._stage = 0  # 0: greeting expected, 1: READY expected, 2: messages
        self._multipart: bytes | None = None  # first frame of a refused multipart
        self._out = b""
        self.client: tuple[str, int] | None = None  # (host, pid) the client announced
        self.closed = False
        sock.setblocking(False)
        poller.register(self.fd, POLLIN)
        self.write(zmtp.greeting() + zmtp.ready(b"ROUTER"))

    def __repr__(self) -> str:
        return f"<Peer fd={self.fd}>"

    def on_readable(self) -> None:
        """Read what arrived and hand each complete message to the server."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        reader = self._reader
        if (
            data[0] == 0
            and len(data) == data[1] + 2
            and self._stage == 2
            and self._multipart is None
            and reader.empty
        ):
            self._handle(self, data[2:], None)  # the usual case: one short request
            return
        reader.feed(data)
        try:
            if self._stage == 0:
                if not reader.greeting():
                    return
                self._stage = 1
            while not self.closed and (frame := reader.next()) is not None:
                flags, body = frame
                if flags & zmtp.COMMAND:
                    self._command(body)
                elif self._stage != 2:
                    raise zmtp.ZmtpError("message before READY")
                elif flags & zmtp.MORE or self._multipart is not None:
                    # Remember the first frame: its request id addresses the refusal.
                    if self._multipart is None:
                        self._multipart = body
                    if not flags & zmtp.MORE:
                        first, self._multipart = self._multipart, None
                        self._handle(self, first, "a request must be a single frame")
                else:
                    self._handle(self, body, None)
        except zmtp.ZmtpError as err:
            log.info("ipc peer fd %d dropped: %s", self.fd, err)
            self._handle(self, None, str(err))
            self.close()

    def _command(self, body: bytes) -> None:
        name, props = zmtp.parse_command(body)
        if name == b"READY":
            if props.get(b"socket-type") not in _SOCKET_TYPES:
                raise zmtp.ZmtpError(
                    f"socket type {props.get(b'socket-type')!r} cannot talk to a ROUTER"
                )
            self._stage = 2
            pid, host = props.get(b"x-pid", b""), props.get(b"x-host", b"")
            if pid.isdigit():
                self.client = (host.decode(errors="replace"), int(pid))
        elif name == b"PING":
            # Heartbeat (ZMTP 3.1): answer PONG with the ping's context.
            context = body[1 + body[0] + 2 :]
            self.write(zmtp.encode_frame(b"\x04PONG" + context, command=True))

    def write_frame(self, body: bytes) -> None:
        """Send one message frame; large bodies go out without being copied."""
        if len(body) < ZERO_COPY_BYTES or self._out or self.closed:
            self.write(zmtp.encode_frame(body))
            return
        header = zmtp.frame_header(len(body))
        try:
            sent = self.sock.sendmsg((header, body))
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(header) + len(body):
            self._out = (header + body)[sent:]
            self._poller.modify(self.fd, POLLIN | POLLOUT)

    def write(self, data: bytes) -> None:
        """Send data now if the socket takes it, else keep it for POLLOUT."""
        if self.closed:
            return
        if self._out:
            if len(self._out) + len(data) > MAX_OUTPUT_BYTES:
                log.warning(
                    "ipc peer fd %d is not reading its replies; disconnecting", self.fd
                )
                self.close()
                return
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._out = data[sent:]
            self._poller.modify(self.fd, POLLIN | POLLOUT)

    def flush(self) -> None:
        """Write buffered output now that the socket is writable."""
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self._out = self._out[sent:]
        if not self._out:
            self._poller.modify(self.fd, POLLIN)

    def close(self) -> None:
        """Forget the connection."""
        if self.closed:
            return
        self.closed = True
        self._poller.unregister(self.fd)
        self._on_close(self)
        self.sock.close()


class Listener:
    """A listening unix socket for one ipc:// endpoint."""

    def __init__(self, path: str, mode: int, group: str | None, poller: Poller) -> None:
        self.path = path
        _check_directory(os.path.dirname(path) or ".")
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # umask first, so the file never exists with looser permissions.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if group is not None:
            try:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            except (KeyError, PermissionError) as err:
                sock.close()
                os.unlink(path)
                raise OSError(f"cannot give {path} to group {group!r}: {err}") from err
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        poller.register(self.fd, POLLIN)
        self._poller = poller

    def accept(self) -> list[socket.socket]:
        """Return the connections waiting to be accepted."""
        out = []
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("cannot accept on %s: %s", self.path, err)
                break
            out.append(conn)
        return out

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._poller.unregister(self.fd)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass  # already gone: nothing to clean


def _check_directory(directory: str) -> None:
    """Refuse a socket directory where others could swap the socket for theirs."""
    os.makedirs(directory, exist_ok=True)
    st = os.stat(directory)
    if st.st_mode & 0o002 and not st.st_mode & 0o1000:
        raise OSError(
            f"{directory} is world-writable: put the socket in a private directory"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise OSError(
            f"{directory} belongs to uid {st.st_uid}, not to root or this user "
            f"(uid {os.geteuid()}): put the socket in a directory you own"
        )


def _clear_stale(path: str) -> None:
    """Remove a socket file left by a dead broker; refuse to steal a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"another broker is already listening on {path}")
    finally:
        probe.close()
