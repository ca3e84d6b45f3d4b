"""The ``[broker]`` and ``[pools.NAME]`` tables: frozen dataclasses, one field a key.

Each TOML key is one field made by `broker.settings.setting`, carrying its
default, its check and whether a SIGHUP reload applies it live (``live=False``:
it waits for a restart). ``__post_init__`` runs those checks, then the rules
that tie keys together, so a `PoolConfig` built with `dataclasses.replace` is
checked exactly like one from the file. `broker.config` re-exports these
classes and is where the rest of the broker imports them from.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.dsn import (
    DEFAULT_CHARSET,
    DEFAULT_CONNECT_TIMEOUT,
    parse_dsn,
    parse_replica_dsn,
    strip_password,
)
from broker.settings import (
    ConfigError,
    boolean,
    check_settings,
    endpoint,
    error,
    host_port,
    integer,
    loopback,
    one_of,
    optional,
    seconds,
    setting,
    strings,
    text,
)
from client.wire.protocol import DEFAULT_ENDPOINT

LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_MESSAGE_BYTES = 1024  # smaller could not carry a request header and its SQL
MAX_BUSY_POLL_US = 100_000  # beyond this a spin is no longer a short wait
MAX_LOOPS = 64  # processes; more than cores only adds switching
READ_YOUR_WRITES = ("off", "process", "host")
MIN_CHECK_INTERVAL = 0.05  # replica lag checks faster than this are load, not news
POOL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SOCKET_MODE = re.compile(r"[0-7]{3,4}")


def pool_name_error(name: object) -> ConfigError:
    """Return the error for a pool name outside [A-Za-z0-9_-]+."""
    return error(f"pools.{name}", f"pool name must match [A-Za-z0-9_-]+, got {name!r}")


def _dsn_type(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise error(key, f"must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class PoolConfig:
    """One ``[pools.NAME]`` table, with its DSN parsed into connection arguments.

    ``password`` is the resolved secret (from the DSN, ``password_file`` or
    ``$BROKER_PASSWORD``); ``password_file`` is the absolute path it was read
    from, kept for messages. Fields after ``replica_wait_timeout`` are not TOML
    keys; those after ``password`` come from the DSN. ``dsn == ""`` only in a
    sandbox config.
    """

    name: str
    # A changed dsn (or init_sql) replaces connections as they come free.
    dsn: str = setting(check=_dsn_type, toml=text)
    # New connections use the new secret.
    password_file: str | None = setting(None, check=optional(text))
    min_size: int = setting(1, check=integer(0))
    max_size: int = setting(10, check=integer(1))
    queue_timeout: float = setting(5.0, check=seconds())
    # 0 would read as "no limit" to some and "instantly" to others: refuse it.
    max_lifetime: float = setting(3600.0, check=seconds(positive=True))
    idle_timeout: float = setting(600.0, check=seconds())
    # 0 = never recycle by use count
    max_uses: int = setting(0, check=integer(0))
    # plain reads one connection may hold at once
    pipeline_depth: int = setting(1, check=integer(1))
    init_sql: tuple[str, ...] = setting((), check=strings)  # new connections
    query_timeout: float = setting(30.0, check=seconds(positive=True))
    transaction_idle_timeout: float = setting(60.0, check=seconds(positive=True))
    # see broker.pinlimit; 0 = no cap
    max_pins_per_client: int = setting(8, check=integer(0))
    # How long a cancelled statement may take to stop before its connection is
    # dropped. Above the client's 2 s GRACE a cancelled write's caller may give
    # up first and hear OutcomeUnknown.
    kill_grace: float = setting(1.5, check=seconds(positive=True))
    # New connections run SET SESSION TRANSACTION READ ONLY.
    read_only: bool = setting(False, check=boolean)
    # tcp client public keys (z85); () = all
    allowed_keys: tuple[str, ...] = setting((), check=strings)
    # DSNs of read-only copies of dsn's server; broker.readsplit keeps the old
    # list on reload.
    replicas: tuple[str, ...] = setting((), check=strings, live=False)
    # s behind the primary a replica may serve at
    replica_max_lag: float = setting(5.0, check=seconds(positive=True))
    # connections per replica; None: max_size
    replica_max_size: int | None = setting(None, check=optional(integer(1)))
    replica_check_interval: float = setting(
        1.0, check=seconds(positive=True, at_least=MIN_CHECK_INTERVAL)
    )
    read_your_writes: str = setting("process", check=one_of(READ_YOUR_WRITES))
    # s a read waits for a replica to catch up
    replica_wait_timeout: float = setting(0.5, check=seconds())
    password: str | None = field(default=None, repr=False)  # like password_file
    host: str | None = field(default=None, init=False)
    port: int = field(default=3306, init=False)
    user: str | None = field(default=None, init=False)
    database: str | None = field(default=None, init=False)
    unix_socket: str | None = field(default=None, init=False)
    charset: str = field(default=DEFAULT_CHARSET, init=False)
    connect_timeout: float = field(default=DEFAULT_CONNECT_TIMEOUT, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not POOL_NAME.fullmatch(self.name):
            raise pool_name_error(self.name)
        key = f"pools.{self.name}."
        check_settings(self, key)
        if self.min_size > self.max_size:
            raise error(
                key + "min_size",
                f"must be <= max_size ({self.max_size}), got {self.min_size}",
            )
        for dsn in self.replicas:
            parse_replica_dsn(key + "replicas", dsn)
        if self.password is not None and not isinstance(self.password, str):
            raise error(key + "password", "must be a string")
        if self.dsn:  # else a sandbox: with_sandbox_dsn() fills it in
            self._take_dsn(key)

    def _take_dsn(self, key: str) -> None:
        """Store the DSN's parts, its password, and refuse the primary as replica."""
        parts = parse_dsn(key + "dsn", self.dsn)
        dsn_password = parts.pop("password")
        if dsn_password is not None:
            if self.password is not None and self.password != dsn_password:
                raise error(
                    key + "dsn",
                    "has a password and another is given separately "
                    "(password_file or $BROKER_PASSWORD); keep one",
                )
            object.__setattr__(self, "password", dsn_password)
        for name, value in parts.items():
            object.__setattr__(self, name, value)
        for dsn in self.replicas:
            replica = parse_replica_dsn(key + "replicas", dsn)
            if (replica["host"], replica["port"], replica["unix_socket"]) == (
                self.host,
                self.port,
                self.unix_socket,
            ):
                raise error(
                    key + "replicas",
                    f"lists the primary itself ({strip_password(dsn)}); a replica "
                    "is another server",
                )

    def __repr__(self) -> str:
        # The generated repr would show the dsn, and with it any password in it.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["dsn"] = strip_password(self.dsn)
        shown = ", ".join(
            f"{f.name}={values[f.name]!r}" for f in dataclasses.fields(self) if f.repr
        )
        return f"PoolConfig({shown})"

    def connect_args(self) -> dict:
        """Return the keyword arguments for ``pymysql.connect()``."""
        if not self.dsn:
            raise error(f"pools.{self.name}.dsn", "not set (sandbox not started)")
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "unix_socket": self.unix_socket,
            "charset": self.charset,
            "connect_timeout": self.connect_timeout,
        }

    def replica_configs(self) -> list[PoolConfig]:
        """Return one config per replica: this pool's settings on the replica's DSN.

        Replica connections share the pool's credentials, init_sql, recycling
        and timeouts, are capped at replica_max_size, and run READ ONLY so a
        statement wrongly judged a read fails instead of diverging the copy.
        """
        size = self.replica_max_size or self.max_size
        return [
            dataclasses.replace(
                self,
                dsn=dsn,
                max_size=size,
                min_size=min(self.min_size, size),
                read_only=True,
                replicas=(),
            )
            for dsn in self.replicas
        ]

    def safe_dsn(self) -> str:
        """Return the DSN for logs and status: the same URL without any password."""
        if not self.dsn:
            return "(sandbox)"
        return strip_password(self.dsn)


