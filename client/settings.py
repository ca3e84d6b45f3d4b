"""What both Clients are made of: their settings, checked once, and who they are.

`client.Client` and `client.aio.Client` both derive from `BaseClient`, so they
take the same keywords (endpoint with ``$BROKER_ENDPOINT``, pool, timeout,
name, CurveZMQ keys, replica) with the same checks, by construction. The
pool's HELLO answer (``info``) is asked once per Client and forgotten when
the broker is lost (a restarted one may serve another config).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from client import errors
from client.wire import protocol

DEFAULT_TIMEOUT = 30.0

Params = Sequence[Any] | dict[str, Any] | None

_HOST = socket.gethostname()


def env_endpoint() -> str:
    """Return ``$BROKER_ENDPOINT``, else the built-in default endpoint."""
    return os.environ.get("BROKER_ENDPOINT") or protocol.DEFAULT_ENDPOINT


def curve_keys(server_key: str | None, client_key: str | None) -> tuple | None:
    """Return (server public, client public, client secret) for CurveZMQ, or None."""
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise errors.InterfaceError(0, "CurveZMQ needs both server_key and client_key")
    from zmq.auth import load_certificate

    try:
        if os.path.exists(server_key):
            server_public = load_certificate(server_key)[0]
        else:
            server_public = server_key.encode()
        public, secret = load_certificate(client_key)
    except (OSError, ValueError) as err:
        raise errors.InterfaceError(0, f"cannot load CurveZMQ keys: {err}") from err
    if secret is None:
        raise errors.InterfaceError(
            0, f"{client_key} holds no secret key (.key_secret)"
        )
    return server_public, public, secret


def check_timeout(timeout: Any) -> float:
    """Return timeout as float seconds, or raise InterfaceError unless it is > 0."""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = 0.0
    if not seconds > 0:
        raise errors.InterfaceError(0, f"timeout must be > 0, got {timeout!r}")
    return seconds


class BaseClient:
    """A handle on the broker; holds ZeroMQ sockets, never a database socket.

    Args:
        endpoint: the broker's address; default ``$BROKER_ENDPOINT``, else
            `client.wire.protocol.DEFAULT_ENDPOINT`.
        timeout: default seconds each call waits; every call takes ``timeout=``.
        pool: the broker pool this client's statements run on.
        name: an optional label shown by ``broker status`` beside pid and host.
        server_key: for tcp with CurveZMQ, the broker's public key (z85) or the
            path of its ``.key`` file; default ``$BROKER_SERVER_KEY``.
        client_key: the path of this client's ``.key_secret`` file from
            ``broker keygen``; default ``$BROKER_CLIENT_KEY``.
        replica: the default of ``replica=`` for `query` and `stream`: whether
            an eligible replica may serve them (the primary serves otherwise).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool: str = protocol.DEFAULT_POOL,
        *,
        name: str | None = None,
        server_key: str | None = None,
        client_key: str | None = None,
        replica: bool = False,
    ) -> None:
        self.timeout = check_timeout(timeout)
        self.endpoint = endpoint or env_endpoint()
        self.curve = curve_keys(
            server_key or os.environ.get("BROKER_SERVER_KEY"),
            client_key or os.environ.get("BROKER_CLIENT_KEY"),
        )
        self.pool = pool
        self.name = name
        self.replica = bool(replica)
        self.info: dict[str, Any] | None = None  # the pool's HELLO answer, once asked
        self._init_drivers()

    def _init_drivers(self) -> None:
        """Make the (empty) place where the subclass keeps its drivers."""

    @property
    def ipc_path(self) -> str | None:
        """The unix socket path of an ipc:// endpoint, else None."""
        if self.endpoint.startswith("ipc://"):
            return self.endpoint[len("ipc://") :]
        return None

    def wait(self, timeout: float | None) -> float:
        """Return the seconds a call waits: timeout, else the Client's; checked."""
        if timeout is None:
            return self.timeout
        return check_timeout(timeout)

    def who(self) -> dict[str, Any]:
        """Return who this process is, for ``broker status``."""
        return {
            "pid": os.getpid(),
            "host": _HOST,
            "program": os.path.basename(sys.argv[0])
            if sys.argv and sys.argv[0]
            else "python",
            "name": self.name,
            "thread": threading.current_thread().name,
        }

    def wants_replica(self, replica: bool | None) -> bool:
        """Return whether a read may go to a replica: the call's say, else ours."""
        return self.replica if replica is None else bool(replica)

    @staticmethod
    def check_chunk_rows(chunk_rows: Any) -> int:
        """Return chunk_rows, or raise InterfaceError unless it is an int >= 1."""
        if type(chunk_rows) is not int or chunk_rows < 1:
            raise errors.InterfaceError(
                0, f"chunk_rows must be an int >= 1, got {chunk_rows!r}"
            )
        return chunk_rows
