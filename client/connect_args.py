"""Which ``pymysql.connect()`` keyword arguments `client.dbapi.connect` honours.

Code moved from pymysql, Django's MySQL backend and SQLAlchemy's dialects
pass them. Those that mean something for a broker connection are honoured as
pymysql does; those that only sized or reached pymysql's own socket are
accepted and do nothing; those that cannot be honoured raise
`NotSupportedError` naming them and what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymysql.constants import CLIENT

from client.errors import NotSupportedError

# pymysql.connect() arguments that name where and how to reach MySQL: the broker
# pool's dsn decides all of that, so a value here cannot be honoured.
_POOL_ARGS = (
    "host",
    "user",
    "password",
    "passwd",
    "database",
    "db",
    "port",
    "unix_socket",
    "ssl",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "ssl_disabled",
    "ssl_verify_cert",
    "ssl_verify_identity",
    "read_default_file",
    "read_default_group",
    "bind_address",
    "named_pipe",
    "compress",
    "auth_plugin_map",
    "server_public_key",
)
# Accepted and without effect: the broker opens and sizes the MySQL connections.
_IGNORED_ARGS = ("connect_timeout", "defer_connect", "max_allowed_packet")
# Refused when given a true value, with what to do instead. Session settings
# pymysql applies once per connection: a DB-API connection here has no MySQL
# connection of its own between transactions to apply them to.
_REFUSED_ARGS = {
    "init_command": "put it in the pool's init_sql",
    "sql_mode": "set it in the pool's init_sql",
    "local_infile": "the broker does not read client files",
    "binary_prefix": "pymysql's default escaping only",
}
# Honoured: the Connection's own name for each, and how the value is read.
_PASSED_ARGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "use_unicode": ("use_unicode", bool),
    "conv": ("conv", lambda value: value),
    "charset": ("charset", lambda value: value or None),
    "cursorclass": ("cursorclass", lambda value: value),
    "program_name": ("name", lambda value: value),
}
# Charsets a pool's connection charset encodes exactly as the caller's would.
SUPERSETS = {"utf8mb4": {"utf8mb4", "utf8", "utf8mb3"}}


def pymysql_options_for(options: dict[str, Any]) -> dict[str, Any]:
    """Check pymysql.connect() keyword arguments; return what the Connection takes.

    Raises:
        NotSupportedError: naming each argument that cannot be honoured, and why.
        TypeError: for a keyword pymysql.connect() does not have either.
    """
    out: dict[str, Any] = {}
    refused = []
    for key, value in options.items():
        if key in _POOL_ARGS:
            if value not in (None, "", 0, False):
                refused.append(f"{key} (the broker pool's dsn decides it; pass pool=)")
        elif key in _REFUSED_ARGS:
            if value:
                refused.append(f"{key} ({_REFUSED_ARGS[key]})")
        elif key in _PASSED_ARGS:
            name, read = _PASSED_ARGS[key]
            out[name] = read(value)
        elif key == "client_flag":
            refused += _client_flags(int(value or 0), out)
        elif key in ("read_timeout", "write_timeout"):
            if value:
                out["timeout"] = min(float(value), out.get("timeout", float(value)))
        elif key not in _IGNORED_ARGS:
            raise TypeError(f"connect() got an unexpected keyword argument {key!r}")
    if refused:
        raise NotSupportedError(0, "connect() cannot honour: " + "; ".join(refused))
    return out


def _client_flags(flags: int, out: dict[str, Any]) -> list[str]:
    """Honour CLIENT.FOUND_ROWS; return the flags that cannot be honoured."""
    out["found_rows"] = bool(flags & CLIENT.FOUND_ROWS)
    refused = []
    if flags & CLIENT.MULTI_STATEMENTS:
        refused.append("client_flag CLIENT.MULTI_STATEMENTS (one per call)")
    if flags & CLIENT.LOCAL_FILES:
        refused.append("client_flag CLIENT.LOCAL_FILES (LOAD DATA LOCAL)")
    return refused