def _endpoints(key: str, value: Any) -> tuple[str, ...]:
    endpoints = strings(key, value)
    if not endpoints:
        raise error(key, "must name at least one endpoint, got []")
    for ep in endpoints:
        endpoint(key, ep)
    if len(set(endpoints)) != len(endpoints):
        raise error(key, f"lists an endpoint twice: {endpoints!r}")
    return endpoints


def _file_mode(key: str, mode: Any) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise error(key, f"must be a file mode 0000-7777, got {mode!r}")
    return mode


def _octal(key: str, mode: Any) -> int:
    if not isinstance(mode, str) or not _SOCKET_MODE.fullmatch(mode):
        raise error(
            key, f'must be a string of 3 or 4 octal digits like "0660", got {mode!r}'
        )
    return int(mode, 8)


@dataclass(frozen=True)
class BrokerConfig:
    """The ``[broker]`` table: the socket, message limits, shutdown, metrics."""

    # TOML: a string or a list
    endpoint: tuple[str, ...] = setting(
        (DEFAULT_ENDPOINT,), check=_endpoints, live=False
    )
    # TOML: an octal string such as "0660"
    socket_mode: int = setting(0o660, check=_file_mode, toml=_octal, live=False)
    max_message_bytes: int = setting(16 * 1024 * 1024, check=integer(MIN_MESSAGE_BYTES))
    drain_timeout: float = setting(30.0, check=seconds())
    # "host:port", None = no exporter
    metrics_address: str | None = setting(None, check=optional(host_port), live=False)
    # extension: debug, info, warning or error
    log_level: str = setting("info", check=one_of(LOG_LEVELS, fold_case=True))
    # group owning ipc socket files
    socket_group: str | None = setting(None, check=optional(text), live=False)
    # per client process; 0 = no limit
    max_inflight_per_client: int = setting(256, check=integer(0))
    # `broker keygen` secret key file
    curve_secret_key: str | None = setting(None, check=optional(text), live=False)
    # directory of client .key files
    curve_authorized_keys: str | None = setting(None, check=optional(text), live=False)
    # plain tcp on a non-loopback address
    allow_insecure_tcp: bool = setting(False, check=boolean, live=False)
    # spin this long for the next event before sleeping
    busy_poll_us: int = setting(
        0, check=integer(0, maximum=MAX_BUSY_POLL_US, unit="µs")
    )
    # I/O loop processes sharing the endpoints (broker.processes)
    loops: int = setting(1, check=integer(1, maximum=MAX_LOOPS), live=False)

    def __post_init__(self) -> None:
        check_settings(self, "broker.")
        if (self.curve_secret_key is None) != (self.curve_authorized_keys is None):
            raise error(
                "broker.curve_secret_key",
                "curve_secret_key and curve_authorized_keys go together",
            )
        for ep in self.endpoint:
            if ep.startswith("tcp://") and not self.curve_secret_key:
                host = ep[len("tcp://") :].rpartition(":")[0].strip("[]")
                if not loopback(host) and not self.allow_insecure_tcp:
                    raise error(
                        "broker.endpoint",
                        f"{ep} is reachable from other hosts without encryption: set "
                        "curve_secret_key and curve_authorized_keys (`broker keygen`), "
                        "or allow_insecure_tcp = true",
                    )


