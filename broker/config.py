"""The broker's configuration: the public model, its load order, reload rules.

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
- Each key is declared once, as a field of `PoolConfig` or `BrokerConfig`
  (broker/tables.py) made by `broker.settings.setting`: its default, its check
  and whether a SIGHUP reload applies it live. The known-key lists and
  `needs_restart` are read from those declarations.
- An empty environment variable counts as unset (systemd ``Environment=X=``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from broker.dsn import DSN_PARTS, has_password, read_password
from broker.settings import (
    ConfigError,
    error,
    from_toml,
    keys,
    restart_keys,
    suggest,
    text,
)
from broker.tables import POOL_NAME, BrokerConfig, Config, PoolConfig, pool_name_error

__all__ = [
    "DEFAULT_POOL",
    "STOP_MARGIN",
    "UNIT_TIMEOUT_STOP_SEC",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "PoolConfig",
    "config_warnings",
    "describe",
    "keep_restart_keys",
    "load",
    "needs_restart",
]

DEFAULT_POOL = "default"
# TimeoutStopSec= of deploy/broker.service, assumed where no unit is installed:
# systemd SIGKILLs a drain longer than this. STOP_MARGIN leaves time to close
# connections after drain_timeout.
UNIT_TIMEOUT_STOP_SEC = 45.0
STOP_MARGIN = 5.0

_PASSWORD_HINT = "use password_file or $BROKER_PASSWORD"  # noqa: S105  advice, not a secret
_BROKER_KEYS = keys(BrokerConfig)
_POOL_KEYS = keys(PoolConfig)
_TOP_KEYS = ("broker", "pools")
_RESTART_KEYS = restart_keys(BrokerConfig)


# -- loading --------------------------------------------------------------------


def _unknown(key: str, word: str, choices: tuple[str, ...]) -> ConfigError:
    """Return the error for an unknown key, with the likeliest intended one."""
    in_pool = key.startswith("pools.")
    top = "." not in key
    if in_pool and word == "password":
        hint = f" ({_PASSWORD_HINT})"
    elif in_pool and word in DSN_PARTS:
        hint = f" ({word} goes in the dsn: mysql://user@host:port/database)"
    elif (top or key.startswith("broker.")) and word in _POOL_KEYS:
        hint = " (it belongs in a [pools.NAME] table)"
    elif top and word in _BROKER_KEYS:
        hint = " (it belongs in the [broker] table)"
    else:
        hint = suggest(word, choices)
    return error(key, f"unknown key{hint}")


def _check_keys(table: dict, prefix: str, known: tuple[str, ...]) -> None:
    for word in table:
        if word not in known:
            raise _unknown(f"{prefix}{word}", word, known)


def _table(value: object, key: str, shape: str, cls: type) -> dict[str, Any]:
    """Check one TOML table against its dataclass's keys; return its values."""
    if not isinstance(value, dict):
        raise error(key, f"must be a table ({shape})")
    _check_keys(value, f"{key}.", keys(cls))
    return from_toml(cls, f"{key}.", value)


