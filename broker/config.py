"""The broker's whole configuration model: defaults, validation and load order.

`load()` layers, later winning: built-in defaults, the TOML file (``path`` or
``$BROKER_CONFIG``), the environment (``$BROKER_DSN``, ``$BROKER_ENDPOINT``,
``$BROKER_PASSWORD``, ``$BROKER_LOG_LEVEL``), then command-line flags. It
returns a `Config` or raises `ConfigError` whose message starts with the dotted
key at fault, e.g. ``pools.default.max_size: must be an integer >= 1, got 0``.
No other module reads ``os.environ`` or the file for these keys.

Invariants a reader needs first:

- Secrets never reach logs: a password is excluded from ``repr()``, from
  `PoolConfig.safe_dsn`, from `describe` and from every error message. An error
  about a DSN names the part at fault, never the whole string.
- A password inside a DSN given on the command line is refused, because
  ``/proc/PID/cmdline`` shows it to every local user; the file and the
  environment may carry one. A password is given in one place only: the DSN,
  ``password_file``, or ``$BROKER_PASSWORD`` (default pool only).
- The dataclasses validate themselves in ``__post_init__``, so a `PoolConfig`
  built with `dataclasses.replace` is checked exactly like one from the file.
- When no DSN comes from anywhere the config is a *sandbox* config: every pool
  has ``dsn == ""`` and ``broker serve`` starts a private MariaDB and fills the
  DSN in with `Config.with_sandbox_dsn`.
- Each field's trailing comment says whether a SIGHUP reload applies it live
  or it needs a restart; `needs_restart` lists the latter.
- An empty environment variable counts as unset (systemd ``Environment=X=``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pymysql.charset import charset_by_name

from client.wire.protocol import DEFAULT_ENDPOINT

DEFAULT_POOL = "default"
DSN_SCHEMES = ("mysql", "mariadb")
ENDPOINT_SCHEMES = ("ipc://", "tcp://", "inproc://")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_MESSAGE_BYTES = 1024  # smaller could not carry a request header and its SQL
MAX_BUSY_POLL_US = 100_000  # beyond this a spin is no longer a short wait
MAX_LOOPS = 64  # processes; more than cores only adds switching
MAX_CONNECT_TIMEOUT = 31536000.0  # pymysql refuses anything above one year
DEFAULT_CONNECT_TIMEOUT = 10.0  # pymysql's own default
DEFAULT_CHARSET = "utf8mb4"
# TimeoutStopSec= of deploy/broker.service, assumed where no unit is installed:
# systemd SIGKILLs a drain longer than this. STOP_MARGIN leaves time to close
# connections after drain_timeout.
UNIT_TIMEOUT_STOP_SEC = 45.0
STOP_MARGIN = 5.0
READ_YOUR_WRITES = ("off", "process", "host")
MIN_CHECK_INTERVAL = 0.05  # replica lag checks faster than this are load, not news

_POOL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SOCKET_MODE = re.compile(r"[0-7]{3,4}")
_DSN_PARAMS = ("charset", "connect_timeout", "unix_socket")
# Settings that belong inside the DSN, for a hint when they appear as pool keys.
_DSN_PARTS = ("host", "port", "user", "database", "unix_socket", "charset")
_PASSWORD_HINT = "use password_file or $BROKER_PASSWORD"  # noqa: S105  advice, not a secret


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range.

    The message starts with the dotted key at fault and states the bad value;
    `key` holds that key (or None) and `problem` the rest, so callers can
    re-word where the value came from. ``broker check-config`` prints it as is.
    """

    def __init__(
        self, message: str, *, key: str | None = None, problem: str | None = None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.problem = message if problem is None else problem


def _error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}", key=key, problem=problem)


# -- value checks shared by the dataclasses -----------------------------------