@dataclass(frozen=True)
class Config:
    """Everything the broker runs with: `BrokerConfig` plus named pools."""

    broker: BrokerConfig
    pools: Mapping[str, PoolConfig]  # read-only mapping; at least one pool
    source: str | None = None  # path of the file loaded, for messages
    sandbox: bool = False  # no DSN anywhere: `broker serve` starts a private server

    def __post_init__(self) -> None:
        if not self.pools:
            raise error("pools", "at least one [pools.NAME] table is needed")
        for name, pool in self.pools.items():
            if pool.name != name:
                raise error(f"pools.{name}", f"holds the pool named {pool.name!r}")
            self._check_loops(name, pool)
        object.__setattr__(self, "pools", types.MappingProxyType(dict(self.pools)))

    def _check_loops(self, name: str, pool: PoolConfig) -> None:
        """Refuse what a pool cannot do once split across broker.loops."""
        loops = self.broker.loops
        if loops > 1 and pool.replicas and pool.read_your_writes != "off":
            # Each loop sees only its own clients' writes; a process's
            # threads (or another process) may talk to another loop.
            raise error(
                f"pools.{name}.read_your_writes",
                f"{pool.read_your_writes!r} needs broker.loops = 1 (each loop "
                'knows only the writes it carried); set it to "off" or use '
                "one loop",
            )
        for key in ("max_size", "replica_max_size"):
            size = getattr(pool, key)
            if size is not None and size < loops:
                raise error(
                    f"pools.{name}.{key}",
                    f"must be at least broker.loops ({loops}): each "
                    f"loop holds a share of the cap, got {size}",
                )

    def with_sandbox_dsn(self, dsn: str) -> Config:
        """Return a copy whose pools without a DSN connect to ``dsn``.

        In a sandbox config that is every pool. The sandbox DSN replaces any
        password the config gave, since the sandbox server has its own.
        """
        pools = {
            name: pool
            if pool.dsn
            else dataclasses.replace(pool, dsn=dsn, password=None)
            for name, pool in self.pools.items()
        }
        return dataclasses.replace(self, pools=pools)
