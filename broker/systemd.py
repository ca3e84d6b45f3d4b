"""sd_notify, spoken directly: READY, STATUS, RELOADING, STOPPING, WATCHDOG.

No libsystemd: the protocol is one datagram of ``KEY=VALUE`` lines to the
unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace). Without that variable every call is a no-op, so the broker runs
the same in a terminal, under systemd, and in tests that bind their own socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """The broker's line to systemd; silent when not started by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # systemd asks for a ping at least every WATCHDOG_USEC; half leaves room.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else 0.0
        self._next_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        """Send KEY=VALUE fields in one datagram."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), err)

    def ready(self, status: str) -> None:
        """Tell systemd the broker serves."""
        self.notify(READY=1, STATUS=status)

    def reloading(self) -> None:
        """Tell systemd a reload started; `ready` ends it."""
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def stopping(self, status: str) -> None:
        """Tell systemd the broker is draining and will exit."""
        self.notify(STOPPING=1, STATUS=status)

    def status(self, status: str) -> None:
        """Update the one-line status systemctl shows."""
        self.notify(STATUS=status)

    def watchdog(self, now: float) -> None:
        """Ping the watchdog when due; from the I/O loop, so a stuck loop stops it."""
        if self.watchdog_interval and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval
            self.notify(WATCHDOG=1)

    def close(self) -> None:
        """Close the notify socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
