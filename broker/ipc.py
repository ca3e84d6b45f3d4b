"""ipc:// endpoints served by the I/O thread itself: ZMTP 3.0 on unix sockets.

libzmq moves every message through its own I/O thread, two thread hand-offs
per direction; on 2 cores those cost more than the broker's own work per
query. So ipc endpoints are plain unix stream sockets in the loop's poller,
speaking ZMTP (`client.wire.zmtp`) as a ROUTER would: any ZeroMQ DEALER can
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
import resource
import socket
import time
from collections.abc import Callable

from broker.poller import POLLIN, POLLOUT, Poller
from client.wire import zmtp
from client.wire.zmtp import Multipart

log = logging.getLogger(__name__)

RECV_BYTES = 65536
MAX_OUTPUT_BYTES = 256 * 1024 * 1024  # a peer this far behind on replies is cut off
BACKLOG = 1024
# Replies shorter than this are joined to their header and sent with send():
# copying a few KiB costs less than sendmsg()'s two-buffer call (~1.3 µs).
ZERO_COPY_BYTES = 16384
ACCEPTS_PER_WAKE = 64
# At the open-files limit without a spare descriptor, stop polling the
# listener this long: accept() would fail at once and the loop would spin.
ACCEPT_PAUSE = 0.5
LIMIT_LOG_EVERY = 10.0  # seconds between lines about refusals at the fd limit
_SOCKET_TYPES = (b"DEALER", b"REQ")


class Peer:
    """One client connection: handshake, frames in, replies out."""

    __slots__ = (
        "_handle",
        "_on_close",
        "_out",
        "_poller",
        "_zmtp",
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
        self._zmtp = zmtp.Connection(b"ROUTER", _SOCKET_TYPES, max_frame)
        self._out = b""
        self.client: tuple[str, int] | None = None  # (host, pid) the client announced
        self.closed = False
        sock.setblocking(False)
        poller.register(self.fd, POLLIN)
        self.write(self._zmtp.start())

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
        conn = self._zmtp
        was_ready = conn.ready
        try:
            messages = conn.receive(data)
        except zmtp.ZmtpError as err:
            log.info("ipc peer fd %d dropped: %s", self.fd, err)
            self._handle(self, None, str(err))
            self.close()
            return
        if not was_ready and conn.ready:
            self._announced(conn.properties)
        if conn.output:
            self.write(conn.take_output())
        for body in messages:
            if self.closed:
                return
            if type(body) is Multipart:
                self._handle(self, body, "a request must be a single frame")
            else:
                self._handle(self, body, None)

    def _announced(self, props: dict[bytes, bytes]) -> None:
        """Note the (host, pid) the client's READY carries: pins are bounded by it."""
        pid, host = props.get(b"x-pid", b""), props.get(b"x-host", b"")
        if pid.isdigit():
            self.client = (host.decode(errors="replace"), int(pid))

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


def listen_unix(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind and listen on a unix socket file with the given mode and group."""
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
    return sock


def unlink_socket(path: str) -> None:
    """Remove a socket file; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # already gone: nothing to clean


class Listener:
    """A listening unix socket for one ipc:// endpoint.

    With ``owner`` False the socket was bound by the parent of several loops,
    which removes the file when the last loop is gone.
    """

    def __init__(
        self, path: str, sock: socket.socket, poller: Poller, owner: bool = True
    ) -> None:
        self.path = path
        self._owner = owner
        self.sock = sock
        self.fd = sock.fileno()
        poller.register(self.fd, POLLIN)
        self._poller = poller
        # Held in reserve: at the open-files limit it is freed for a moment to
        # accept a waiting client and tell it why it cannot be served.
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self._paused_until = 0.0
        self.refused = 0  # clients refused at the open-files limit, ever
        self._refused_said = 0
        self._next_say = 0.0

    def accept(self) -> list[socket.socket]:
        """Return the connections waiting to be accepted.

        At the open-files limit the waiting clients are refused instead (see
        `_refuse_waiting`), so the listener does not stay readable and the loop
        does not spin on a failing accept().
        """
        out = []
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno not in (errno.EMFILE, errno.ENFILE):
                    log.warning("cannot accept on %s: %s", self.path, err)
                    self._pause()  # at most one line per ACCEPT_PAUSE
                    break
                if not self._refuse_waiting():
                    self._pause()
                self._say_limit()
                break
            out.append(conn)
        return out

    def _refuse_waiting(self) -> bool:
        """Accept each waiting client on the spare fd and refuse it; False: no spare.

        The client hears the reason in a ZMTP ERROR command at once, instead of
        waiting out its timeout in the backlog.
        """
        if self._spare is None:
            return False
        os.close(self._spare)
        self._spare = None
        refusal = zmtp.greeting() + zmtp.error(
            f"the broker is at its open-files limit ({open_files_limit()}); "
            "raise LimitNOFILE= in its unit (or ulimit -n)"
        )
        ok = True
        try:
            for _ in range(ACCEPTS_PER_WAKE):
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    break
                except OSError:
                    ok = False  # another thread took the freed descriptor
                    break
                with conn:
                    conn.setblocking(False)
                    try:
                        # Take its greeting first: closing with unread input
                        # resets the connection before the client reads why.
                        conn.recv(RECV_BYTES)
                    except OSError:
                        pass  # nothing sent yet (or gone): the refusal still goes
                    try:
                        conn.send(refusal)
                    except OSError:
                        pass  # the client left already: nothing to tell it
                self.refused += 1
        finally:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass  # taken meanwhile; `resume` tries again
        return ok

    def _pause(self) -> None:
        if not self._paused_until:
            self._poller.unregister(self.fd)
        self._paused_until = time.monotonic() + ACCEPT_PAUSE

    def resume(self, now: float) -> bool:
        """Poll the listener again once a pause at the fd limit has passed.

        Return whether it is (still) paused.
        """
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            if self._spare is None:
                try:
                    self._spare = os.open(os.devnull, os.O_RDONLY)
                except OSError:
                    self._pause()
                    return True
            self._poller.register(self.fd, POLLIN)
        return bool(self._paused_until)

    def _say_limit(self) -> None:
        """Log the fd limit at most once per LIMIT_LOG_EVERY: no log flood."""
        now = time.monotonic()
        if now < self._next_say:
            return
        self._next_say = now + LIMIT_LOG_EVERY
        log.error(
            "ipc %s: at the open-files limit (%d fds): %d client(s) refused since "
            "the last report; raise LimitNOFILE= in the unit (or ulimit -n)",
            self.path,
            open_files_limit(),
            self.refused - self._refused_said,
        )
        self._refused_said = self.refused

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if not self._paused_until:
            self._poller.unregister(self.fd)
        if self._spare is not None:
            os.close(self._spare)
        self.sock.close()
        if self._owner:
            unlink_socket(self.path)


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


def open_files_limit() -> int:
    """Return this process's soft limit on open files."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files() -> int:
    """Return how many files this process holds open (Linux; -1 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return -1


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; return (soft, hard).

    Each client holds one descriptor, so the default soft limit (1024 from a
    shell) caps a broker at about a thousand clients for no reason.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep what we have; the figure is logged either way
    return soft, hard
