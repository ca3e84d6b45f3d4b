"""How a config key is declared once: its default, its check, its reload rule.

Each key of ``[broker]`` and ``[pools.NAME]`` is one dataclass field made by
`setting` (gunicorn's one-``Setting``-per-key idea, kept inside the
dataclasses). The field's metadata carries the check and whether a SIGHUP
reload applies the key live, so validation, the known-key lists and the
restart-only keys all read the same declaration.

Invariants a reader needs first:

- A check takes the dotted key and the value and returns the value to store
  (normalised: a list becomes a tuple, an int of seconds a float) or raises
  `ConfigError` naming the key. Value checks live here; rules that tie keys
  together stay in the dataclasses' ``__post_init__``.
- A field without `setting` metadata is not a TOML key (a pool's ``name``, its
  resolved ``password``, the parts parsed from its DSN).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENDPOINT_SCHEMES = ("ipc://", "tcp://", "inproc://")

Check = Callable[[str, Any], Any]
_META = "broker.setting"


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


def error(key: str, problem: str) -> ConfigError:
    """Return the `ConfigError` for ``key``, its message "KEY: PROBLEM"."""
    return ConfigError(f"{key}: {problem}", key=key, problem=problem)


# -- the declaration ------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What one key's field carries besides its default."""

    check: Check | None  # run by `check_settings` in __post_init__
    live: bool  # a SIGHUP reload applies it; else it waits for a restart
    toml: Check | None  # turns the TOML spelling into the field's, e.g. "0660"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    live: bool = True,
    toml: Check | None = None,
) -> Any:
    """Return the dataclass field for one config key (no default: required)."""
    return dataclasses.field(
        default=default, metadata={_META: Setting(check, live, toml)}
    )


def _declared(cls: type) -> list[tuple[str, Setting]]:
    return [
        (f.name, f.metadata[_META])
        for f in dataclasses.fields(cls)
        if _META in f.metadata
    ]


def keys(cls: type) -> tuple[str, ...]:
    """Return the TOML keys of a table's dataclass, in declaration order."""
    return tuple(name for name, _ in _declared(cls))


def restart_keys(cls: type) -> tuple[str, ...]:
    """Return the keys a reload cannot apply, in declaration order."""
    return tuple(name for name, s in _declared(cls) if not s.live)


def check_settings(obj: object, prefix: str) -> None:
    """Run each key's check on a frozen dataclass, storing what it returns."""
    for name, s in _declared(type(obj)):
        if s.check is not None:
            value = s.check(prefix + name, getattr(obj, name))
            object.__setattr__(obj, name, value)


def from_toml(cls: type, prefix: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """Return a table's values with each TOML spelling turned into the field's."""
    values = dict(table)
    for name, s in _declared(cls):
        if s.toml is not None and name in values:
            values[name] = s.toml(prefix + name, values[name])
    return values


def suggest(word: str, choices: tuple[str, ...]) -> str:
    """Return " (did you mean X?)" for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# -- value checks ----------------------------------------------------------------


def integer(minimum: int, maximum: int | None = None, unit: str = "") -> Check:
    """Return a check for an integer in [minimum, maximum]."""

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise error(key, f"must be an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            shown = f"{maximum} ({unit})" if unit else f"{maximum}"
            raise error(key, f"must be at most {shown}, got {value}")
        return value

    return check


def seconds(*, positive: bool = False, at_least: float = 0.0) -> Check:
    """Return a check for float seconds: finite, >= 0 (or > 0 if ``positive``).

    ``at_least`` is a floor the key's meaning sets, reported on its own.
    """

    def check(key: str, value: Any) -> float:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0)
        )
        if not ok:
            bound = "> 0" if positive else ">= 0"
            raise error(key, f"must be a number of seconds {bound}, got {value!r}")
        if value < at_least:
            raise error(key, f"must be at least {at_least} s, got {value!r}")
        return float(value)

    return check


def boolean(key: str, value: Any) -> bool:
    """Check a TOML boolean."""
    if not isinstance(value, bool):
        raise error(key, f"must be true or false, got {value!r}")
    return value


def text(key: str, value: Any) -> str:
    """Check a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise error(key, f"must be a non-empty string, got {value!r}")
    return value


def strings(key: str, value: Any) -> tuple[str, ...]:
    """Accept a string or a list of strings, as TOML gives them."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) for v in value
    ):
        raise error(key, f"must be a string or a list of strings, got {value!r}")
    for item in value:
        text(key, item)
    return tuple(value)


def one_of(choices: tuple[str, ...], *, fold_case: bool = False) -> Check:
    """Return a check for one of ``choices``, stored lowercase if ``fold_case``."""

    def check(key: str, value: Any) -> str:
        word = value.lower() if fold_case and isinstance(value, str) else value
        if not isinstance(word, str) or word not in choices:
            raise error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return word

    return check


def optional(inner: Check) -> Check:
    """Return a check that lets None (the key unset) through."""

    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def endpoint(key: str, value: str) -> str:
    """Check one ZeroMQ endpoint the broker binds."""
    if not value.startswith(ENDPOINT_SCHEMES):
        raise error(key, f"must start with ipc://, tcp:// or inproc://, got {value!r}")
    scheme, _, rest = value.partition("://")
    if not rest:
        raise error(key, f"needs an address after {scheme}://, got {value!r}")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise error(key, f"must be tcp://HOST:PORT, got {value!r}")
    return value


def host_port(key: str, value: Any) -> str:
    """Check a ``"HOST:PORT"`` listening address."""
    checked = text(key, value)
    host, _, port = checked.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise error(key, f'must be "HOST:PORT", got {value!r}')
    return checked


def loopback(host: str) -> bool:
    """Return whether ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