def _int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _error(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _seconds(key: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as float seconds: finite, >= 0 (or > 0 if ``positive``)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise _error(key, f"must be a number of seconds {bound}, got {value!r}")
    return float(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _error(key, f"must be true or false, got {value!r}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(key, f"must be a non-empty string, got {value!r}")
    return value


def _strings(key: str, value: object) -> tuple[str, ...]:
    """Accept a string or a list of strings, as TOML gives them."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) for v in value
    ):
        raise _error(key, f"must be a string or a list of strings, got {value!r}")
    for item in value:
        _text(key, item)
    return tuple(value)


def _endpoint(key: str, value: str) -> str:
    if not value.startswith(ENDPOINT_SCHEMES):
        raise _error(key, f"must start with ipc://, tcp:// or inproc://, got {value!r}")
    scheme, _, rest = value.partition("://")
    if not rest:
        raise _error(key, f"needs an address after {scheme}://, got {value!r}")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise _error(key, f"must be tcp://HOST:PORT, got {value!r}")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(key: str, value: object) -> str:
    text = _text(key, value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _error(key, f'must be "HOST:PORT", got {value!r}')
    return text


# -- the dataclasses ----------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig:
    """One ``[pools.NAME]`` table, with its DSN parsed into connection arguments.

    ``password`` is the resolved secret (from the DSN, ``password_file`` or
    ``$BROKER_PASSWORD``); ``password_file`` is the absolute path it was read
    from, kept for messages. Fields after ``read_only`` come from the DSN and
    are not TOML keys. ``dsn == ""`` only in a sandbox config.
    """

    name: str
    dsn: str
    password_file: str | None = None  # live: new connections use the new secret
    min_size: int = 1  # live on reload
    max_size: int = 10  # live
    queue_timeout: float = 5.0  # live
    max_lifetime: float = 3600.0  # live
    idle_timeout: float = 600.0  # live
    max_uses: int = 0  # live; 0 = never recycle by use count
    pipeline_depth: int = 1  # live; plain reads one connection may hold at once
    init_sql: tuple[str, ...] = ()  # live; applies to new connections
    query_timeout: float = 30.0  # live
    transaction_idle_timeout: float = 60.0  # live
    max_pins_per_client: int = 8  # live; see broker.pinlimit; 0 = no cap
    # live; how long a cancelled statement may take to stop before its
    # connection is dropped. Above the client's 2 s GRACE a cancelled write's
    # caller may give up first and hear OutcomeUnknown.
    kill_grace: float = 1.5
    read_only: bool = False  # new connections; SET SESSION TRANSACTION READ ONLY
    allowed_keys: tuple[str, ...] = ()  # live; tcp client public keys (z85); () = all
    replicas: tuple[str, ...] = ()  # restart; DSNs of read-only copies of dsn's server
    replica_max_lag: float = 5.0  # live; s behind the primary a replica may serve at
    replica_max_size: int | None = None  # live; connections per replica; None: max_size
    replica_check_interval: float = 1.0  # live; s between lag checks of each replica
    read_your_writes: str = "process"  # live; "off", "process" or "host"
    replica_wait_timeout: float = 0.5  # live; s a read waits for a replica to catch up
    password: str | None = field(default=None, repr=False)  # like password_file
    host: str | None = field(default=None, init=False)
    port: int = field(default=3306, init=False)
    user: str | None = field(default=None, init=False)
    database: str | None = field(default=None, init=False)
    unix_socket: str | None = field(default=None, init=False)
    charset: str = field(default=DEFAULT_CHARSET, init=False)
    connect_timeout: float = field(default=DEFAULT_CONNECT_TIMEOUT, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _POOL_NAME.fullmatch(self.name):
            raise _error(
                f"pools.{self.name}",
                f"pool name must match [A-Za-z0-9_-]+, got {self.name!r}",
            )
        key = f"pools.{self.name}."
        checks: dict[str, Callable[[str, object], object]] = {
            "min_size": lambda k, v: _int(k, v, 0),
            "max_size": lambda k, v: _int(k, v, 1),
            "max_uses": lambda k, v: _int(k, v, 0),
            "pipeline_depth": lambda k, v: _int(k, v, 1),
            "max_pins_per_client": lambda k, v: _int(k, v, 0),
            "queue_timeout": _seconds,
            "idle_timeout": _seconds,
            # 0 would read as "no limit" to some and "instantly" to others: refuse it.
            "max_lifetime": lambda k, v: _seconds(k, v, positive=True),
            "query_timeout": lambda k, v: _seconds(k, v, positive=True),
            "transaction_idle_timeout": lambda k, v: _seconds(k, v, positive=True),
            "kill_grace": lambda k, v: _seconds(k, v, positive=True),
            "init_sql": _strings,
            "read_only": _bool,
            "allowed_keys": _strings,
            "replicas": _strings,
            "replica_max_lag": lambda k, v: _seconds(k, v, positive=True),
            "replica_check_interval": lambda k, v: _seconds(k, v, positive=True),
            "replica_wait_timeout": _seconds,
        }
        for name, check in checks.items():
            object.__setattr__(self, name, check(key + name, getattr(self, name)))
        if self.min_size > self.max_size:
            raise _error(
                key + "min_size",
                f"must be <= max_size ({self.max_size}), got {self.min_size}",
            )
        if self.replica_max_size is not None:
            _int(key + "replica_max_size", self.replica_max_size, 1)
        if self.read_your_writes not in READ_YOUR_WRITES:
            raise _error(
                key + "read_your_writes",
                f"must be one of {', '.join(READ_YOUR_WRITES)}, "
                f"got {self.read_your_writes!r}",
            )
        if self.replica_check_interval < MIN_CHECK_INTERVAL:
            raise _error(
                key + "replica_check_interval",
                f"must be at least {MIN_CHECK_INTERVAL} s, "
                f"got {self.replica_check_interval!r}",
            )
        for dsn in self.replicas:
            _parse_replica_dsn(key + "replicas", dsn)
        if self.password_file is not None:
            _text(key + "password_file", self.password_file)
        if self.password is not None and not isinstance(self.password, str):
            raise _error(key + "password", "must be a string")
        if not isinstance(self.dsn, str):
            raise _error(
                key + "dsn", f"must be a string, got {type(self.dsn).__name__}"
            )
        if not self.dsn:
            return  # sandbox: with_sandbox_dsn() fills it in
        parts = _parse_dsn(key + "dsn", self.dsn)
        dsn_password = parts.pop("password")
        if dsn_password is not None:
            if self.password is not None and self.password != dsn_password:
                raise _error(
                    key + "dsn",
                    "has a password and another is given separately "
                    "(password_file or $BROKER_PASSWORD); keep one",
                )
            object.__setattr__(self, "password", dsn_password)
        for name, value in parts.items():
            object.__setattr__(self, name, value)
        for dsn in self.replicas:
            replica = _parse_replica_dsn(key + "replicas", dsn)
            if (replica["host"], replica["port"], replica["unix_socket"]) == (
                self.host,
                self.port,
                self.unix_socket,
            ):
                raise _error(
                    key + "replicas",
                    f"lists the primary itself ({_strip_password(dsn)}); a replica "
                    "is another server",
                )

    def __repr__(self) -> str:
        # The generated repr would show the dsn, and with it any password in it.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["dsn"] = _strip_password(self.dsn)
        shown = ", ".join(
            f"{f.name}={values[f.name]!r}" for f in dataclasses.fields(self) if f.repr
        )
        return f"PoolConfig({shown})"

    def connect_args(self) -> dict:
        """Return the keyword arguments for ``pymysql.connect()``."""
        if not self.dsn:
            raise _error(f"pools.{self.name}.dsn", "not set (sandbox not started)")
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
        return _strip_password(self.dsn)


@dataclass(frozen=True)
class BrokerConfig:
    """The ``[broker]`` table: the socket, message limits, shutdown, metrics."""

    endpoint: tuple[str, ...] = (DEFAULT_ENDPOINT,)  # restart; TOML: string or list
    socket_mode: int = 0o660  # restart; TOML: an octal string such as "0660"
    max_message_bytes: int = 16 * 1024 * 1024  # live
    drain_timeout: float = 30.0  # live
    metrics_address: str | None = None  # restart; "host:port", None = no exporter
    log_level: str = "info"  # live; extension: debug, info, warning or error
    socket_group: str | None = None  # restart; group owning ipc socket files
    max_inflight_per_client: int = 256  # live; per client process; 0 = no limit
    curve_secret_key: str | None = None  # restart; `broker keygen` secret key file
    curve_authorized_keys: str | None = None  # restart; directory of client .key files
    allow_insecure_tcp: bool = False  # restart; plain tcp on a non-loopback address
    busy_poll_us: int = 0  # live; spin this long for the next event before sleeping
    loops: int = 1  # restart; I/O loop processes sharing the endpoints (broker.loops)

    def __post_init__(self) -> None:
        endpoints = _strings("broker.endpoint", self.endpoint)
        if not endpoints:
            raise _error("broker.endpoint", "must name at least one endpoint, got []")
        for ep in endpoints:
            _endpoint("broker.endpoint", ep)
        if len(set(endpoints)) != len(endpoints):
            raise _error("broker.endpoint", f"lists an endpoint twice: {endpoints!r}")
        object.__setattr__(self, "endpoint", endpoints)
        mode = self.socket_mode
        if (
            isinstance(mode, bool)
            or not isinstance(mode, int)
            or not 0 <= mode <= 0o7777
        ):
            raise _error(
                "broker.socket_mode", f"must be a file mode 0000-7777, got {mode!r}"
            )
        _int("broker.max_message_bytes", self.max_message_bytes, MIN_MESSAGE_BYTES)
        object.__setattr__(
            self, "drain_timeout", _seconds("broker.drain_timeout", self.drain_timeout)
        )
        if self.metrics_address is not None:
            _host_port("broker.metrics_address", self.metrics_address)
        level = self.log_level
        if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
            raise _error(
                "broker.log_level",
                f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}",
            )
        object.__setattr__(self, "log_level", level.lower())
        _int("broker.max_inflight_per_client", self.max_inflight_per_client, 0)
        _int("broker.busy_poll_us", self.busy_poll_us, 0)
        if self.busy_poll_us > MAX_BUSY_POLL_US:
            raise _error(
                "broker.busy_poll_us",
                f"must be at most {MAX_BUSY_POLL_US} (µs), got {self.busy_poll_us}",
            )
        _bool("broker.allow_insecure_tcp", self.allow_insecure_tcp)
        _int("broker.loops", self.loops, 1)
        if self.loops > MAX_LOOPS:
            raise _error(
                "broker.loops", f"must be at most {MAX_LOOPS}, got {self.loops}"
            )
        for key in ("socket_group", "curve_secret_key", "curve_authorized_keys"):
            if getattr(self, key) is not None:
                _text(f"broker.{key}", getattr(self, key))
        if (self.curve_secret_key is None) != (self.curve_authorized_keys is None):
            raise _error(
                "broker.curve_secret_key",
                "curve_secret_key and curve_authorized_keys go together",
            )
        for ep in endpoints:
            if ep.startswith("tcp://") and not self.curve_secret_key:
                host = ep[len("tcp://") :].rpartition(":")[0].strip("[]")
                if not _loopback(host) and not self.allow_insecure_tcp:
                    raise _error(
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
            raise _error("pools", "at least one [pools.NAME] table is needed")
        for name, pool in self.pools.items():
            if pool.name != name:
                raise _error(f"pools.{name}", f"holds the pool named {pool.name!r}")
            if (
                self.broker.loops > 1
                and pool.replicas
                and pool.read_your_writes != "off"
            ):
                # Each loop sees only its own clients' writes; a process's
                # threads (or another process) may talk to another loop.
                raise _error(
                    f"pools.{name}.read_your_writes",
                    f"{pool.read_your_writes!r} needs broker.loops = 1 (each loop "
                    'knows only the writes it carried); set it to "off" or use '
                    "one loop",
                )
            for key in ("max_size", "replica_max_size"):
                size = getattr(pool, key)
                if size is not None and size < self.broker.loops:
                    raise _error(
                        f"pools.{name}.{key}",
                        f"must be at least broker.loops ({self.broker.loops}): each "
                        f"loop holds a share of the cap, got {size}",
                    )
        object.__setattr__(self, "pools", types.MappingProxyType(dict(self.pools)))

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


# -- DSN parsing ----------------------------------------------------------------


def _parse_dsn(key: str, dsn: str) -> dict:
    """Split ``mysql://user:password@host:port/database?params`` into parts.

    Error messages name only the part at fault: the DSN may hold a password.
    """
    try:
        split = urllib.parse.urlsplit(dsn)
    except ValueError:
        raise _error(key, "is not a URL (a [ without its ]?)") from None
    if split.scheme not in DSN_SCHEMES:
        shown = split.scheme or dsn.partition(":")[0][:20]
        raise _error(
            key, f"must start with mysql:// or mariadb://, got {shown + '://'!r}"
        )
    # An unescaped @ : / ? or # in a password moves the rest of it into the path,
    # query or fragment; say so without echoing any of it.
    if ("@" in dsn and "@" not in split.netloc) or split.fragment:
        raise _error(
            key,
            "is malformed; percent-encode special characters (@ : / ? #) "
            "in the user and password",
        )
    try:
        port = split.port
    except ValueError:
        raise _error(key, "port must be a number from 1 to 65535") from None
    database = urllib.parse.unquote(split.path.lstrip("/")) or None
    if database is not None and "/" in database:
        raise _error(key, f"database name must not contain '/', got {database!r}")
    params: dict[str, str] = {}
    try:
        pairs = urllib.parse.parse_qsl(
            split.query, keep_blank_values=True, strict_parsing=bool(split.query)
        )
    except ValueError:
        raise _error(key, "query string is malformed") from None
    for name, value in pairs:
        if name not in _DSN_PARAMS:
            raise _error(
                key,
                f"unknown parameter {name!r}{_suggest(name, _DSN_PARAMS)};"
                f" known: {', '.join(_DSN_PARAMS)}",
            )
        if name in params:
            raise _error(key, f"parameter {name!r} given twice")
        params[name] = value
    charset = params.get("charset", DEFAULT_CHARSET)
    if charset_by_name(charset) is None:
        raise _error(key, f"unknown charset {charset!r}")
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    if "connect_timeout" in params:
        try:
            connect_timeout = float(params["connect_timeout"])
        except ValueError:
            connect_timeout = math.nan
        if not 0 < connect_timeout <= MAX_CONNECT_TIMEOUT:
            raise _error(
                key,
                "connect_timeout must be seconds > 0 and <= 31536000, "
                f"got {params['connect_timeout']!r}",
            )
    unix_socket = params.get("unix_socket")
    if unix_socket == "":
        raise _error(key, "unix_socket must be a path, got ''")
    host = split.hostname
    if not host and not unix_socket:
        raise _error(key, "needs a host (mysql://user@HOST/db) or ?unix_socket=PATH")
    user = split.username
    password = split.password
    return {
        "host": host,
        "port": port or 3306,
        "user": urllib.parse.unquote(user) if user else None,
        "password": urllib.parse.unquote(password) if password is not None else None,
        "database": database,
        "unix_socket": unix_socket,
        "charset": charset,
        "connect_timeout": connect_timeout,
    }


def _parse_replica_dsn(key: str, dsn: str) -> dict:
    """Check one entry of ``replicas``: a DSN without a password of its own."""
    parts = _parse_dsn(key, dsn)
    if parts["password"] is not None:
        raise _error(
            key,
            "a replica DSN must not contain a password: replicas use the pool's "
            "user and password (dsn, password_file or $BROKER_PASSWORD)",
        )
    return parts


def _strip_password(dsn: str) -> str:
    split = urllib.parse.urlsplit(dsn)
    userinfo, at, hostport = split.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if at and user else hostport
    return urllib.parse.urlunsplit(split._replace(netloc=netloc))


def _dsn_has_password(dsn: str) -> bool:
    try:
        return urllib.parse.urlsplit(dsn).password is not None
    except ValueError:
        return False  # not a URL: PoolConfig reports that, without echoing it


# -- loading --------------------------------------------------------------------

_BROKER_KEYS = tuple(f.name for f in dataclasses.fields(BrokerConfig))
_POOL_KEYS = tuple(
    f.name
    for f in dataclasses.fields(PoolConfig)
    if f.init and f.name not in ("name", "password")
)
_TOP_KEYS = ("broker", "pools")


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown(key: str, word: str, choices: tuple[str, ...]) -> ConfigError:
    """Return the error for an unknown key, with the likeliest intended one."""
    in_pool = key.startswith("pools.")
    top = "." not in key
    if in_pool and word == "password":
        hint = f" ({_PASSWORD_HINT})"
    elif in_pool and word in _DSN_PARTS:
        hint = f" ({word} goes in the dsn: mysql://user@host:port/database)"
    elif (top or key.startswith("broker.")) and word in _POOL_KEYS:
        hint = " (it belongs in a [pools.NAME] table)"
    elif top and word in _BROKER_KEYS:
        hint = " (it belongs in the [broker] table)"
    else:
        hint = _suggest(word, choices)
    return _error(key, f"unknown key{hint}")


def _check_keys(table: dict, prefix: str, known: tuple[str, ...]) -> None:
    for word in table:
        if word not in known:
            raise _unknown(f"{prefix}{word}", word, known)


def _read_toml(path: str, origin: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise _error(origin, f"cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise _error(path, f"invalid TOML: {err}") from err


def _read_password(key: str, path: str, base: str) -> tuple[str, str]:
    """Return the resolved path and the stripped contents of a password file."""
    full = os.path.join(base, path)
    try:
        with open(full, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as err:
        raise _error(key, f"cannot read {full}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise _error(key, f"{full} is not UTF-8 text") from err
    if not secret:
        raise _error(key, f"{full} is empty")
    return full, secret


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or None


def _layer(
    values: dict, name: str, value: str | None, origins: dict, origin: str
) -> None:
    """Let ``value`` (from the environment or a flag) replace ``[broker] name``."""
    if value is not None:
        values[name] = value
        origins[f"broker.{name}"] = origin


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    dsn: str | None = None,
    endpoint: str | None = None,
    log_level: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from defaults, the file, the environment and flags.

    Args:
        path: the TOML file (``--config``); None falls back to ``$BROKER_CONFIG``,
            then to no file at all.
        dsn: ``--dsn``; defines or overrides ``[pools.default].dsn``. It must
            not contain a password.
        endpoint: ``--endpoint``; replaces ``broker.endpoint``.
        log_level: ``--log-level``; replaces ``broker.log_level``.
        environ: the environment to read; None means ``os.environ``.

    Raises:
        ConfigError: naming the key at fault, and where the value came from
            when that was not the file.
    """
    env = os.environ if environ is None else environ
    origins: dict[str, str] = {}
    try:
        return _load(path, dsn, endpoint, log_level, env, origins)
    except ConfigError as err:
        origin = origins.get(err.key or "")
        if origin is None:
            raise
        raise _error(f"{err.key} (from {origin})", err.problem) from err


def _load(
    path: str | os.PathLike[str] | None,
    dsn: str | None,
    endpoint: str | None,
    log_level: str | None,
    env: Mapping[str, str],
    origins: dict[str, str],
) -> Config:
    source: str | None = None
    doc: dict = {}
    if path is not None:
        source = os.fspath(path)
        doc = _read_toml(source, "--config")
    elif (env_path := _env(env, "BROKER_CONFIG")) is not None:
        source = env_path
        doc = _read_toml(source, "$BROKER_CONFIG")
    _check_keys(doc, "", _TOP_KEYS)

    broker_table = doc.get("broker", {})
    if not isinstance(broker_table, dict):
        raise _error("broker", "must be a table ([broker])")
    _check_keys(broker_table, "broker.", _BROKER_KEYS)
    broker_values = dict(broker_table)
    for name, value, origin in (
        ("endpoint", _env(env, "BROKER_ENDPOINT"), "$BROKER_ENDPOINT"),
        ("endpoint", endpoint, "--endpoint"),
        ("log_level", _env(env, "BROKER_LOG_LEVEL"), "$BROKER_LOG_LEVEL"),
        ("log_level", log_level, "--log-level"),
    ):
        _layer(broker_values, name, value, origins, origin)
    broker = _build_broker(broker_values)

    pools_table = doc.get("pools", {})
    if not isinstance(pools_table, dict):
        raise _error("pools", "must be a set of [pools.NAME] tables")
    pool_values: dict[str, dict] = {}
    for name, table in pools_table.items():
        if not _POOL_NAME.fullmatch(name):
            raise _error(
                f"pools.{name}", f"pool name must match [A-Za-z0-9_-]+, got {name!r}"
            )
        if not isinstance(table, dict):
            raise _error(f"pools.{name}", "must be a table ([pools.NAME])")
        _check_keys(table, f"pools.{name}.", _POOL_KEYS)
        if "dsn" in table:
            _text(f"pools.{name}.dsn", table["dsn"])
        pool_values[name] = dict(table)

    default_key = f"pools.{DEFAULT_POOL}.dsn"
    env_dsn = _env(env, "BROKER_DSN")
    if env_dsn is not None:
        pool_values.setdefault(DEFAULT_POOL, {})["dsn"] = env_dsn
        origins[default_key] = "$BROKER_DSN"
    if dsn is not None:
        _text("--dsn", dsn)
        if _dsn_has_password(dsn):
            raise _error(
                "--dsn",
                "must not contain a password: the command line is visible to "
                "every local user in /proc/PID/cmdline; put the password in "
                "password_file or $BROKER_PASSWORD",
            )
        pool_values.setdefault(DEFAULT_POOL, {})["dsn"] = dsn
        origins[default_key] = "--dsn"
    if not pool_values:
        pool_values[DEFAULT_POOL] = {}
    sandbox = not any("dsn" in values for values in pool_values.values())
    if not sandbox:
        for name, values in pool_values.items():
            if "dsn" not in values:
                hint = " (or --dsn / $BROKER_DSN)" if name == DEFAULT_POOL else ""
                raise _error(f"pools.{name}.dsn", f"is required{hint}")

    # A relative password_file is a systemd credential name when systemd passes
    # credentials (LoadCredential=), else a path next to the config file.
    cred_dir = _env(env, "CREDENTIALS_DIRECTORY")
    base = cred_dir or os.path.dirname(os.path.abspath(source or "."))
    env_password = _env(env, "BROKER_PASSWORD")
    pools: dict[str, PoolConfig] = {}
    for name, values in pool_values.items():
        key = f"pools.{name}."
        values.setdefault("dsn", "")
        for listed in ("init_sql", "replicas"):
            if listed in values:
                values[listed] = _strings(key + listed, values[listed])
        password_file = values.get("password_file")
        if password_file is not None:
            _text(key + "password_file", password_file)
            if values["dsn"] and _dsn_has_password(values["dsn"]):
                raise _error(
                    key + "password_file",
                    "the dsn already contains a password; give it in one place",
                )
            full, secret = _read_password(key + "password_file", password_file, base)
            values["password_file"] = full
            values["password"] = secret
        if name == DEFAULT_POOL and env_password is not None:
            if password_file is not None or (
                values["dsn"] and _dsn_has_password(values["dsn"])
            ):
                where = "password_file" if password_file is not None else "dsn"
                raise _error(
                    "$BROKER_PASSWORD",
                    f"pools.default already has a password from its {where}; "
                    "give it in one place",
                )
            values["password"] = env_password
        pools[name] = PoolConfig(name=name, **values)
    if env_password is not None and DEFAULT_POOL not in pools:
        raise _error("$BROKER_PASSWORD", "there is no [pools.default] to apply it to")
    return Config(broker=broker, pools=pools, source=source, sandbox=sandbox)


def _build_broker(values: dict) -> BrokerConfig:
    if "endpoint" in values:
        values["endpoint"] = _strings("broker.endpoint", values["endpoint"])
    if "socket_mode" in values:
        mode = values["socket_mode"]
        if not isinstance(mode, str) or not _SOCKET_MODE.fullmatch(mode):
            raise _error(
                "broker.socket_mode",
                f'must be a string of 3 or 4 octal digits like "0660", got {mode!r}',
            )
        values["socket_mode"] = int(mode, 8)
    return BrokerConfig(**values)


# -- reload and explanation ----------------------------------------------------

_RESTART_KEYS = (
    "endpoint",
    "loops",
    "socket_mode",
    "metrics_address",
    "socket_group",
    "curve_secret_key",
    "curve_authorized_keys",
    "allow_insecure_tcp",
)


def needs_restart(old: Config, new: Config) -> list[str]:
    """Return the dotted keys that changed but apply only after a restart.

    Everything else in `BrokerConfig` and `PoolConfig` applies on reload; adding,
    removing or re-pointing a pool is for the server to handle.
    """
    return [
        f"broker.{name}"
        for name in _RESTART_KEYS
        if getattr(old.broker, name) != getattr(new.broker, name)
    ]


def keep_restart_keys(old: Config, new: Config) -> Config:
    """Return new with the restart-only [broker] keys as they run in old."""
    kept = {name: getattr(old.broker, name) for name in _RESTART_KEYS}
    return dataclasses.replace(new, broker=dataclasses.replace(new.broker, **kept))


def _password_origin(pool: PoolConfig) -> str:
    if pool.password is None:
        return "none"
    if pool.password_file is not None:
        return f"from {pool.password_file}"
    if _dsn_has_password(pool.dsn):
        return "in the dsn"
    return "given separately ($BROKER_PASSWORD)"


def config_warnings(config: Config, stop_timeout: float | None = None) -> list[str]:
    """Return what is valid but will not work as meant, one line each.

    stop_timeout is the installed unit's TimeoutStopSec= when known; without
    it the shipped unit's is assumed.
    """
    drain = config.broker.drain_timeout
    limit = UNIT_TIMEOUT_STOP_SEC if stop_timeout is None else stop_timeout
    if drain + STOP_MARGIN <= limit:
        return []
    unit = "the shipped unit's" if stop_timeout is None else "broker.service's"
    return [
        f"broker.drain_timeout: {drain:g}s does not fit in {unit} "
        f"TimeoutStopSec={limit:g}s with {STOP_MARGIN:g}s to close "
        "connections; systemd would SIGKILL the broker mid-drain: lower "
        "drain_timeout or raise TimeoutStopSec in a drop-in (deploy/README.md)"
    ]


def describe(config: Config) -> str:
    """Return a short human summary for ``broker check-config``, without secrets."""
    b = config.broker
    lines = [
        f"config: {config.source or '(no file: defaults, environment, flags)'}",
        f"endpoint: {', '.join(b.endpoint)} (socket mode {b.socket_mode:04o})",
        f"max_message_bytes: {b.max_message_bytes}, "
        f"drain_timeout: {b.drain_timeout:g}s, log_level: {b.log_level}",
        f"metrics: {b.metrics_address or 'off'}",
    ]
    if b.loops > 1:
        lines.append(f"loops: {b.loops} (each pool's sizes are split across them)")
    if config.sandbox:
        lines.append("no dsn given: `broker serve` starts a sandbox MariaDB")
    for pool in config.pools.values():
        where = "sandbox" if not pool.dsn else pool.safe_dsn()
        lines += [
            f"pool {pool.name}: {where}",
            f"  password: {_password_origin(pool)}",
            f"  size {pool.min_size}..{pool.max_size}, "
            f"queue_timeout {pool.queue_timeout:g}s, "
            f"query_timeout {pool.query_timeout:g}s, "
            f"transaction_idle_timeout {pool.transaction_idle_timeout:g}s",
            f"  max_pins_per_client {pool.max_pins_per_client or 'unlimited'}"
            + (
                f" (one client may hold {pool.max_size - 1} of max_size "
                f"{pool.max_size})"
                if 1 <= pool.max_size - 1 < pool.max_pins_per_client
                else ""
            ),
            f"  recycle: max_lifetime {pool.max_lifetime:g}s, "
            f"idle_timeout {pool.idle_timeout:g}s, "
            f"max_uses {pool.max_uses or 'unlimited'}",
            *(
                [
                    f"  replicas: {', '.join(pool.replicas)} (max lag "
                    f"{pool.replica_max_lag:g}s, checked every "
                    f"{pool.replica_check_interval:g}s, read_your_writes "
                    f"{pool.read_your_writes})"
                ]
                if pool.replicas
                else []
            ),
            f"  init_sql: {len(pool.init_sql)} statement(s)"
            + (", read_only" if pool.read_only else "")
            + (
                f", pipeline_depth {pool.pipeline_depth}"
                if pool.pipeline_depth > 1
                else ""
            ),
        ]
    return "\n".join(lines)