def _read_toml(path: str, origin: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise error(origin, f"cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise error(path, f"invalid TOML: {err}") from err


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or None


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
        raise error(f"{err.key} (from {origin})", err.problem) from err


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
    broker_values = _table(doc.get("broker", {}), "broker", "[broker]", BrokerConfig)
    for name, value, origin in (
        ("endpoint", _env(env, "BROKER_ENDPOINT"), "$BROKER_ENDPOINT"),
        ("endpoint", endpoint, "--endpoint"),
        ("log_level", _env(env, "BROKER_LOG_LEVEL"), "$BROKER_LOG_LEVEL"),
        ("log_level", log_level, "--log-level"),
    ):
        if value is not None:
            broker_values[name] = value
            origins[f"broker.{name}"] = origin
    broker = BrokerConfig(**broker_values)
    pool_values = _pool_tables(doc.get("pools", {}))
    _layer_dsn(pool_values, _env(env, "BROKER_DSN"), dsn, origins)
    sandbox = not any("dsn" in values for values in pool_values.values())
    if not sandbox:
        for name, values in pool_values.items():
            if "dsn" not in values:
                hint = " (or --dsn / $BROKER_DSN)" if name == DEFAULT_POOL else ""
                raise error(f"pools.{name}.dsn", f"is required{hint}")
    # A relative password_file is a systemd credential name when systemd passes
    # credentials (LoadCredential=), else a path next to the config file.
    cred_dir = _env(env, "CREDENTIALS_DIRECTORY")
    base = cred_dir or os.path.dirname(os.path.abspath(source or "."))
    env_password = _env(env, "BROKER_PASSWORD")
    pools = {
        name: _pool(name, values, base, env_password)
        for name, values in pool_values.items()
    }
    if env_password is not None and DEFAULT_POOL not in pools:
        raise error("$BROKER_PASSWORD", "there is no [pools.default] to apply it to")
    return Config(broker=broker, pools=pools, source=source, sandbox=sandbox)


def _pool_tables(tables: object) -> dict[str, dict[str, Any]]:
    """Return each ``[pools.NAME]`` table's values, its keys checked; one at least."""
    if not isinstance(tables, dict):
        raise error("pools", "must be a set of [pools.NAME] tables")
    pool_values: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        if not POOL_NAME.fullmatch(name):
            raise pool_name_error(name)
        pool_values[name] = _table(table, f"pools.{name}", "[pools.NAME]", PoolConfig)
    return pool_values


def _layer_dsn(
    pool_values: dict[str, dict[str, Any]],
    env_dsn: str | None,
    flag_dsn: str | None,
    origins: dict[str, str],
) -> None:
    """Let ``$BROKER_DSN``, then ``--dsn``, replace ``[pools.default].dsn``."""
    default_key = f"pools.{DEFAULT_POOL}.dsn"
    if env_dsn is not None:
        pool_values.setdefault(DEFAULT_POOL, {})["dsn"] = env_dsn
        origins[default_key] = "$BROKER_DSN"
    if flag_dsn is not None:
        text("--dsn", flag_dsn)
        if has_password(flag_dsn):
            raise error(
                "--dsn",
                "must not contain a password: the command line is visible to "
                "every local user in /proc/PID/cmdline; put the password in "
                "password_file or $BROKER_PASSWORD",
            )
        pool_values.setdefault(DEFAULT_POOL, {})["dsn"] = flag_dsn
        origins[default_key] = "--dsn"
    if not pool_values:
        pool_values[DEFAULT_POOL] = {}


def _pool(
    name: str, values: dict[str, Any], base: str, env_password: str | None
) -> PoolConfig:
    """Build one pool, its password read from password_file or the environment."""
    key = f"pools.{name}."
    values.setdefault("dsn", "")
    in_dsn = bool(values["dsn"]) and has_password(values["dsn"])
    password_file = values.get("password_file")
    if password_file is not None:
        text(key + "password_file", password_file)  # before it is opened
        if in_dsn:
            raise error(
                key + "password_file",
                "the dsn already contains a password; give it in one place",
            )
        full, secret = read_password(key + "password_file", password_file, base)
        values["password_file"] = full
        values["password"] = secret
    if name == DEFAULT_POOL and env_password is not None:
        if password_file is not None or in_dsn:
            where = "password_file" if password_file is not None else "dsn"
            raise error(
                "$BROKER_PASSWORD",
                f"pools.default already has a password from its {where}; "
                "give it in one place",
            )
        values["password"] = env_password
    return PoolConfig(name=name, **values)


# -- reload and explanation ----------------------------------------------------


def needs_restart(old: Config, new: Config) -> list[str]:
    """Return the dotted keys that changed but apply only after a restart.

    These are the ``[broker]`` keys declared ``live=False``. Everything else in
    `BrokerConfig` and `PoolConfig` applies on reload; adding, removing or
    re-pointing a pool is for the server to handle, and a pool's changed
    ``replicas`` for broker.readsplit, which knows which replicas run.
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
    if has_password(pool.dsn):
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
